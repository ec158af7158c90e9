"""The C kernels of layers reading GGUF's blocks (quantize/native.kernel_quantized_linears) against float64 products of
gguf's own dequantization of the same blocks, and against the layers' PyTorch path on SmolLM2's GGUF (same greedy
tokens, close logits)."""
import pytest
import torch
from gguf_block_layers import block_layer
from torch import nn

from llamalab.errors import ConfigError
from llamalab.generate.decode import generate
from llamalab.generate.sampling import SamplingParams
from llamalab.quantize import native
from llamalab.quantize.blocks import BLOCK_BYTES, BlockLinear
from llamalab.quantize.native import KernelBlockLinear, kernel_quantized_linears

pytestmark = pytest.mark.skipif(native.kernels() is None, reason="no C compiler on this machine")
KINDS = list(BLOCK_BYTES)
KINDS_AND_INPUTS = [(kind, in_features) for kind in KINDS  # 1 and 2 super-blocks, or 8 and 3 blocks
                    for in_features in ((256, 512) if kind.endswith("_K") else (256, 96))]


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_dequantize_to_gguf_s_values_in_pytorch_and_in_c(kind):
    layer, expected = block_layer(40, 512 if kind.endswith("_K") else 96, kind)
    assert torch.equal(layer.dequantize(), expected)
    assert torch.equal(layer.dequantize(10, 17), expected[10:17])
    kernel_quantized_linears(nn.Sequential(layer))
    assert type(layer) is KernelBlockLinear
    assert torch.equal(layer.dequantize(), expected)  # C's block_values (what prefill multiplies)
    assert torch.equal(layer.dequantize(10, 17), expected[10:17])


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize(("kind", "in_features"), KINDS_AND_INPUTS)
def test_kernel_products_match_float64_of_gguf_s_dequantized_weight(kind, in_features, rows):
    layer, weight = block_layer(48, in_features, kind)
    x = torch.randn(2, rows, in_features)
    exact = x.double() @ weight.double().t()  # (2, rows, 48)
    reference = layer(x)
    assert kernel_quantized_linears(nn.Sequential(layer)) == 1 and type(layer) is KernelBlockLinear
    with torch.no_grad():
        fast = layer(x)
    assert fast.shape == (2, rows, 48) and fast.dtype == torch.float32
    scale = exact.abs().max().item()
    assert (fast.double() - exact).abs().max().item() <= 2e-6 * scale  # float32 sums of 256 terms
    assert (fast - reference).abs().max().item() <= 4e-6 * scale


def test_rows_that_do_not_fill_blocks_are_refused():
    with pytest.raises(ConfigError, match="blocks of 32"):
        BlockLinear(48, 16, "Q4_0")


def test_kernels_leave_training_and_many_rows_to_pytorch():
    layer, weight = block_layer(16, 64, "Q4_1")
    kernel_quantized_linears(nn.Sequential(layer))
    x = torch.randn(native.MAX_ROWS + 1, 64)
    with torch.no_grad():
        many = layer(x)
    assert torch.allclose(many, x @ weight.t(), atol=1e-5)
    x.requires_grad_(True)
    layer(x).sum().backward()  # the frozen-weight autograd path, not the kernel
    assert x.grad is not None and torch.allclose(x.grad, weight.sum(0).expand_as(x), atol=1e-5)


def test_smollm2_gguf_decodes_the_same_through_the_kernels(smollm2_model):
    """SmolLM2's Q4_1 / Q8_0 layers: the kernels against the layers' own dequantizing path."""
    model = smollm2_model
    prompts = [[504, 3458, 282, 4649, 314], [1, 2, 3]]  # "The capital of France is", a short one
    tokens = torch.tensor([prompts[0]])
    greedy = SamplingParams(temperature=0)
    with torch.no_grad():
        expected_logits = model(tokens)
    expected = [c.tokens for c in generate(model, prompts, 12, sampling=greedy)]
    swapped = [m for m in model.modules() if type(m) is BlockLinear]
    try:
        assert kernel_quantized_linears(model) == len(swapped) == 30 * 7 + 1  # every Q4_1 layer and the Q8_0 head
        assert model.tok_embeddings.table is model.output  # the tied head is still the embedding's table
        with torch.no_grad():
            logits = model(tokens)
        assert torch.allclose(logits, expected_logits, atol=2e-3, rtol=0)  # logits span about ±30
        assert [c.tokens for c in generate(model, prompts, 12, sampling=greedy)] == expected
    finally:
        for module in swapped:  # the session fixture goes back to the plain layers
            module.__class__ = BlockLinear
