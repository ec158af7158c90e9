"""CPU decoding fast paths applied to a built model from outside (the model's code is unchanged).

At batch 1 every linear layer is a matrix-vector product that streams its whole weight from memory.
MKL streams a weight stored column-major (x @ Wᵀ as a plain GEMM) up to twice as fast as the
row-major nn.Linear layout, so `column_major_weights` re-lays each weight out in place: same
values, same shape, transposed strides.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def column_major_weights(model: nn.Module) -> nn.Module:
    """Store every nn.Linear weight column-major (a tied embedding is the same Parameter and follows); return the model."""
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()  # (out, in) with strides (1, out)
    return model
