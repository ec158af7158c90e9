"""LoRA: low-rank adapters put from outside on chosen projections of a built model; only they train.

A projection with an adapter computes W x + (alpha / rank) · B A x with A (rank, in) and B (out, rank), its
weight W frozen under its usual state-dict name (and possibly int8 / int4: QLoRA); B starts at zero, so a
fresh adapter leaves the model unchanged. `merge_lora` folds B A into W in a state dict, `merge_adapters` in a
model. The files (PEFT's format) are `llamalab.checkpoint.peft`'s.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from llamalab.errors import ConfigError

PROJECTIONS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")


def add_adapter(module: nn.Module, rank: int, alpha: float) -> None:
    """Give a projection (nn.Linear, or an int8 / int4 layer: QLoRA) a trainable low-rank update beside its weight.

    The adapter is two parameters of the module itself (`<name>.lora_a`, `<name>.lora_b`; its weight keeps its
    name) and a forward hook adding (alpha / rank) · x Aᵀ Bᵀ to the module's output.
    """
    device = next(t for t in [*module.parameters(), *module.buffers()]).device
    module.lora_a = nn.Parameter(torch.empty(rank, module.in_features, device=device))
    module.lora_b = nn.Parameter(torch.zeros(module.out_features, rank, device=device))
    nn.init.kaiming_uniform_(module.lora_a, a=math.sqrt(5))  # as nn.Linear initialises its weight
    module.lora_scale = alpha / rank
    module.lora_hook = module.register_forward_hook(_add_low_rank_update)


def _add_low_rank_update(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    x = inputs[0]
    return output + (x @ module.lora_a.t().to(x.dtype)) @ module.lora_b.t().to(x.dtype) * module.lora_scale


def has_adapter(module: nn.Module) -> bool:
    return hasattr(module, "lora_hook")


def remove_adapter(module: nn.Module) -> None:
    """Take a projection's adapter off (its weight as it was)."""
    module.lora_hook.remove()
    del module.lora_a, module.lora_b, module.lora_hook, module.lora_scale


@torch.no_grad()
def merge_adapters(model: nn.Module) -> int:
    """Fold each nn.Linear's adapter into its weight, W + (alpha / rank) · B A; quantized layers keep theirs.

    Returns how many adapters stay unmerged (on int8 / int4 layers, whose weights cannot take the update exactly).
    """
    kept = 0
    for module in model.modules():
        if not has_adapter(module):
            continue
        if isinstance(module, nn.Linear):
            update = module.lora_b.float() @ module.lora_a.float() * module.lora_scale  # (out, in)
            module.weight.copy_((module.weight.float() + update.to(module.weight.device)).to(module.weight.dtype))
            remove_adapter(module)
        else:
            kept += 1
    return kept


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """Freeze every parameter, then put a trainable adapter on each projection whose name ends in a target."""
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown or not targets:
        raise ConfigError(f"LoRA targets {unknown or targets} not understood; choose among {', '.join(PROJECTIONS)}")
    if getattr(model.args, "tie_embeddings", False) and "output" in targets:
        raise ConfigError("the output head is tied to the embedding here; leave 'output' out of the LoRA targets")
    model.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if hasattr(module, "in_features") and name.rsplit(".", 1)[-1] in targets and not has_adapter(module):
            add_adapter(module, rank, alpha)
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
