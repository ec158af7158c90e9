"""BlockLinear layers holding GGUF blocks of every kind, with gguf's own dequantization of them (the oracle)."""
import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as GGML

from llamalab.quantize.blocks import BlockLinear

FLOAT16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q4_K": (0, 2),
                  "Q5_K": (0, 2), "Q6_K": (208,), "Q2_K": (80, 82)}  # byte offsets of each block's float16 d / m / dmin


def random_blocks(out_features: int, in_features: int, kind: str, seed: int = 0, largest: float = 1e-2) -> np.ndarray:
    """Random but valid `kind` blocks (out, bytes per row): random codes, scales and bits, finite float16 d / m / dmin
    of magnitude largest/10..largest."""
    rng = np.random.default_rng(seed)
    inputs, size = gguf.GGML_QUANT_SIZES[GGML[kind]]
    n_blocks = out_features * in_features // inputs
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for offset in FLOAT16_FIELDS[kind]:
        values = rng.uniform(largest / 10, largest, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)
        blocks[:, offset:offset + 2] = values.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(out_features, -1)


def block_layer(out_features: int, in_features: int, kind: str, seed: int = 0) -> tuple[BlockLinear, torch.Tensor]:
    """A BlockLinear holding `kind` blocks (gguf.quants' of a random weight; random valid blocks for the K kinds,
    which gguf-py cannot quantize), and gguf's dequantization of them."""
    if kind.endswith("_K"):
        blocks = random_blocks(out_features, in_features, kind, seed)
    else:
        weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed)).numpy()
        blocks = gguf.quants.quantize(weight, GGML[kind])  # (out, bytes per row) uint8
    layer = BlockLinear(in_features, out_features, kind)
    layer.blocks = torch.from_numpy(blocks)
    return layer, torch.from_numpy(gguf.quants.dequantize(blocks, GGML[kind]))
