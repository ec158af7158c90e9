"""Weight-only int8: weights as int8 codes times a bfloat16 scale per output channel (symmetric), what `quantize_model`
makes. (GGUF's Q8_0 blocks are read as they are stored: quantize/blocks.py.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamalab.quantize.frozen import frozen_linear


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight → int8 codes (out, in) and bfloat16 scales (out,), with weight ≈ codes * scale.

    The scales are kept in bfloat16, the precision the CPU kernel uses, and the codes are rounded
    against those stored scales.
    """
    weight = weight.float()
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-10).to(torch.bfloat16)  # the largest |w| maps to ±127
    codes = torch.round(weight / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scales


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 (rows, in) from int8 codes (rows, in) and scales (rows,)."""
    return codes.float() * scales.float()[:, None]


class Int8Linear(nn.Module):
    """A bias-free nn.Linear whose weight is stored as int8 codes and one bfloat16 scale per output channel; on CPU
    the product runs in PyTorch's int8-weight kernel with bfloat16 activations, elsewhere the weight is dequantized
    on the fly (`reference_forward`).
    """

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        module = cls(linear.in_features, linear.out_features, device=linear.weight.device)
        module.weight, module.scales = quantize_int8(linear.weight)
        return module

    def dequantize(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The float32 weight (out, in) the codes stand for (rows start:stop only, when given)."""
        return dequantize_int8(self.weight[start:stop], self.scales[start:stop])

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.training):  # training through the frozen weight (QLoRA)
            return frozen_linear(x, self.dequantize, self.out_features)
        if x.device.type != "cpu":
            return self.reference_forward(x)
        x2d = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (tokens, in)
        out = torch.ops.aten._weight_int8pack_mm(x2d, self.weight, self.scales.to(torch.bfloat16))
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"
