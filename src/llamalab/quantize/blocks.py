"""Weights held as GGUF's own quantized blocks, read where they lie (a map of the file: no copy is made).

ggml-common.h's layouts. 32-input blocks: Q4_0 = float16 d, 16 bytes of nibbles, value d·(q-8); Q4_1 = float16 d,
float16 m, 16 bytes, value d·q + m; Q8_0 = float16 d, 32 int8 q, value d·q; Q5_0 / Q5_1 = Q4_0 / Q4_1 with 4 bytes of
5th bits (bit j: input j) before the nibbles, value d·(q-16) / d·q + m. Nibble byte j holds input j in its low half
and input j+16 in its high half. 256-input super-blocks of 8 sub-blocks of 32: Q4_K = float16 d, float16 dmin,
12 bytes of 6-bit scales and mins, 128 bytes of nibbles (byte l of chunk c: input l of sub-block 2c low, of 2c+1
high), value (d·sc)·q - dmin·m; Q5_K = Q4_K with 32 bytes of 5th bits before the nibbles (bit s of byte l: input l
of sub-block s); Q6_K = 128 bytes of low nibbles (per 128-input half: byte l holds inputs l and l+64), 64 bytes of
2-bit highs (bits 2k of byte l: input 32k+l), 16 int8 scales (one per 16 inputs), float16 d last, value
(d·scale)·(q-32). Every product is exact in float32, so each value is rounded at most once
(as gguf.quants and ggml compute it).
"""
from __future__ import annotations

import gguf
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as GGML
from torch import nn

from llamalab.errors import ConfigError
from llamalab.quantize.frozen import frozen_linear
from llamalab.quantize.rows import linear_by_row_blocks

BLOCK = 32  # inputs per block (per sub-block of the K kinds)
KINDS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")  # the GGUF types kept (and cpu_rows.h reads)
BLOCK_INPUTS = {kind: gguf.GGML_QUANT_SIZES[GGML[kind]][0] for kind in KINDS}  # inputs one block covers
BLOCK_BYTES = {kind: gguf.GGML_QUANT_SIZES[GGML[kind]][1] for kind in KINDS}
GGML_TYPE_IDS = {kind: GGML[kind].value for kind in KINDS}  # ggml's type numbers: the kinds of cpu_rows.h


def dequantize_blocks(rows: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 (..., bytes per row) of `kind` blocks → the float32 values (..., inputs)."""
    blocks = rows.view(*rows.shape[:-1], -1, BLOCK_BYTES[kind])  # (..., n_blocks, block bytes)
    if kind.endswith("_K"):
        return _super_block_values(blocks, kind).flatten(-2)
    d = float16_values(blocks[..., 0:2])[..., None]  # (..., n_blocks, 1)
    if kind == "Q8_0":
        codes = blocks[..., 2:].contiguous().view(torch.int8).float()  # (..., n_blocks, 32)
        return (codes * d).flatten(-2)
    has_min = kind in ("Q4_1", "Q5_1")
    nibbles = blocks[..., -16:]  # (..., n_blocks, 16)
    codes = torch.cat((nibbles & 0xF, nibbles >> 4), dim=-1)  # (..., n_blocks, 32): inputs 0..15, 16..31
    if kind in ("Q5_0", "Q5_1"):
        codes = codes | _bits(blocks[..., -20:-16]).flatten(-2) << 4  # 5th bits (..., n_blocks, 4, 8) → 32 inputs
    codes = codes.float()
    if not has_min:
        return ((codes - (16 if kind == "Q5_0" else 8)) * d).flatten(-2)
    return torch.addcmul(float16_values(blocks[..., 2:4])[..., None], codes, d).flatten(-2)  # d·q exact: one rounding


def _super_block_values(blocks: torch.Tensor, kind: str) -> torch.Tensor:
    """(..., n_blocks, block bytes) of a K kind → float32 (..., n_blocks, 256)."""
    if kind == "Q6_K":
        low = blocks[..., 0:128].unflatten(-1, (2, 64))  # (..., n, half, 64)
        low = torch.cat((low & 0xF, low >> 4), dim=-1)  # (..., n, half, 128): byte l's low nibble input l, high l+64
        high = _bits(blocks[..., 128:192].unflatten(-1, (2, 32)), width=2)  # (..., n, half, 32, 4): bits 2k of byte l
        high = high.transpose(-1, -2).flatten(-2)  # (..., n, half, 128): input 32k + l
        codes = ((low | high << 4).float() - 32).unflatten(-1, (8, 16)).flatten(-3, -2)  # (..., n, 16, 16)
        scales = blocks[..., 192:208].view(torch.int8).float()  # (..., n, 16): one per 16 inputs
        d = float16_values(blocks[..., 208:210])[..., None]  # (..., n, 1)
        return ((d * scales)[..., None] * codes).flatten(-2)
    d, dmin = float16_values(blocks[..., 0:2])[..., None], float16_values(blocks[..., 2:4])[..., None]  # (..., n, 1)
    scales, mins = _scales_and_mins(blocks[..., 4:16])  # (..., n, 8) each
    nibbles = blocks[..., -128:].unflatten(-1, (4, 32))  # (..., n, chunk, 32)
    codes = torch.stack((nibbles & 0xF, nibbles >> 4), dim=-2).flatten(-3, -2)  # (..., n, 8 sub-blocks, 32)
    if kind == "Q5_K":
        codes = codes | _bits(blocks[..., 16:48]).transpose(-1, -2) << 4  # 5th bits (..., n, 32, 8) → (..., n, 8, 32)
    return ((d * scales)[..., None] * codes.float() - (dmin * mins)[..., None]).flatten(-2)


def _scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 12) bytes of a Q4_K / Q5_K super-block → its 8 6-bit scales and 8 mins, float32 (..., 8) each."""
    low_scales, low_mins, rest = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]  # (..., 4) each
    scales = torch.cat((low_scales & 63, (rest & 0xF) | (low_scales >> 6) << 4), dim=-1)  # sub-blocks 0..3, 4..7
    mins = torch.cat((low_mins & 63, (rest >> 4) | (low_mins >> 6) << 4), dim=-1)
    return scales.float(), mins.float()


def _bits(packed: torch.Tensor, width: int = 1) -> torch.Tensor:
    """uint8 (..., n) → (..., n, 8 / width): the `width`-bit fields of each byte, lowest first."""
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=packed.device)
    return (packed[..., None] >> shifts) & ((1 << width) - 1)


def float16_values(pairs: torch.Tensor) -> torch.Tensor:
    """(..., 2) little-endian bytes → (...) float32 of the float16 they hold."""
    return pairs.contiguous().view(torch.float16).squeeze(-1).float()


class BlockLinear(nn.Module):
    """A bias-free nn.Linear whose weight is `kind` blocks (uint8 (out, in / BLOCK_INPUTS · BLOCK_BYTES)), e.g. a
    view of a mapped GGUF file. The product multiplies the exactly dequantized weight in the input's dtype, a block of
    rows at a time; native.KernelBlockLinear runs few-row float32 products in C on the blocks themselves."""

    def __init__(self, in_features: int, out_features: int, kind: str, device=None):
        super().__init__()
        if kind not in BLOCK_BYTES:
            raise ConfigError(f"unknown block kind {kind!r} (known: {', '.join(BLOCK_BYTES)})")
        if in_features % BLOCK_INPUTS[kind]:
            raise ConfigError(f"{kind} blocks of {BLOCK_INPUTS[kind]} inputs cannot hold rows of {in_features} inputs")
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        row_bytes = in_features // BLOCK_INPUTS[kind] * BLOCK_BYTES[kind]
        self.register_buffer("blocks", torch.zeros(out_features, row_bytes, dtype=torch.uint8, device=device))

    def dequantize(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The float32 weight (out, in) the blocks stand for (rows start:stop only, when given)."""
        return dequantize_blocks(self.blocks[start:stop], self.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.training):  # training through the frozen weight (QLoRA)
            return frozen_linear(x, self.dequantize, self.out_features)
        if torch.compiler.is_compiling():  # inductor fuses the dequantization into the product
            return F.linear(x, self.dequantize().to(x.dtype))
        return linear_by_row_blocks(x, self.dequantize, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind} blocks"


class BlockEmbedding(nn.Module):
    """An nn.Embedding whose table is a BlockLinear's blocks (GGUF's token_embd; a tied head shares them): the rows
    looked up are dequantized and cast to `dtype` (the model's activations)."""

    def __init__(self, table: BlockLinear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = table.out_features, table.in_features, dtype
        self.table = table

    @property
    def weight(self) -> torch.Tensor:
        """The blocks (vocab, bytes per row): where the table lives (its device)."""
        return self.table.blocks

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(tokens, self.table.blocks)  # (..., bytes per row) uint8
        return dequantize_blocks(rows, self.table.kind).to(self.dtype)  # (..., dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.table.kind} blocks"
