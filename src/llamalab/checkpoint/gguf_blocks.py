"""GGUF's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K tensors kept quantized: as views of the mapped file (no
copy), or, for Q4_0 / Q4_1 where PyTorch's int4 kernels will compute (bfloat16 / float16 activations), re-laid out as an
Int4Linear's buffers, with the same values. The blocks' layouts are in quantize/blocks.py.

A Q4_0 / Q4_1 block covers 32 consecutive inputs of a row: float16 d [float16 m], 16 bytes of nibbles (value d·(q-8)
or d·q + m), nibble byte j holding input j in its low half and input j+16 in its high half. Our int4 stands for
(q-8)·scale + zero: Q4_0 is scale d, zero 0; Q4_1 is scale d, zero m + 8d, exact in float32 when that sum is
(checked; a tensor where it is not stays as blocks).
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as GGML

from llamalab.checkpoint.gguf_header import TensorInfo
from llamalab.checkpoint.quantized import INT4_KERNEL_DTYPES, QuantizedWeight
from llamalab.quantize.blocks import BLOCK, KINDS, float16_values

KEPT_TYPES = tuple(GGML[kind] for kind in KINDS)  # the types BlockLinear holds
INT4_TYPES = (GGML.Q4_0, GGML.Q4_1)  # the ones an Int4Linear holds exactly


def read_raw(file, tensor: TensorInfo) -> np.ndarray:
    """The bytes of a tensor (rows, bytes per row), read into fresh memory rather than through a map of the file."""
    raw = np.empty(tensor.row_bytes_shape, dtype=np.uint8)
    file.seek(tensor.offset)
    file.readinto(memoryview(raw).cast("B"))
    return raw


def kept_quantized(file, mapped: np.memmap, tensor: TensorInfo, dtype: torch.dtype | None) -> QuantizedWeight:
    """A KEPT_TYPES matrix as a QuantizedWeight: its blocks where they lie in `mapped`, or (Q4_0 / Q4_1 computing in
    `dtype` bfloat16 / float16) an Int4Linear's buffers when those hold it exactly."""
    if tensor.tensor_type in INT4_TYPES and dtype in INT4_KERNEL_DTYPES:
        int4 = to_int4(read_raw(file, tensor), tensor.tensor_type, tensor.shape)
        if int4 is not None:
            return int4
    blocks = mapped[tensor.offset:tensor.offset + tensor.n_bytes].reshape(tensor.row_bytes_shape)  # (out, bytes)
    return QuantizedWeight("blocks", tensor.shape, {"blocks": torch.from_numpy(blocks)}, tensor.tensor_type.name)


def to_int4(raw: np.ndarray, ggml_type: GGML, shape: tuple[int, int]) -> QuantizedWeight | None:
    """The Int4Linear buffers of an (out, in) matrix of Q4_0 / Q4_1 blocks; None if ours cannot hold it exactly."""
    out_features, in_features = shape
    blocks = torch.from_numpy(raw).view(out_features, in_features // BLOCK, -1)  # (out, n_blocks, block bytes)
    scales = float16_values(blocks[..., 0:2])  # (out, n_blocks)
    nibbles = blocks[..., 2:] if ggml_type == GGML.Q4_0 else blocks[..., 4:]  # (out, n_blocks, 16)
    codes = torch.cat((nibbles & 0xF, nibbles >> 4), dim=-1)  # (out, n_blocks, 32): inputs 0..15, then 16..31
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).reshape(out_features, in_features // 2)
    if ggml_type == GGML.Q4_0:
        zeros = torch.zeros_like(scales)
    else:
        mins = float16_values(blocks[..., 2:4])
        zeros = mins + 8 * scales
        if not torch.equal(zeros.double(), mins.double() + 8 * scales.double()):
            return None  # m + 8d rounds in float32: our int4 would not give gguf's values
    return QuantizedWeight("int4", shape, {"weight": packed, "scales": scales, "zeros": zeros}, ggml_type.name)

