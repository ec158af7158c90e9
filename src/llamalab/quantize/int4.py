"""Weight-only int4: groups of `group_size` weights along the input dimension share a scale and a zero.

A weight is stored as a 4-bit code q in 0..15 standing for (q - 8) * scale + zero (`zero` is the
value of the middle code), two codes a byte: the low nibble holds the even input column. GGUF's Q4_0
(zero 0) and Q4_1 (zero = min + 8·scale) blocks of 32 are this layout with group_size 32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamalab.errors import ConfigError
from llamalab.quantize.frozen import frozen_linear
from llamalab.quantize.rows import linear_by_row_blocks

CPU_KERNEL_TILES = 2  # inner k-tiles argument of PyTorch's CPU int4 packing (any of 1, 2, 4, 8 works)
KERNEL_GROUP_SIZES = (32, 64, 128, 256)  # the group sizes PyTorch's int4 kernels accept
# PyTorch's int4 kernel of each device: (x bf16 (tokens, in), packed codes, group size, scales and zeros) -> out
KERNELS = {"cpu": "_weight_int4pack_mm_for_cpu", "cuda": "_weight_int4pack_mm"}


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float weight → packed codes uint8 (out, in/2), scales and zeros float32 (out, in/group_size).

    Each group maps its [min, max] onto the 16 codes (asymmetric min-max rounding).
    """
    out_features, in_features = weight.shape
    check_group_size(in_features, group_size)
    groups = weight.float().reshape(out_features, in_features // group_size, group_size)  # (out, n_groups, group)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low) / 15).clamp(min=1e-10)
    codes = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    codes = codes.reshape(out_features, in_features)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)  # (out, in/2)
    return packed, scales, low + 8 * scales


def check_group_size(in_features: int, group_size: int) -> None:
    if group_size <= 0 or in_features % group_size != 0 or in_features % 2 != 0:
        raise ConfigError(
            f"int4 group_size={group_size} must divide in_features={in_features} (an even number); "
            "choose a group size such as 32, 64 or 128 that divides it"
        )


def even_column_high(packed: torch.Tensor) -> torch.Tensor:
    """Our packing (even input column in the low nibble) → the CUDA int4 kernel's input: uint8 (out, in/2) with the
    even column in the high nibble, as `_convert_weight_to_int4pack` expects."""
    return (packed << 4) | (packed >> 4)  # uint8: the shift left drops the old high nibble


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (out, in/2) → the codes 0..15 as uint8 (out, in)."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)  # (out, in/2, 2) → (out, in)


class Int4Linear(nn.Module):
    """A bias-free nn.Linear with group-wise int4 weights.

    Where PyTorch has an int4 kernel for the shape (CPU: out_features a multiple of 16; CUDA from Ampere
    on: out_features a multiple of 8, in_features of 32; group size 32, 64, 128 or 256) the product runs
    in it with `kernel_dtype` activations (bfloat16 or float16), on a copy of the codes in that kernel's
    layout; elsewhere, or with kernel_dtype None, the exactly dequantized weight is multiplied in the
    input's dtype, a block of rows at a time (float32: the dequantized model's product up to summation order).
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, device=None,
                 kernel_dtype: torch.dtype | None = torch.bfloat16):
        super().__init__()
        check_group_size(in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.kernel_dtype = kernel_dtype
        n_groups = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float32, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.float32, device=device))
        self.register_buffer("kernel_weight", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("kernel_scales_and_zeros", torch.empty(0, dtype=torch.bfloat16), persistent=False)
        self.register_load_state_dict_post_hook(_repack_after_load)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> Int4Linear:
        module = cls(linear.in_features, linear.out_features, group_size, device=linear.weight.device)
        module.weight, module.scales, module.zeros = quantize_int4(linear.weight, group_size)
        module.pack_for_kernel()
        return module

    @torch.no_grad()
    def pack_for_kernel(self) -> None:
        """Copy the codes, scales and zeros into the layout of the int4 kernel of the weight's device, if it has one."""
        device = self.weight.device
        self.kernel_weight = torch.empty(0, dtype=torch.uint8, device=device)
        self.kernel_scales_and_zeros = torch.empty(0, dtype=self.kernel_dtype or torch.bfloat16, device=device)
        if self.kernel_dtype is None or self.group_size not in KERNEL_GROUP_SIZES:
            return
        tiles = _cuda_inner_k_tiles(device, self.in_features, self.out_features)
        if device.type == "cpu" and self.out_features % 16 == 0:
            codes = unpack_int4(self.weight).to(torch.int32)  # (out, in)
            self.kernel_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, CPU_KERNEL_TILES)
        elif tiles:
            self.kernel_weight = torch.ops.aten._convert_weight_to_int4pack(even_column_high(self.weight), tiles)
        else:
            return
        scales_and_zeros = torch.stack((self.scales, self.zeros), dim=-1)  # (out, n_groups, 2)
        # (n_groups, out, 2)
        self.kernel_scales_and_zeros = scales_and_zeros.transpose(0, 1).to(self.kernel_dtype).contiguous()

    def _apply(self, fn, recurse=True):
        # after .to(device) / .to_empty() the kernel copy must follow the codes
        super()._apply(fn, recurse)
        self.pack_for_kernel()
        return self

    def dequantize(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The float32 weight (out, in) the codes stand for (rows start:stop only, when given)."""
        packed, scales = self.weight[start:stop], self.scales[start:stop]
        codes = torch.empty(*packed.shape, 2, device=packed.device)  # (rows, in/2, 2): even, odd input columns
        codes[..., 0], codes[..., 1] = packed & 0xF, packed >> 4
        codes = codes.view(packed.shape[0], -1, self.group_size)  # (rows, n_groups, group)
        lowest = self.zeros[start:stop] - 8 * scales  # (rows, n_groups): the value of code 0 (GGUF's Q4_1 min)
        weight = torch.addcmul(lowest[..., None], codes, scales[..., None])  # code·scale is exact: one rounding
        return weight.view(-1, self.in_features)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inductor fuses the dequantization into the product
            return F.linear(x, self.dequantize().to(x.dtype))
        return linear_by_row_blocks(x, self.dequantize, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.training):  # training through the frozen weight (QLoRA)
            return frozen_linear(x, self.dequantize, self.out_features)
        if self.kernel_weight.numel() == 0:
            return self.reference_forward(x)
        x2d = x.reshape(-1, self.in_features).to(self.kernel_dtype).contiguous()  # (tokens, in)
        kernel = getattr(torch.ops.aten, KERNELS[x.device.type])
        out = kernel(x2d, self.kernel_weight, self.group_size, self.kernel_scales_and_zeros)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kernel = str(self.kernel_dtype).removeprefix("torch.") if self.kernel_dtype else "none"
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 group_size={self.group_size}, "
                f"kernel={kernel}")


def _cuda_inner_k_tiles(device: torch.device, in_features: int, out_features: int) -> int | None:
    """The inner k-tiles of the CUDA int4 packing for this shape (8, 4 or 2: in_features / 16 must divide by
    it); None off CUDA, before Ampere or where out_features is not a multiple of 8."""
    if device.type != "cuda" or out_features % 8 != 0 or torch.cuda.get_device_capability(device) < (8, 0):
        return None
    return next((tiles for tiles in (8, 4, 2) if in_features % (16 * tiles) == 0), None)


def _repack_after_load(module: Int4Linear, incompatible_keys) -> None:
    module.pack_for_kernel()
