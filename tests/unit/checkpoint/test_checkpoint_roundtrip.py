"""The same weights saved in every format load back to identical logits and greedy tokens."""
import numpy as np
import pytest
import torch
from checkpoint_models import CONFIGS, SUFFIX, greedy, random_model
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from llamalab.checkpoint import FORMATS, detect_format, load, save
from llamalab.errors import CheckpointError

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


def test_gguf_q8_0_holds_llama_cpp_blocks(tmp_path):
    """Every matrix is Q8_0 exactly as ggml quantizes it (32-value blocks, fp16 scale); norms stay exact."""
    model = random_model(CONFIGS["gqa"])
    loaded = load(save(model, tmp_path / "m.gguf", format="gguf", dtype="q8_0"))
    for name, tensor in loaded.state_dict().items():
        original = model.state_dict()[name]
        if original.dim() == 1:
            assert torch.equal(tensor, original)
            continue
        q8 = GGMLQuantizationType.Q8_0
        expected = dequantize(quantize(original.numpy(), q8), q8)
        assert np.array_equal(tensor.numpy(), expected), name
        blocks = original.reshape(-1, 32)  # (n_blocks, 32)
        bound = blocks.abs().amax(1, keepdim=True) / 127  # half a step, plus the fp16 rounding of the step
        assert ((tensor.reshape(-1, 32) - blocks).abs() <= bound).all()
    with torch.no_grad():
        assert torch.allclose(loaded(PROMPT), model(PROMPT), atol=0.05)


def test_llama2c_version2_q8_0_error_is_within_half_a_step(tmp_path):
    model = random_model(CONFIGS["gqa"])
    loaded = load(save(model, tmp_path / "m.bin", format="llama2c", dtype="q8_0"))
    for name, tensor in loaded.state_dict().items():
        original = model.state_dict()[name]
        if original.dim() == 1:
            assert torch.equal(tensor, original)
            continue
        groups = original.reshape(-1, 64)  # llama2.c's default group of 64 divides dim=64 and hidden=192
        step = groups.abs().amax(1, keepdim=True) / 127
        assert ((tensor.reshape(-1, 64) - groups).abs() <= step / 2 * (1 + 1e-5)).all(), name
    with torch.no_grad():
        assert torch.allclose(loaded(PROMPT), model(PROMPT), atol=0.05)


def test_load_moves_and_casts_without_keeping_the_file_dtype(tmp_path):
    model = random_model(CONFIGS["gqa"])
    path = save(model, tmp_path / "m", format="native", dtype=torch.bfloat16)
    loaded = load(path, dtype=torch.float32, max_seq_len=32)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert loaded.args.max_seq_len == 32 and loaded.rope_cos.shape[0] == 32
