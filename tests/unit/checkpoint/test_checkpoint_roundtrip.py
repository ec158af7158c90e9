"""The same weights saved in every format load back to identical logits and greedy tokens."""
import gc
import os

import numpy as np
import pytest
import torch
from checkpoint_models import CONFIGS, SUFFIX, greedy, random_model
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from llamalab.checkpoint import FORMATS, detect_format, load, save
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError
from llamalab.model import Transformer

ARG_FIELDS = ("dim", "n_layers", "n_heads", "kv_heads", "vocab_size", "ffn_hidden_dim", "norm_eps", "rope_theta",
              "rope_scaling", "tie_embeddings")
PROMPT = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])


def run_c_can_run(args):
    """llama2.c's run.c hard-codes theta 10000 and eps 1e-5 (and knows no RoPE scaling)."""
    return args.rope_theta == 10000.0 and args.rope_scaling is None and args.norm_eps == 1e-5


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_loads_back_to_identical_logits_and_greedy_tokens(tmp_path, fmt, config):
    args = CONFIGS[config]
    model = random_model(args)
    path = tmp_path / f"model{SUFFIX[fmt]}"
    if fmt == "llama2c" and not run_c_can_run(args):
        with pytest.raises(CheckpointError, match="rope_theta=500000"):
            save(model, path, format=fmt)
        assert not path.exists()
        return
    save(model, path, format=fmt)
    assert detect_format(path) == fmt
    loaded = load(path)
    assert {f: getattr(loaded.args, f) for f in ARG_FIELDS} == {f: getattr(args, f) for f in ARG_FIELDS}
    with torch.no_grad():
        assert torch.equal(loaded(PROMPT), model(PROMPT))
    assert greedy(loaded, PROMPT) == greedy(model, PROMPT)
    if args.tie_embeddings:
        assert loaded.output.weight is loaded.tok_embeddings.weight


@pytest.mark.parametrize("fmt", ["meta", "hf", "native", "gguf"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_saves_exactly_the_cast_weights(tmp_path, fmt, dtype):
    model = random_model(CONFIGS["gqa"])
    path = save(model, tmp_path / f"model{SUFFIX[fmt]}", format=fmt, dtype=dtype)
    loaded = load(path)
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == dtype, name
        assert torch.equal(tensor, model.state_dict()[name].to(dtype)), name


@pytest.mark.parametrize("fmt, group, steps", [
    ("gguf", 32, 0.5 + 1 / 16),  # ggml's blocks of 32 with an fp16 step: half a step plus the step's rounding
    ("llama2c", 64, 0.5 * (1 + 1e-5)),  # runq.c's groups of 64 (they divide dim=64 and hidden=192), fp32 step
])
def test_q8_0_weights_are_within_half_a_step_of_the_originals(tmp_path, fmt, group, steps):
    model = random_model(CONFIGS["gqa"])
    loaded = load(save(model, tmp_path / f"m{SUFFIX[fmt]}", format=fmt, dtype="q8_0"), keep_quantized=False)
    for name, tensor in loaded.state_dict().items():
        original = model.state_dict()[name]
        if original.dim() == 1:  # norms are kept in float32
            assert torch.equal(tensor, original)
            continue
        groups = original.reshape(-1, group)  # (n_groups, group)
        step = groups.abs().amax(1, keepdim=True) / 127
        assert ((tensor.reshape(-1, group) - groups).abs() <= steps * step).all(), name
        if fmt == "gguf":  # and bit for bit what ggml's reference Q8_0 (in the gguf package) makes
            q8 = GGMLQuantizationType.Q8_0
            assert np.array_equal(tensor.numpy(), dequantize(quantize(original.numpy(), q8), q8)), name
    with torch.no_grad():
        assert torch.allclose(loaded(PROMPT), model(PROMPT), atol=0.05)


def test_load_moves_and_casts_without_keeping_the_file_dtype(tmp_path):
    model = random_model(CONFIGS["gqa"])
    path = save(model, tmp_path / "m", format="native", dtype=torch.bfloat16)
    loaded = load(path, dtype=torch.float32, max_seq_len=32)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert loaded.args.max_seq_len == 32 and loaded.rope_cos.shape[0] == 32


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.fixture(scope="module")
def model_of_38_mib():
    return Transformer(ModelArgs(dim=256, n_layers=2, n_heads=4, vocab_size=16384, multiple_of=32, max_seq_len=64))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc/self/statm")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_loading_maps_the_file_instead_of_copying_it(tmp_path, fmt, model_of_38_mib):
    """A 38 MiB checkpoint loads with (almost) no new resident memory: parameters are the mapped file pages."""
    model = model_of_38_mib
    path = save(model, tmp_path / f"m{SUFFIX[fmt]}", format=fmt)
    size = sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]))
    gc.collect()
    before = resident_bytes()
    loaded = load(path)
    assert resident_bytes() - before < size / 4
    assert torch.equal(loaded.tok_embeddings.weight, model.tok_embeddings.weight)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_saves_from_and_loads_onto_the_gpu(tmp_path, fmt):
    model = random_model(CONFIGS["gqa"])
    path = save(model.cuda(), tmp_path / f"m{SUFFIX[fmt]}", format=fmt)
    loaded = load(path, device="cuda", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in loaded.parameters()} == {("cuda", torch.bfloat16)}
    assert loaded.rope_cos.device.type == "cuda" and loaded.rope_cos.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(loaded(PROMPT.cuda()).float(), model(PROMPT.cuda()), atol=0.05)
