"""The C kernels of kept-quantized layers (quantize/native.kernel_quantized_linears) against float64 products of the
dequantized weights and against the layers' PyTorch path on SmolLM2's GGUF (same greedy tokens, close logits)."""
import pytest
import torch
from torch import nn

from llamalab.generate.decode import generate
from llamalab.generate.sampling import SamplingParams
from llamalab.quantize import Int4Linear, Int8Linear, native, quantize_int4
from llamalab.quantize.native import KernelInt4Linear, KernelInt8Linear, kernel_quantized_linears

pytestmark = pytest.mark.skipif(native.kernels() is None, reason="no C compiler on this machine")


def int4_layer(out_features: int, in_features: int, group_size: int) -> Int4Linear:
    layer = Int4Linear(in_features, out_features, group_size, kernel_dtype=None)
    layer.weight, layer.scales, layer.zeros = quantize_int4(torch.randn(out_features, in_features), group_size)
    layer.pack_for_kernel()
    return layer


def int8_layer(out_features: int, in_features: int, group_size: int) -> Int8Linear:
    layer = Int8Linear(in_features, out_features, group_size=group_size)
    layer.weight = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8)
    layer.scales = (torch.rand(out_features, in_features // group_size) / 100).half()
    return layer


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize(("make", "group_size"), [(int4_layer, 32), (int4_layer, 64), (int8_layer, 32),
                                                  (int8_layer, 128)])
def test_kernel_products_match_float64_of_the_dequantized_weight(make, group_size, rows):
    torch.manual_seed(0)
    layer = make(48, 256, group_size)
    x = torch.randn(2, rows, 256)
    exact = x.double() @ layer.dequantize().double().t()  # (2, rows, 48)
    reference = layer(x)
    assert kernel_quantized_linears(nn.Sequential(layer)) == 1
    assert type(layer) in (KernelInt4Linear, KernelInt8Linear)
    with torch.no_grad():
        fast = layer(x)
    assert fast.shape == (2, rows, 48) and fast.dtype == torch.float32
    scale = exact.abs().max().item()
    assert (fast.double() - exact).abs().max().item() <= 2e-6 * scale  # float32 sums of 256 terms
    assert (fast - reference).abs().max().item() <= 4e-6 * scale


def test_group_sizes_the_kernels_cannot_read_keep_the_pytorch_path():
    layers = nn.Sequential(int4_layer(16, 64, 16), int8_layer(16, 48, 16))
    assert kernel_quantized_linears(layers) == 0 and [type(m) for m in layers] == [Int4Linear, Int8Linear]


def test_kernels_leave_training_and_many_rows_to_pytorch():
    layer = int4_layer(16, 64, 32)
    kernel_quantized_linears(nn.Sequential(layer))
    x = torch.randn(native.MAX_ROWS + 1, 64)
    with torch.no_grad():
        many = layer(x)
    assert torch.allclose(many, x @ layer.dequantize().t(), atol=1e-5)
    x.requires_grad_(True)
    layer(x).sum().backward()  # the frozen-weight autograd path, not the kernel
    assert x.grad is not None and torch.allclose(x.grad, layer.dequantize().sum(0).expand_as(x), atol=1e-5)


def test_smollm2_gguf_decodes_the_same_through_the_kernels(smollm2_model):
    """SmolLM2's Q4_1 / Q8_0 layers: the kernels against the layers' own dequantizing path."""
    model = smollm2_model
    assert any(type(m) is Int4Linear and m.kernel_weight.numel() == 0 for m in model.modules())
    prompts = [[504, 3458, 282, 4649, 314], [1, 2, 3]]  # "The capital of France is", a short one
    tokens = torch.tensor([prompts[0]])
    greedy = SamplingParams(temperature=0)
    with torch.no_grad():
        expected_logits = model(tokens)
    expected = [c.tokens for c in generate(model, prompts, 12, sampling=greedy)]
    swapped = [m for m in model.modules() if type(m) in (Int4Linear, Int8Linear) and m.weight.device.type == "cpu"]
    try:
        assert kernel_quantized_linears(model) == len(swapped)  # every GGUF layer (Q4_1 blocks, the Q8_0 head)
        assert model.tok_embeddings.table is model.output  # the tied head is still the embedding's table
        with torch.no_grad():
            logits = model(tokens)
        assert torch.allclose(logits, expected_logits, atol=2e-3, rtol=0)  # logits span about ±30
        assert [c.tokens for c in generate(model, prompts, 12, sampling=greedy)] == expected
    finally:
        for module in swapped:  # the session fixture goes back to the plain layers
            module.__class__ = Int4Linear if isinstance(module, Int4Linear) else Int8Linear
