"""Every GGUF block kind BlockLinear / BlockEmbedding keep (quantize/blocks.py), in PyTorch: exactly gguf-py's
dequantized values, and products matching float64 products of them (eager, autograd and compiled)."""
import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as GGML
from gguf_block_layers import block_layer, random_blocks

from llamalab.errors import ConfigError
from llamalab.quantize.blocks import BLOCK_BYTES, BLOCK_INPUTS, BlockEmbedding, BlockLinear

NEW_KINDS = ["Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kind", list(BLOCK_BYTES))
def test_random_blocks_dequantize_to_gguf_s_values(kind, device):
    """Random bytes set every code, scale and high bit independently: any misplaced field changes values."""
    in_features = 2 * BLOCK_INPUTS[kind] if kind.endswith("_K") else 3 * BLOCK_INPUTS[kind]
    blocks = random_blocks(12, in_features, kind, seed=1)
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, GGML[kind]))  # (12, in_features)
    layer = BlockLinear(in_features, 12, kind)
    layer.blocks = torch.from_numpy(blocks).to(device)
    assert torch.equal(layer.dequantize().cpu(), expected)
    assert torch.equal(layer.dequantize(3, 7).cpu(), expected[3:7])
    tokens = torch.tensor([[0, 11, 5], [5, 2, 9]])
    assert torch.equal(BlockEmbedding(layer)(tokens.to(device)).cpu(), expected[tokens])
    assert torch.equal(BlockEmbedding(layer, torch.bfloat16)(tokens.to(device)).cpu(), expected[tokens].bfloat16())


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_pytorch_products_match_float64_of_gguf_s_dequantized_weight(kind):
    in_features = 512 if kind.endswith("_K") else 96
    layer, weight = block_layer(48, in_features, kind)
    x = torch.randn(40, in_features, generator=torch.Generator().manual_seed(2))  # more rows than the C kernels take
    exact = x.double() @ weight.double().t()  # (40, 48)
    scale = exact.abs().max().item()
    with torch.no_grad():
        assert (layer(x).double() - exact).abs().max().item() <= 4e-6 * scale
    x.requires_grad_(True)
    y = layer(x)  # through the frozen weight (QLoRA's path)
    assert (y.double() - exact).abs().max().item() <= 4e-6 * scale
    y.sum().backward()
    column_sums = weight.double().sum(0).expand_as(x)
    assert (x.grad.double() - column_sums).abs().max().item() <= 4e-6 * column_sums.abs().max().item()


def test_compiled_layers_dequantize_exactly_and_multiply():
    layers, weights = zip(*(block_layer(16, 256, kind, seed=i) for i, kind in enumerate(NEW_KINDS)))
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(3))

    @torch.compile(fullgraph=True)
    def run(x):
        return [layer.dequantize() for layer in layers], [layer(x) for layer in layers]

    with torch.no_grad():
        dequantized, products = run(x)
    for kind, weight, values, product in zip(NEW_KINDS, weights, dequantized, products, strict=True):
        assert torch.equal(values, weight), kind
        exact = x.double() @ weight.double().t()
        assert (product.double() - exact).abs().max().item() <= 4e-6 * exact.abs().max().item(), kind


def test_rows_that_do_not_fill_super_blocks_are_refused():
    with pytest.raises(ConfigError, match="Q4_K blocks of 256 inputs cannot hold rows of 576 inputs"):
        BlockLinear(576, 16, "Q4_K")
    with pytest.raises(ConfigError, match="unknown block kind 'Q3_K'"):
        BlockLinear(256, 16, "Q3_K")
    assert BlockLinear(512, 16, "Q6_K").blocks.shape == (16, 2 * 210)
    assert BlockLinear(96, 16, "Q5_1").blocks.shape == (16, 3 * 24)
