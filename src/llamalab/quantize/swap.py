"""`quantize_model`: replace the nn.Linear layers of a built model by int8 or int4 weight-only ones."""
from __future__ import annotations

import torch
from torch import nn

from llamalab.errors import ConfigError
from llamalab.quantize.int4 import Int4Linear
from llamalab.quantize.int8 import Int8Linear

SCHEMES = ("int8", "int4")


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str, group_size: int = 128, include_output: bool = True) -> nn.Module:
    """Swap every bias-free nn.Linear (the output head too unless include_output=False) in place; embeddings stay.

    int8: per-output-channel symmetric scales; int4: `group_size` input weights per scale and zero
    (halved for a layer whose input size it does not divide, e.g. 128 → 32 for stories15M's dim 288).
    A tied output head gets its own quantized copy; the embedding table keeps the float weights.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown quantization {scheme!r}; choose one of {', '.join(SCHEMES)}")
    targets = [
        (name, module) for name, module in model.named_modules()
        if type(module) is nn.Linear and (include_output or name != "output")
    ]
    for name, linear in targets:
        if linear.bias is not None:
            raise ConfigError(f"{name} has a bias; only bias-free linear layers (LLaMA's) can be quantized")
        if scheme == "int8":
            quantized = Int8Linear.from_linear(linear)
        else:
            quantized = Int4Linear.from_linear(linear, group_size_for(linear.in_features, group_size))
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, quantized)
    return model


def group_size_for(in_features: int, group_size: int) -> int:
    """The largest of group_size, group_size/2, group_size/4 ... that divides in_features (at least 2)."""
    size = group_size
    while size >= 2 and size % 2 == 0 and in_features % size != 0:
        size //= 2
    if size < 2 or in_features % size != 0:
        raise ConfigError(f"no int4 group size of the form {group_size}/2^k divides in_features={in_features}; "
                          "choose a power of two such as 32, 64 or 128")
    return size
