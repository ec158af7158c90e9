"""Weights held as GGUF's own Q4_0 / Q4_1 / Q8_0 blocks, read where they lie (a map of the file: no copy is made).

A block covers 32 consecutive inputs of a row (ggml-common.h): Q4_0 = float16 d, 16 bytes of nibbles, value d·(q-8);
Q4_1 = float16 d, float16 m, 16 bytes, value d·q + m; Q8_0 = float16 d, 32 int8 q, value d·q. Nibble byte j holds
input j in its low half and input j+16 in its high half. d·q is exact in float32, so each value is rounded once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamalab.errors import ConfigError
from llamalab.quantize.frozen import frozen_linear
from llamalab.quantize.rows import linear_by_row_blocks

BLOCK = 32  # inputs per block
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
GGML_TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8}  # ggml's type numbers (the kinds of cpu_decode.c)


def dequantize_blocks(rows: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 (..., bytes per row) of `kind` blocks → the float32 values (..., inputs)."""
    blocks = rows.view(*rows.shape[:-1], -1, BLOCK_BYTES[kind])  # (..., n_blocks, block bytes)
    d = float16_values(blocks[..., 0:2])[..., None]  # (..., n_blocks, 1)
    if kind == "Q8_0":
        codes = blocks[..., 2:].contiguous().view(torch.int8).float()  # (..., n_blocks, 32)
        return (codes * d).flatten(-2)
    nibbles = blocks[..., 4:] if kind == "Q4_1" else blocks[..., 2:]  # (..., n_blocks, 16)
    codes = torch.cat((nibbles & 0xF, nibbles >> 4), dim=-1).float()  # (..., n_blocks, 32): inputs 0..15, 16..31
    if kind == "Q4_0":
        return ((codes - 8) * d).flatten(-2)
    return torch.addcmul(float16_values(blocks[..., 2:4])[..., None], codes, d).flatten(-2)  # d·q exact: one rounding


def float16_values(pairs: torch.Tensor) -> torch.Tensor:
    """(..., 2) little-endian bytes → (...) float32 of the float16 they hold."""
    return pairs.contiguous().view(torch.float16).squeeze(-1).float()


class BlockLinear(nn.Module):
    """A bias-free nn.Linear whose weight is `kind` blocks (uint8 (out, in/32 · block bytes)), e.g. a view of a
    mapped GGUF file. The product multiplies the exactly dequantized weight in the input's dtype, a block of rows at
    a time; native.KernelBlockLinear runs few-row float32 products in C on the blocks themselves."""

    def __init__(self, in_features: int, out_features: int, kind: str, device=None):
        super().__init__()
        if kind not in BLOCK_BYTES or in_features % BLOCK:
            raise ConfigError(f"{kind} blocks of {BLOCK} inputs cannot hold rows of {in_features} inputs")
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        row_bytes = in_features // BLOCK * BLOCK_BYTES[kind]
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
