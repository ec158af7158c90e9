"""GGUF's Q8_0, Q4_0 and Q4_1 blocks as the buffers of our int8 / int4 layers, with the same dequantized values.

Each block covers 32 consecutive inputs of a row (ggml-common.h): Q8_0 = float16 d, 32 int8 q (value d·q);
Q4_0 = float16 d, 16 bytes of nibbles (value d·(q-8)); Q4_1 = float16 d, float16 m, 16 bytes (value d·q + m).
A nibble byte j holds input j in its low half and input j+16 in its high half. Our int4 stands for
(q-8)·scale + zero: Q4_0 is scale d, zero 0; Q4_1 is scale d, zero m + 8d, exact in float32 when that sum is
(checked; a tensor where it is not is dequantized instead).
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as GGML

from llamalab.checkpoint.gguf_header import TensorInfo
from llamalab.checkpoint.quantized import QuantizedWeight

BLOCK = 32
KEPT_TYPES = (GGML.Q8_0, GGML.Q4_0, GGML.Q4_1)


def read_raw(file, tensor: TensorInfo) -> np.ndarray:
    """The bytes of a tensor (rows, bytes per row), read into fresh memory rather than through a map of the file."""
    raw = np.empty(tensor.row_bytes_shape, dtype=np.uint8)
    file.seek(tensor.offset)
    file.readinto(memoryview(raw).cast("B"))
    return raw


def to_quantized(raw: np.ndarray, ggml_type: GGML, shape: tuple[int, int]) -> QuantizedWeight | None:
    """The QuantizedWeight of an (out, in) matrix stored as `ggml_type` blocks; None if ours cannot hold it exactly."""
    out_features, in_features = shape
    blocks = torch.from_numpy(raw).view(out_features, in_features // BLOCK, -1)  # (out, n_blocks, block bytes)
    d = _float16(blocks[..., 0:2])  # (out, n_blocks)
    if ggml_type == GGML.Q8_0:
        codes = blocks[..., 2:].contiguous().view(torch.int8).reshape(out_features, in_features)
        return QuantizedWeight("int8", shape, BLOCK, {"weight": codes, "scales": d}, ggml_type.name)
    nibbles = blocks[..., 2:] if ggml_type == GGML.Q4_0 else blocks[..., 4:]  # (out, n_blocks, 16)
    codes = torch.cat((nibbles & 0xF, nibbles >> 4), dim=-1)  # (out, n_blocks, 32): inputs 0..15, then 16..31
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).reshape(out_features, in_features // 2)
    scales = d.float()
    if ggml_type == GGML.Q4_0:
        zeros = torch.zeros_like(scales)
    else:
        mins = _float16(blocks[..., 2:4]).float()
        zeros = mins + 8 * scales
        if not torch.equal(zeros.double(), mins.double() + 8 * scales.double()):
            return None  # m + 8d rounds in float32: our int4 would not give gguf's values
    return QuantizedWeight("int4", shape, BLOCK, {"weight": packed, "scales": scales, "zeros": zeros}, ggml_type.name)


def _float16(pairs: torch.Tensor) -> torch.Tensor:
    """(..., 2) little-endian bytes → (...) float16."""
    return pairs.contiguous().view(torch.float16).squeeze(-1)
