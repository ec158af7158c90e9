import copy

import pytest
import torch
from torch import nn

from llamalab.errors import ConfigError
from llamalab.quantize import Int4Linear, Int8Linear, quantize_int4, quantize_int8, quantize_model, unpack_int4


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# -- the number formats --------------------------------------------------------------------------

def test_int8_codes_are_symmetric_per_channel_and_round_to_nearest():
    weight = torch.randn(48, 96) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different magnitudes
    codes, scales = quantize_int8(weight)
    assert codes.dtype == torch.int8 and codes.abs().max() <= 127
    assert torch.equal(codes.abs().amax(dim=1), torch.full((48,), 127, dtype=torch.int8))  # each row's max is ±127
    rounding_error = (weight - codes.float() * scales.float()[:, None]).abs()
    assert (rounding_error <= scales.float()[:, None] / 2 * (1 + 1e-6)).all()


def test_int4_codes_cover_each_groups_range_and_round_to_nearest():
    weight = torch.randn(32, 128) + torch.linspace(-3, 3, 128)  # groups with an offset: asymmetric ranges
    packed, scales, zeros = quantize_int4(weight, group_size=32)
    assert packed.shape == (32, 64) and scales.shape == zeros.shape == (32, 4)
    codes = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(32, 128)  # low nibble = even column
    assert torch.equal(unpack_int4(packed), codes)
    groups = codes.reshape(32, 4, 32)
    assert (groups.amin(-1) == 0).all() and (groups.amax(-1) == 15).all()
    weight_hat = (groups.float() - 8) * scales[..., None] + zeros[..., None]  # (q - 8)·scale + zero
    rounding_error = (weight.reshape(32, 4, 32) - weight_hat).abs()
    assert (rounding_error <= scales[..., None] / 2 + 1e-6).all()


# -- the modules: CPU kernels against the formula ------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 96), (2, 3, 96)])
def test_int8_linear_cpu_kernel_matches_the_dequantized_product(shape):
    linear = nn.Linear(96, 48, bias=False)
    module = Int8Linear.from_linear(linear)
    x = torch.randn(shape)
    exact = x.double() @ (module.weight.double() * module.scales.double()[:, None]).T
    assert module(x).shape == exact.shape and module(x).dtype == torch.float32
    assert relative_error(module(x), exact) < 1e-2  # bfloat16 activations inside the kernel
    assert relative_error(module.reference_forward(x), exact) < 1e-6


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_linear_kernel_matches_the_dequantized_product(group_size, device):
    linear = nn.Linear(256, 48, bias=False, device=device)
    module = Int4Linear.from_linear(linear, group_size)
    assert module.kernel_weight.numel() > 0  # the device's int4 kernel is taken
    x = torch.randn(2, 3, 256, device=device)
    codes = unpack_int4(module.weight).double().view(48, -1, group_size)
    weight_hat = ((codes - 8) * module.scales.double()[..., None] + module.zeros.double()[..., None]).view(48, 256)
    exact = x.double() @ weight_hat.T
    assert relative_error(module(x), exact) < 1e-2
    assert relative_error(module.reference_forward(x), exact) < 1e-6


def test_int4_kernel_takes_a_strided_bfloat16_input():
    """The last position of a bf16 batch (what `last_only` feeds the head) is a strided view."""
    module = Int4Linear.from_linear(nn.Linear(64, 32, bias=False), group_size=32)
    x = torch.randn(3, 5, 64).to(torch.bfloat16)[:, -1:]  # (3, 1, 64), row stride 5 * 64
    assert torch.allclose(module(x).float(), module.reference_forward(x.float()), rtol=2e-2, atol=2e-2)


def test_int4_shapes_outside_the_kernels_use_the_reference_path():
    module = Int4Linear.from_linear(nn.Linear(64, 20, bias=False), group_size=16)  # 20 rows, group 16: no kernel
    assert module.kernel_weight.numel() == 0
    x = torch.randn(3, 64)
    assert torch.equal(module(x), module.reference_forward(x))


# -- whole models --------------------------------------------------------------------------------

def test_int8_model_logits_stay_within_2_percent_of_fp32(trained_model, held_out):
    """Bound: relative L2 error of the logits < 2% (measured ≈ 0.6%), loss within 1%."""
    tokens, targets = held_out
    quantized = quantize_model(copy.deepcopy(trained_model), "int8")
    with torch.no_grad():
        reference, logits = trained_model(tokens), quantized(tokens)
        assert relative_error(logits, reference) < 0.02
        assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.98
        assert quantized.loss(tokens, targets) < trained_model.loss(tokens, targets) * 1.01


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_model_perplexity_rises_less_than_5_percent(trained_model, held_out, group_size):
    """Bound: perplexity ratio int4 / fp32 < 1.05 (measured ≈ 1.01) and relative logit error < 15% (≈ 7%)."""
    tokens, targets = held_out
    quantized = quantize_model(copy.deepcopy(trained_model), "int4", group_size=group_size)
    with torch.no_grad():
        reference, logits = trained_model(tokens), quantized(tokens)
        ppl_ratio = torch.exp(quantized.loss(tokens, targets) - trained_model.loss(tokens, targets))
    assert ppl_ratio < 1.05
    assert relative_error(logits, reference) < 0.15


def test_decode_with_kv_cache_matches_full_pass(trained_model, held_out):
    tokens, _ = held_out
    tokens = tokens[:2]
    model = quantize_model(copy.deepcopy(trained_model), "int8")
    with torch.no_grad():
        full = model(tokens)
        model.setup_cache(batch_size=2, max_seq_len=tokens.shape[1])
        steps = [model(tokens[:, :4], start_pos=0)]
        steps += [model(tokens[:, i:i + 1], start_pos=i) for i in range(4, tokens.shape[1])]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4)


def test_every_linear_is_swapped_and_embeddings_stay(trained_model):
    model = quantize_model(copy.deepcopy(trained_model), "int4", group_size=32)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 2 * 7 + 1
    assert torch.equal(model.tok_embeddings.weight, trained_model.tok_embeddings.weight)
    kept_head = quantize_model(copy.deepcopy(trained_model), "int8", include_output=False)
    assert type(kept_head.output) is nn.Linear and isinstance(kept_head.layers[0].feed_forward.w2, Int8Linear)


def test_tied_head_gets_its_own_copy(held_out):
    from llamalab import ModelArgs
    from llamalab.model import Transformer

    args = ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=64, multiple_of=32, max_seq_len=32, tie_embeddings=True)
    model = Transformer(args).eval()
    embedding = model.tok_embeddings.weight.clone()
    quantize_model(model, "int8")
    assert isinstance(model.output, Int8Linear) and torch.equal(model.tok_embeddings.weight, embedding)
    assert relative_error(model.output.dequantize(), embedding) < 0.01


def test_group_size_is_halved_where_it_does_not_divide():
    from llamalab import ModelArgs
    from llamalab.model import Transformer

    model = Transformer(ModelArgs(dim=96, n_layers=1, n_heads=4, vocab_size=64, hidden_dim=256, max_seq_len=32))
    quantize_model(model, "int4", group_size=128)
    assert model.layers[0].attention.wq.group_size == 32  # 96 = 3 · 32
    assert model.layers[0].feed_forward.w2.group_size == 128  # 256


# -- saving and loading --------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_state_dict_round_trip_through_a_meta_built_model(tmp_path, trained_model, held_out, scheme):
    tokens, _ = held_out
    quantized = quantize_model(copy.deepcopy(trained_model), scheme, group_size=32)
    torch.save(quantized.state_dict(), tmp_path / "model.pth")
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    assert not any(key.startswith("cpu_") or ".cpu_" in key for key in state)  # kernel copies are not saved
    assert state["layers.0.attention.wq.weight"].dtype == (torch.int8 if scheme == "int8" else torch.uint8)

    with torch.device("meta"):
        fresh = type(trained_model)(trained_model.args)
    quantize_model(fresh, scheme, group_size=32)
    fresh.load_state_dict(state, assign=True)
    fresh.init_rope()
    with torch.no_grad():
        assert torch.equal(fresh(tokens), quantized(tokens))  # the same kernels on the same codes


def test_loading_into_a_quantized_model_refreshes_the_int4_kernel_copy(trained_model, held_out):
    tokens, _ = held_out
    source = quantize_model(copy.deepcopy(trained_model), "int4", group_size=32)
    other = copy.deepcopy(trained_model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    target = quantize_model(other, "int4", group_size=32)
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        assert torch.equal(target(tokens), source(tokens))


def test_bad_arguments_are_config_errors(trained_model):
    with pytest.raises(ConfigError, match="int3"):
        quantize_model(copy.deepcopy(trained_model), "int3")
    with pytest.raises(ConfigError, match="in_features=100"):
        Int4Linear(100, 32, group_size=64)
    with pytest.raises(ConfigError, match="bias"):
        quantize_model(nn.Sequential(nn.Linear(64, 64)), "int8")
