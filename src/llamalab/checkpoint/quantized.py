"""Weights kept quantized from a file (GGUF's Q8_0, Q4_0, Q4_1) and their installation into a built model.

A `QuantizedWeight` holds the buffers of the int8 / int4 layer that stores exactly the file's dequantized
values; `install_quantized` swaps those layers (and, for a Q8_0 embedding, an Int8Embedding sharing a tied
head's table) into a meta-built Transformer before the float weights are assigned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from llamalab.model import Transformer
from llamalab.quantize import Int4Linear, Int8Embedding, Int8Linear

INT4_KERNEL_DTYPES = (torch.bfloat16, torch.float16)  # activations PyTorch's int4 kernels take; float32: exact path


@dataclass
class QuantizedWeight:
    """A (out, in) weight as the buffers of an Int8Linear (scheme "int8", per block) or Int4Linear ("int4")."""

    scheme: str
    shape: tuple[int, int]
    group_size: int
    tensors: dict[str, torch.Tensor]  # weight, scales (and zeros for int4), as the module names its buffers
    source_type: str  # the file's type, e.g. "Q4_1"
    dtype: ClassVar[torch.dtype] = torch.float32  # what it dequantizes to

    def module(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
        """The int8 / int4 layer holding these buffers on `device`, computing with `dtype` activations."""
        out_features, in_features = self.shape
        with torch.device("meta"):
            if self.scheme == "int8":
                module = Int8Linear(in_features, out_features, group_size=self.group_size)
            else:
                kernel = dtype if dtype in INT4_KERNEL_DTYPES else None
                module = Int4Linear(in_features, out_features, self.group_size, kernel_dtype=kernel)
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

    A Q8_0 embedding becomes an Int8Embedding (sharing its table with a tied head); an embedding of another
    quantized type is dequantized to `dtype` (a tied head keeps the quantized layer).
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
        if isinstance(layer, Int8Linear):
            model.tok_embeddings = Int8Embedding.from_int8_linear(layer, dtype)
        else:
            floats[name] = layer.dequantize().to(dtype)
    return floats


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
