"""Weight-only int8: each output channel's weights as int8 times one float scale (symmetric)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight → int8 codes (out, in) and bfloat16 scales (out,), with weight ≈ codes * scale.

    The scales are kept in bfloat16, the precision the CPU kernel uses, and the codes are rounded
    against those stored scales.
    """
    weight = weight.float()
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-10).to(torch.bfloat16)  # the largest |w| maps to ±127
    codes = torch.round(weight / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scales


class Int8Linear(nn.Module):
    """A bias-free nn.Linear whose weight is stored as int8 codes and per-output-channel scales.

    On CPU the product runs in PyTorch's int8-weight kernel with bfloat16 activations; elsewhere the
    weight is dequantized on the fly (`reference_forward`), which torch.compile fuses into the matmul.
    """

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        module = cls(linear.in_features, linear.out_features, device=linear.weight.device)
        module.weight, module.scales = quantize_int8(linear.weight)
        return module

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out, in) the codes stand for."""
        return self.weight.float() * self.scales.float()[:, None]

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return self.reference_forward(x)
        x2d = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (tokens, in)
        out = torch.ops.aten._weight_int8pack_mm(x2d, self.weight, self.scales.to(torch.bfloat16))
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"
