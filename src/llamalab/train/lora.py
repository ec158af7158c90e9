"""LoRA: low-rank adapters added from outside to chosen projections of a built model; only they train.

A `LoRALinear` is the original `nn.Linear` (same weight, frozen, same state-dict name) plus
W' = W + (alpha / rank) · B A with A (rank, in) and B (out, rank); B starts at zero, so a fresh
adapter leaves the model unchanged. `merge_lora` folds B A into W in a state dict.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llamalab.errors import CheckpointError, ConfigError
from llamalab.files import atomic_output

PROJECTIONS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")
ADAPTER_FILE, ADAPTER_CONFIG = "adapters.safetensors", "adapter_config.json"


class LoRALinear(nn.Linear):
    """A Linear with a trainable low-rank update beside its frozen weight."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # shared, not copied: the state-dict name stays `<name>.weight`
        self.weight.requires_grad_(False)
        self.bias = base.bias
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype) * self.scale


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """Freeze every parameter, then put a trainable adapter on each Linear whose name ends in a target."""
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown or not targets:
        raise ConfigError(f"LoRA targets {unknown or targets} not understood; choose among {', '.join(PROJECTIONS)}")
    if getattr(model.args, "tie_embeddings", False) and "output" in targets:
        raise ConfigError("the output head is tied to the embedding here; leave 'output' out of the LoRA targets")
    model.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, LoRALinear(module, rank, alpha))
    return model


def merge_lora(state: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """A state dict with each adapter folded into its weight, W + (alpha / rank) · B A, and no adapter tensors left."""
    merged = {k: v for k, v in state.items() if not k.endswith((".lora_a", ".lora_b"))}
    for key in state:
        if key.endswith(".lora_a"):
            name = key.removesuffix(".lora_a")
            weight = merged[f"{name}.weight"]
            update = state[f"{name}.lora_b"].float() @ state[key].float() * (alpha / rank)  # (out, in)
            merged[f"{name}.weight"] = (weight.float() + update).to(weight.dtype)
    return merged


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the adapter tensors of a state dict, under names like `layers.0.attention.wq.lora_a`."""
    return {k: v for k, v in state.items() if k.endswith((".lora_a", ".lora_b"))}


def save_adapters(state: dict[str, torch.Tensor], folder: str | Path, targets: list[str], rank: int,
                  alpha: float) -> Path:
    """Write the adapters of a state dict (safetensors) and their settings (JSON) into a new folder, atomically."""
    with atomic_output(folder, folder=True) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in adapter_state(state).items()}, tmp / ADAPTER_FILE)
        config = {"rank": rank, "alpha": alpha, "targets": list(targets)}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return Path(folder)


def load_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Put the adapters saved in `folder` on a model of the same shape (as `save_adapters` left them)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(folder / ADAPTER_FILE)
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"{folder}: not a LoRA adapter folder ({e})") from None
    apply_lora(model, config["targets"], config["rank"], config["alpha"])
    expected = adapter_state(model.state_dict())
    if set(tensors) != set(expected):
        raise CheckpointError(f"{folder}: adapters do not match this model's projections; "
                              "load them on the model they were trained on")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{folder}: adapter {name} has shape {tuple(tensor.shape)}, the model needs "
                                  f"{tuple(expected[name].shape)}; load them on the model they were trained on")
    model.load_state_dict(tensors, strict=False)
    return model
