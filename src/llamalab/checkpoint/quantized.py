"""Weights kept quantized from a file (GGUF's blocks: checkpoint/gguf_blocks.py) and their installation into a model.

A `QuantizedWeight` holds the buffers of the layer that stores exactly the file's dequantized values: a BlockLinear
over the file's own blocks, or an Int4Linear (for PyTorch's int4 kernels); `install_quantized` swaps those layers
(and, for a kept embedding, a BlockEmbedding sharing a tied head's blocks) into a meta-built Transformer before the
float weights are assigned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from llamalab.model import Transformer
from llamalab.quantize import Int4Linear
from llamalab.quantize.blocks import BLOCK, BlockEmbedding, BlockLinear

INT4_KERNEL_DTYPES = (torch.bfloat16, torch.float16)  # activations PyTorch's int4 kernels take (Q4 re-laid out)


@dataclass
class QuantizedWeight:
    """A (out, in) weight as the buffers of a BlockLinear (scheme "blocks": the file's blocks) or an Int4Linear
    ("int4", one scale and zero per block of BLOCK inputs)."""

    scheme: str
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor]  # blocks, or int4's weight, scales and zeros, as the module names its buffers
    source_type: str  # the file's type, e.g. "Q4_1"
    dtype: ClassVar[torch.dtype] = torch.float32  # what it dequantizes to

    def module(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
        """The layer holding these buffers on `device` (no copy where they are), computing with `dtype` activations."""
        out_features, in_features = self.shape
        with torch.device("meta"):
            if self.scheme == "blocks":
                module = BlockLinear(in_features, out_features, self.source_type)
            else:
                kernel = dtype if dtype in INT4_KERNEL_DTYPES else None
                module = Int4Linear(in_features, out_features, BLOCK, kernel_dtype=kernel)
        for name, tensor in self.tensors.items():
            setattr(module, name, tensor.to(device))
        if isinstance(module, Int4Linear):
            module.pack_for_kernel()
        return module

    def dequantize(self) -> torch.Tensor:
        """The float32 (out, in) weight these codes stand for."""
        return self.module().dequantize()


def install_quantized(model: Transformer, quantized: dict[str, QuantizedWeight], device: torch.device | str,
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Swap in the quantized layers of `quantized` (Meta names); return the float weights still to assign.

    An embedding kept as blocks becomes a BlockEmbedding (sharing them with a tied head); one re-laid out as int4 is
    dequantized to `dtype` (a tied head keeps the int4 layer).
    """
    floats = {}
    for name, weight in quantized.items():
        module_name = name.removesuffix(".weight")
        if module_name != "tok_embeddings":
            _replace(model, module_name, weight.module(device, dtype))
            continue
        layer = weight.module(device, dtype)
        if model.args.tie_embeddings:
            model.output = layer
        if isinstance(layer, BlockLinear):
            model.tok_embeddings = BlockEmbedding(layer, dtype)
        else:
            floats[name] = layer.dequantize().to(dtype)
    return floats


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
