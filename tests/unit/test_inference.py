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


def test_int8_swaps_every_block_linear_for_int8_weights():
    loaded = llamalab.load_model(TINY, random_init=True, quantize="int8", seed=0)
    linears = [m for block in loaded.model.layers for m in block.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 7 * TINY.n_layers  # wq wk wv wo, w1 w2 w3
    assert all(m.weight.dtype == torch.int8 for m in linears)


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
])
def test_bad_sources_and_options_are_config_errors(source, options, message):
    with pytest.raises(ConfigError, match=message):
        llamalab.load_model(source, **options)
