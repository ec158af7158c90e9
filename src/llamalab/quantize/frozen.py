"""A product with a frozen quantized weight that gradients can flow through (QLoRA): the float weight is
dequantized again, a block of rows at a time, in the backward pass instead of being kept from the forward."""
from __future__ import annotations

from collections.abc import Callable

import torch

from llamalab.quantize.rows import ROWS_PER_BLOCK, linear_by_row_blocks


def frozen_linear(x: torch.Tensor, dequantize: Callable[[int, int], torch.Tensor], out_features: int) -> torch.Tensor:
    """x @ Wᵀ (W from dequantize(start, stop), frozen) with d/dx = grad @ W and no float copy of W held for backward."""
    return _FrozenLinear.apply(x, dequantize, out_features)


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dequantize, out_features):
        ctx.dequantize, ctx.out_features, ctx.x_dtype = dequantize, out_features, x.dtype
        return linear_by_row_blocks(x, dequantize, out_features)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grad_x = None
        for start in range(0, ctx.out_features, ROWS_PER_BLOCK):
            stop = min(start + ROWS_PER_BLOCK, ctx.out_features)
            part = grad[..., start:stop] @ ctx.dequantize(start, stop).to(grad.dtype)  # (..., in)
            grad_x = part if grad_x is None else grad_x.add_(part)
        return grad_x.to(ctx.x_dtype), None, None
