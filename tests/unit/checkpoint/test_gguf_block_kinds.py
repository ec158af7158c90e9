"""GGUF files mixing Q5_0, Q5_1, Q4_K, Q5_K and Q6_K matrices, as llama.cpp's Q4_K_M / Q5_K_M files do: kept as the
file's blocks (no float copy), and computing what transformers computes from the same file (the oracle: gguf's own
dequantization) in PyTorch, in the C kernels and through the C decode step."""
import sys
from pathlib import Path

import gguf
import pytest
import torch
from checkpoint_models import VOCAB, random_model
from gguf import GGMLQuantizationType as GGML
from mutate import rewrite_gguf

sys.path.insert(0, str(Path(__file__).parents[1] / "quantize"))  # the random valid blocks the kernel tests use
from gguf_block_layers import random_blocks  # noqa: E402

from llamalab.checkpoint import load, save
from llamalab.config import ModelArgs
from llamalab.generate.decode import generate
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import load_model
from llamalab.quantize import native
from llamalab.quantize.blocks import BlockEmbedding, BlockLinear

# K blocks cover 256 inputs: every matrix's rows here are whole K blocks
ARGS = ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, hidden_dim=512, max_seq_len=64)
MATRICES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"]
KINDS = [GGML.Q4_K, GGML.Q5_K, GGML.Q6_K, GGML.Q5_0, GGML.Q5_1]
# the largest float16 d / m / dmin of each kind's blocks: weights of at most ~0.05, as a trained model's
LARGEST = {GGML.Q5_0: 3e-3, GGML.Q5_1: 3e-3, GGML.Q4_K: 5e-5, GGML.Q5_K: 2.5e-5, GGML.Q6_K: 1.2e-5, GGML.Q2_K: 1e-3}
PROMPT = torch.tensor([[1, 5, 9, 200, 3, 77, 150, 2, 31, 64]])


def block_gguf(folder, chosen: dict[str, GGML]) -> Path:
    """A GGUF of a random model of ARGS with the tensors named in `chosen` replaced by random blocks of their kind."""
    source = save(random_model(ARGS), folder / "f32.gguf", format="gguf", dtype="float32")
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in gguf.GGUFReader(source).tensors}
    blocks = {name: (random_blocks(*shapes[name], kind.name, seed, LARGEST[kind]), kind)
              for seed, (name, kind) in enumerate(chosen.items())}
    return rewrite_gguf(source, folder / "blocks.gguf", {}, blocks)


@pytest.fixture(scope="module")
def mixed_gguf(tmp_path_factory):
    """A GGUF whose every matrix is one of KINDS, each kind in several places (layer i's j-th matrix: KINDS[i + j])."""
    chosen = {f"blk.{i}.{m}.weight": KINDS[(i + j) % len(KINDS)] for i in range(2) for j, m in enumerate(MATRICES)}
    chosen |= {"token_embd.weight": GGML.Q6_K, "output.weight": GGML.Q4_K}
    return block_gguf(tmp_path_factory.mktemp("kinds"), chosen), {name: kind.name for name, kind in chosen.items()}


@pytest.fixture(scope="module")
def transformers_logits(mixed_gguf):
    from transformers import AutoModelForCausalLM

    path, _ = mixed_gguf
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(PROMPT).logits, hf.generate(PROMPT, max_new_tokens=8, do_sample=False)[0, PROMPT.shape[1]:].tolist()


def relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def test_every_block_kind_stays_the_file_s_blocks_with_gguf_s_values(mixed_gguf):
    path, chosen = mixed_gguf
    model = load(path)
    names = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
             "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
             "feed_forward.w3": "ffn_up"}
    reader = gguf.GGUFReader(path)
    expected = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    for i, layer in enumerate(model.layers):
        for ours, theirs in names.items():
            module, name = layer.get_submodule(ours), f"blk.{i}.{theirs}.weight"
            assert type(module) in (BlockLinear, native.KernelBlockLinear) and module.kind == chosen[name], name
            assert torch.equal(module.dequantize(), torch.from_numpy(expected[name])), name
    assert isinstance(model.tok_embeddings, BlockEmbedding) and model.tok_embeddings.table.kind == "Q6_K"
    assert model.output.kind == "Q4_K"
    assert not [p for p in model.parameters() if p.dim() == 2]  # no matrix copied to floats


def test_logits_match_transformers_in_pytorch_and_in_the_c_kernels(mixed_gguf, transformers_logits):
    theirs, _ = transformers_logits
    model = load(mixed_gguf[0])
    with torch.no_grad():
        assert relative_error(model(PROMPT), theirs) < 1e-5  # BlockLinear's PyTorch path: dequantized rows
        if native.kernel_quantized_linears(model):
            assert relative_error(model(PROMPT), theirs) < 1e-5  # the C kernels: 10 rows read the blocks in place


@pytest.mark.skipif(native.kernels() is None, reason="no C compiler on this machine")
def test_the_c_decode_step_generates_transformers_greedy_tokens(mixed_gguf, transformers_logits):
    _, their_tokens = transformers_logits
    loaded = load_model(mixed_gguf[0], device="cpu")
    step = loaded.decode_step(1, PROMPT.shape[1] + 8)
    assert type(step).__name__ == "NativeStep"  # the whole model in one C call per token
    (ours,) = generate(loaded.model, [PROMPT[0].tolist()], 8, sampling=SamplingParams(temperature=0), step=step)
    assert ours.tokens == their_tokens


def test_a_type_kept_nowhere_is_dequantized_at_the_requested_dtype_not_float32(tmp_path):
    chosen = {f"blk.{i}.{m}.weight": GGML.Q2_K for i in range(2) for m in MATRICES}  # gguf reads Q2_K; we keep none
    path = block_gguf(tmp_path, chosen)
    loaded = load(path, dtype=torch.bfloat16)
    params = dict(loaded.named_parameters())  # the Q2_K matrices and the norms; embedding and head stay float32 files
    expected = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(path).tensors}
    assert len([p for p in params.values() if p.dim() == 2]) == 2 * 7 + 2
    for i, layer in enumerate(loaded.layers):
        weight = layer.attention.wv.weight
        assert weight.dtype == torch.bfloat16
        assert torch.equal(weight, torch.from_numpy(expected[f"blk.{i}.attn_v.weight"]).to(torch.bfloat16))
