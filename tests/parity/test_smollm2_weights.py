"""SmolLM2-135M-Instruct's Q4_1 GGUF loaded by llamalab against transformers' reading of the same file.

Reference: transformers' model of the file (every tensor dequantized to float32 by gguf). Our dequantized float32
model must give its logits within 1e-4 relative. The kept-quantized model (layers reading the file's own Q4_1 blocks
and the Q8_0 embedding / tied head where they lie in the mapped file) holds bit for bit the same weights; in float32
its products differ from the dense ones only in summation order (dequantized a block of rows at a time), so it meets
the same 1e-4 bound.
Greedy continuations are checked teacher-forced: along transformers' 64 greedy tokens every argmax of ours must be
transformers' next token, which is the same as our greedy loop producing those tokens.
"""
import json
import subprocess
import sys

import gguf
import pytest
import torch

from llamalab.checkpoint import load
from llamalab.checkpoint.gguf_blocks import read_raw
from llamalab.checkpoint.gguf_format import FROM_GGUF_KEYS
from llamalab.checkpoint.gguf_header import read_header
from llamalab.checkpoint.keys import rename
from llamalab.inference import load_model
from llamalab.quantize.blocks import BlockEmbedding, BlockLinear
from llamalab.quantize.native import MAX_ROWS, KernelBlockLinear

PROMPTS = ["<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n", "def fibonacci(n):\n    ",
           "The capital of France is", "Once upon a time, in a small village,"]
GREEDY_TOKENS = 64
GREEDY_PROMPTS = 2  # the first two prompts (transformers' 64-step generate is the slow part of this file)
REL = 1e-4


@pytest.fixture(scope="module")
def dequantized(smollm2_gguf):
    return load(smollm2_gguf, dtype=torch.float32, keep_quantized=False).requires_grad_(False)


@pytest.fixture(scope="module")
def kept(smollm2_gguf):
    return load(smollm2_gguf).requires_grad_(False)


@pytest.fixture(scope="module")
def reference(hf_smollm2):
    """transformers' prompt ids, logits and 64 greedy tokens for each prompt."""
    tokenizer, model = hf_smollm2
    out = []
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tokenizer(text, return_tensors="pt").input_ids
            logits = model(ids).logits
            greedy = full_logits = None
            if i < GREEDY_PROMPTS:
                greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_TOKENS,
                                        do_sample=False, eos_token_id=None, pad_token_id=tokenizer.eos_token_id)
                full_logits = model(greedy).logits
            out.append((ids, logits, greedy, full_logits))
    return out


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def test_kept_quantized_layers_hold_exactly_the_values_gguf_dequantizes(smollm2_gguf, kept):
    _, tensors = read_header(smollm2_gguf)
    types = set()
    with open(smollm2_gguf, "rb") as f:
        for t in tensors:
            if t.tensor_type.name not in ("Q4_1", "Q8_0"):
                continue
            types.add(t.tensor_type.name)
            expected = torch.from_numpy(gguf.quants.dequantize(read_raw(f, t), t.tensor_type))
            module = kept.get_submodule(rename(t.name, FROM_GGUF_KEYS).removesuffix(".weight"))
            table = module.table if isinstance(module, BlockEmbedding) else module
            assert torch.equal(table.dequantize(), expected), t.name
    assert types == {"Q4_1", "Q8_0"}
    assert isinstance(kept.layers[7].feed_forward.w2, BlockLinear) and kept.layers[7].feed_forward.w2.kind == "Q4_1"
    assert isinstance(kept.tok_embeddings, BlockEmbedding) and kept.output is kept.tok_embeddings.table
    assert isinstance(kept.output, BlockLinear) and kept.output.kind == "Q8_0" and kept.dtype == torch.float32


def mapping_of(address: int) -> tuple[int, int, str]:
    """(start, end, path) of the mapping of this process that holds `address` (/proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(a, 16) for a in fields[0].split("-"))
            if start <= address < end:
                return start, end, fields[5].strip() if len(fields) > 5 else ""
    raise AssertionError(f"{address:#x} is not mapped")


def test_kept_blocks_are_read_where_they_lie_in_the_mapped_file(smollm2_gguf, kept):
    """No copy of the quantized weights: every layer's blocks are a view of the map of the GGUF file, at the tensor's
    offset in it (the embedding and the tied head: one table)."""
    _, tensors = read_header(smollm2_gguf)
    layers = {m.blocks.data_ptr(): m for m in kept.modules() if isinstance(m, BlockLinear)}
    assert len(layers) == 30 * 7 + 1
    by_name = {rename(t.name, FROM_GGUF_KEYS).removesuffix(".weight"): t for t in tensors}
    file_start = None
    for name, module in kept.named_modules():
        if isinstance(module, BlockLinear) and name != "tok_embeddings.table":
            start, end, path = mapping_of(module.blocks.data_ptr())
            assert path == str(smollm2_gguf.resolve()), name
            assert module.blocks.data_ptr() + module.blocks.nbytes <= end
            t = by_name[name if name != "output" else "tok_embeddings"]
            here = module.blocks.data_ptr() - t.offset  # where the file's byte 0 is mapped
            assert file_start in (None, here), name
            file_start = here


def test_dequantized_float32_logits_match_transformers(dequantized, reference):
    with torch.no_grad():
        for ids, logits, _, _ in reference:
            assert relative_error(dequantized(ids), logits) < REL


def test_kept_quantized_float32_logits_match_transformers(kept, reference):
    with torch.no_grad():
        for ids, logits, _, _ in reference:
            assert relative_error(kept(ids), logits) < REL


def test_load_model_s_c_kernels_on_the_mapped_blocks_give_transformers_logits(smollm2_gguf, reference):
    """load_model's layers compute in C on the blocks where they lie: up to 32 rows in block_linear (each prompt
    here), more in a float32 product with the weight dequantized by block_values (the 64-token greedy path)."""
    model = load_model(smollm2_gguf).model
    assert type(model.layers[0].attention.wq) is KernelBlockLinear and type(model.output) is KernelBlockLinear
    with torch.no_grad():
        for ids, logits, _, _ in reference:
            assert ids.shape[1] <= MAX_ROWS
            assert relative_error(model(ids), logits) < REL
        _, _, greedy, full_logits = reference[0]
        assert greedy.shape[1] - 1 > MAX_ROWS
        assert relative_error(model(greedy[:, :-1]), full_logits[:, :-1]) < REL


@pytest.mark.parametrize("which", ["dequantized", "kept"])
def test_greedy_64_tokens_are_transformers(which, request, reference):
    model = request.getfixturevalue(which)
    with torch.no_grad():
        for ids, _, greedy, full_logits in reference[:GREEDY_PROMPTS]:
            n = ids.shape[1]
            assert greedy.shape[1] == n + GREEDY_TOKENS
            ours = model(greedy[:, :-1])  # teacher-forced along transformers' greedy path
            assert torch.equal(ours[0, n - 1:].argmax(-1), greedy[0, n:])
            assert relative_error(ours, full_logits[:, :-1]) < REL


def test_kept_quantized_decode_through_the_kv_cache_matches_the_full_pass(kept, reference):
    ids, _, greedy, full_logits = reference[0]
    n = ids.shape[1]
    kept.setup_cache(1, n + 8)
    try:
        with torch.no_grad():
            steps = [kept(ids, 0)[:, -1]] + [kept(greedy[:, n + i:n + i + 1], n + i)[:, -1] for i in range(7)]
    finally:
        kept.clear_cache()
    assert relative_error(torch.stack(steps, 1), full_logits[:, n - 1:n + 7]) < REL


def test_bfloat16_kept_quantized_uses_the_int4_kernel_and_stays_near_the_reference(smollm2_gguf, reference):
    """bfloat16 activations (PyTorch's int4 kernel rounds activations and scales to bfloat16, ~3 significant
    digits, through 30 layers): logits within 5% of the largest and the same next token on every prompt."""
    model = load(smollm2_gguf, dtype=torch.bfloat16).requires_grad_(False)
    assert model.layers[0].attention.wq.kernel_weight.numel() > 0
    with torch.no_grad():
        for ids, logits, _, _ in reference:
            ours = model(ids)
            assert relative_error(ours, logits) < 0.05
            assert ours[0, -1].argmax() == logits[0, -1].argmax()


RSS_SCRIPT = """
import json, resource, sys, torch
import llamalab.checkpoint

def anonymous_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:"))

base, base_anonymous = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, anonymous_kib()
model = llamalab.checkpoint.load(sys.argv[1])
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base,
                  "anonymous_kib": anonymous_kib() - base_anonymous}))
"""


def test_loading_copies_no_weights_and_peaks_at_a_quarter_of_the_file_size(smollm2_gguf):
    """A fresh process, above its baseline after importing torch and llamalab: the weights stay in the file's pages
    (anonymous memory grows by under 10% of the file; measured 2.8 MiB: RoPE tables, the model's modules) and the
    peak stays under a quarter of the file (measured 10 MiB; copies of the quantized weights made it 1.9x)."""
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(smollm2_gguf)], capture_output=True, text=True,
                         check=True, timeout=300)
    grown = json.loads(out.stdout.strip().splitlines()[-1])
    size = smollm2_gguf.stat().st_size
    assert grown["anonymous_kib"] * 1024 < 0.1 * size, f"anonymous memory grew {grown['anonymous_kib'] / 1024:.0f} MiB"
    assert grown["peak_kib"] * 1024 < 0.25 * size, f"peak {grown['peak_kib'] / 1024:.0f} MiB"



def test_smollm2_re_exported_as_q4_1_holds_gguf_quants_blocks_and_transformers_logits(smollm2_gguf, reference,
                                                                                      tmp_path):
    """`convert --to gguf --dtype q4_1` of the real model: every matrix is byte for byte gguf.quants' own quantization
    of the file's dequantized weights (Q4_1 blocks, the embedding Q8_0); quantizing already-quantized blocks again
    is lossless, so the re-loaded file gives transformers' logits on the original within 1e-4."""
    from llamalab.checkpoint import convert

    out = convert(smollm2_gguf, tmp_path / "smollm2-q4_1.gguf", "gguf", dtype="q4_1")
    _, source = read_header(smollm2_gguf)
    written = {t.name: t for t in read_header(out)[1]}
    with open(smollm2_gguf, "rb") as src, open(out, "rb") as dst:
        for t in source:
            if len(t.shape) == 2:
                w = written[t.name]
                assert w.tensor_type == t.tensor_type, t.name  # Q4_1, and Q8_0 for token_embd
                weights = gguf.quants.dequantize(read_raw(src, t), t.tensor_type)
                assert (read_raw(dst, w) == gguf.quants.quantize(weights, w.tensor_type)).all(), t.name
    model = load(out).requires_grad_(False)
    with torch.no_grad():
        for ids, logits, _, _ in reference:
            assert relative_error(model(ids), logits) < REL
