"""CPU decoding fast paths applied to a built model from outside (the model's code is unchanged).

At batch 1 every linear layer is a matrix-vector product that streams its whole weight from memory,
so decoding speed is the speed at which the weights stream:

- eager: MKL streams a weight stored column-major (x @ Wᵀ as a plain GEMM) up to twice as fast as
  nn.Linear's row-major layout; `column_major_weights` re-lays each weight out in place.
- compiled: MKL's matrix-vector product runs on one core. Written as a multiply-and-sum over the
  weight's rows (`MatVecLinear`), inductor compiles it to a vectorised loop split over all the CPU
  threads, which streams row-major weights at close to the bandwidth of every core together.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def column_major_weights(model: nn.Module, release: Callable[[torch.Tensor], None] | None = None) -> nn.Module:
    """Store every float32 nn.Linear weight column-major (a tied embedding is the same Parameter: it follows); return
    model. `release(old)` is called on each weight replaced (checkpoint.mapped.release_pages gives back the pages of
    a memory-mapped one, so the two layouts are never resident together). bfloat16 / float16 weights stay as they
    are: their products (oneDNN) are as fast row-major, and a copy would double their memory."""
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.is_contiguous() and module.weight.dtype == torch.float32:
            old = module.weight.data
            module.weight.data = old.t().contiguous().t()  # (out, in) with strides (1, out)
            if release is not None:
                release(old)
    return model


class MatVecLinear(nn.Linear):
    """An nn.Linear whose one-token product, under torch.compile, is a multiply-and-sum over the weight's rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.shape[:-1].numel() == 1:
            out = (x.unsqueeze(-2) * self.weight).sum(-1)  # (..., 1, in) * (out, in) -> (..., out)
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.weight, self.bias)


@torch.no_grad()
def matvec_linears(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear for a MatVecLinear holding the same (row-major) weight; for a compiled CPU decode step."""
    for name, linear in [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]:
        with torch.device("meta"):
            swapped = MatVecLinear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        swapped.weight, swapped.bias = linear.weight, linear.bias  # the same Parameters: ties are kept
        if not swapped.weight.is_contiguous():
            swapped.weight.data = swapped.weight.data.contiguous()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, swapped)
    return model
