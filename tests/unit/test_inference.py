"""llamalab.load_model: a checkpoint, a preset or a ModelArgs in, a model ready for inference out; the real model's
greedy tokens equal transformers' on the same weights."""
import subprocess
import sys

import pytest
import torch

import llamalab
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.model.model import reference_attention
from llamalab.quantize.blocks import BlockLinear
from llamalab.quantize.int4 import Int4Linear
from llamalab.quantize.int8 import Int8Linear

TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=32)


def test_importing_llamalab_imports_no_torch_until_load_model_is_used():
    code = "import sys, llamalab; print('torch' in sys.modules); llamalab.load_model; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_real_model_greedy_tokens_equal_transformers(smollm2_gguf, hf_smollm2):
    hf_tokenizer, hf_model = hf_smollm2
    loaded = llamalab.load_model(smollm2_gguf, device="cpu", dtype="float32")
    prompt = hf_tokenizer("The capital of France is")["input_ids"]
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):]
    generation = Generation(loaded.model, [prompt], 8, SamplingParams(temperature=0), step=loaded.decode_step())
    list(generation)
    assert generation.completions[0].tokens == expected.tolist()
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_keep_quantized_false_dequantizes_a_gguf_to_the_same_logits(smollm2_gguf, smollm2_model):
    loaded = llamalab.load_model(smollm2_gguf, device="cpu", dtype="float32", keep_quantized=False)
    assert all(type(p) is torch.nn.Parameter and p.dtype == torch.float32 for p in loaded.model.parameters())
    assert not any(isinstance(m, (Int4Linear, Int8Linear, BlockLinear)) for m in loaded.model.modules())
    tokens = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), smollm2_model(tokens), atol=2e-3, rtol=1e-3)


def test_int8_swaps_every_block_linear_for_int8_weights():
    loaded = llamalab.load_model(TINY, random_init=True, quantize="int8", seed=0)
    linears = [m for block in loaded.model.layers for m in block.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 7 * TINY.n_layers  # wq wk wv wo, w1 w2 w3
    assert all(m.weight.dtype == torch.int8 for m in linears)


def test_int4_group_size_sets_the_weights_per_scale():
    loaded = llamalab.load_model(TINY, random_init=True, quantize="int4", group_size=32, seed=0)
    linears = [m for block in loaded.model.layers for m in block.modules() if isinstance(m, Int4Linear)]
    assert len(linears) == 7 * TINY.n_layers
    assert all(m.scales.shape == (m.out_features, m.in_features // 32) for m in linears)  # 64 inputs: 2 groups


def test_reference_attention_computes_the_logits_of_the_fused_kernels():
    tokens = torch.randint(0, TINY.vocab_size, (2, 20))
    fused, reference = (llamalab.load_model(TINY, random_init=True, seed=0, attention=a).model for a in
                        ("sdpa", "reference"))
    assert all(block.attention.attend is reference_attention for block in reference.layers)
    with torch.no_grad():
        torch.testing.assert_close(reference(tokens), fused(tokens), atol=1e-5, rtol=1e-5)


def test_compile_backend_reaches_torch_compile_and_keeps_the_greedy_tokens():
    from torch._dynamo.utils import counters

    prompt, greedy = [[3, 14, 15, 92]], SamplingParams(temperature=0)
    eager = llamalab.load_model(TINY, random_init=True, seed=0)
    compiled = llamalab.load_model(TINY, random_init=True, seed=0, compile=True, compile_backend="eager")
    graphs = counters["stats"]["unique_graphs"]
    step = compiled.decode_step(1, 16)
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo captured the step for the eager backend
    runs = [Generation(m.model, prompt, 10, greedy, step=s) for m, s in ((eager, eager.decode_step()),
                                                                             (compiled, step))]
    for run in runs:
        list(run)
    assert runs[0].completions[0].tokens == runs[1].completions[0].tokens


def test_random_init_takes_a_preset_name_and_a_dtype_name():
    loaded = llamalab.load_model("debug", random_init=True, dtype="bfloat16", device="cpu")
    assert loaded.model.args == ModelArgs.from_preset("debug")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.tokenizer is None and loaded.main_process


def test_same_seed_gives_the_same_random_weights_and_another_seed_others():
    a, b, c = (llamalab.load_model(TINY, random_init=True, seed=s).model for s in (1, 1, 2))
    assert torch.equal(a.output.weight, b.output.weight)
    assert not torch.equal(a.output.weight, c.output.weight)


@pytest.mark.parametrize("source, options, message", [
    ("debug", {}, "is a preset"),
    (TINY, {}, "has no weights"),
    ("no/such/folder", {"random_init": True}, "preset name or a ModelArgs"),
    (TINY, {"random_init": True, "dtype": "float99"}, "unknown dtype"),
    (TINY, {"random_init": True, "group_size": 32}, "group_size applies to quantize='int4'"),
    (TINY, {"random_init": True, "quantize": "int4", "group_size": 0}, "positive whole number"),
    (TINY, {"random_init": True, "attention": "flash9"}, "attention_impl must be one of"),
    (TINY, {"random_init": True, "compile": True, "compile_backend": "bogus"}, "Invalid backend: 'bogus'"),
    (TINY, {"random_init": True, "compile": True, "compile_mode": "fastest"}, "Unrecognized mode=fastest"),
])
def test_bad_sources_and_options_are_config_errors(source, options, message):
    with pytest.raises(ConfigError, match=message):
        llamalab.load_model(source, **options)
