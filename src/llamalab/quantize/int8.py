"""Weight-only int8: weights as int8 codes times a float scale, per output channel or per block of inputs.

Per channel (symmetric, bfloat16 scales) is what `quantize_model` makes; blocks of `group_size` inputs
with float16 scales are GGUF's Q8_0 (group 32), loaded as they are stored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamalab.quantize.frozen import frozen_linear
from llamalab.quantize.rows import linear_by_row_blocks


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
    """float32 (rows, in) from int8 codes (rows, in) and scales (rows,) per channel or (rows, in/group) per block."""
    if scales.dim() == 1:
        return codes.float() * scales.float()[:, None]
    blocks = codes.float().view(codes.shape[0], scales.shape[1], -1)  # (rows, n_groups, group)
    return (blocks * scales.float()[..., None]).view(codes.shape)


class Int8Linear(nn.Module):
    """A bias-free nn.Linear whose weight is stored as int8 codes and float scales.

    group_size None: one bfloat16 scale per output channel; on CPU the product runs in PyTorch's int8-weight
    kernel with bfloat16 activations. group_size g: one scale (float16, as Q8_0 stores it) per g inputs of a
    row; the exactly dequantized weight is multiplied in the input's dtype a block of rows at a time.
    Elsewhere the weight is dequantized on the fly (`reference_forward`).
    """

    def __init__(self, in_features: int, out_features: int, device=None, group_size: int | None = None,
                 scale_dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        scale_shape = (out_features,) if group_size is None else (out_features, in_features // group_size)
        scale_dtype = scale_dtype or (torch.bfloat16 if group_size is None else torch.float16)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(scale_shape, dtype=scale_dtype, device=device))

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
        if self.group_size is not None:
            if torch.compiler.is_compiling():
                return F.linear(x, self.dequantize().to(x.dtype))
            return linear_by_row_blocks(x, self.dequantize, self.out_features)
        return F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.training):  # training through the frozen weight (QLoRA)
            return frozen_linear(x, self.dequantize, self.out_features)
        if x.device.type != "cpu" or self.group_size is not None:
            return self.reference_forward(x)
        x2d = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (tokens, in)
        out = torch.ops.aten._weight_int8pack_mm(x2d, self.weight, self.scales.to(torch.bfloat16))
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        scheme = "int8 per-channel" if self.group_size is None else f"int8 group_size={self.group_size}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {scheme}"


class Int8Embedding(nn.Module):
    """An nn.Embedding whose table is int8 codes and scales (GGUF's Q8_0 token_embd), looked up row by row.

    `dtype` is what the looked-up vectors are cast to (the model's activations). Built from an Int8Linear, it
    shares that layer's tensors: a tied output head and the embedding are one int8 table.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32, device=None,
                 group_size: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.table = Int8Linear(embedding_dim, num_embeddings, device, group_size)

    @classmethod
    def from_int8_linear(cls, linear: Int8Linear, dtype: torch.dtype = torch.float32) -> Int8Embedding:
        with torch.device("meta"):
            module = cls(linear.out_features, linear.in_features, dtype, group_size=linear.group_size)
        module.table = linear
        return module

    @property
    def weight(self) -> torch.Tensor:
        """The int8 codes (vocab, dim): where the table lives (its device)."""
        return self.table.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        codes = F.embedding(tokens, self.table.weight)  # (..., dim) int8
        scales = F.embedding(tokens, self.table.scales)  # (..., dim/group), or (...) per channel
        n = codes.shape[:-1].numel()
        rows = dequantize_int8(codes.reshape(n, self.embedding_dim), scales.reshape(n, -1))  # (n, dim): one group per
        return rows.view(codes.shape).to(self.dtype)  # channel is a group of dim

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.table.extra_repr().split(', ')[-1]}"
