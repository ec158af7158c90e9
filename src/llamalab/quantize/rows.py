"""The product with a quantized weight dequantized a block of rows at a time: exact weights, bounded memory."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ROWS_PER_BLOCK = 1024  # a (1024, 4096) float32 block is 16 MiB; the block stays in cache between dequantize and matmul


def linear_by_row_blocks(x: torch.Tensor, dequantize: Callable[[int, int], torch.Tensor], out_features: int,
                         rows: int = ROWS_PER_BLOCK) -> torch.Tensor:
    """x @ Wᵀ in x's dtype, where dequantize(start, stop) gives the float32 rows start:stop of W (out, in)."""
    blocks = [F.linear(x, dequantize(start, min(start + rows, out_features)).to(x.dtype))  # (..., rows)
              for start in range(0, out_features, rows)]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)
