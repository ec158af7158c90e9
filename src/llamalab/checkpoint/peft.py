"""LoRA adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`): what PEFT, vLLM
`--lora-modules` and llama.cpp's `convert_lora_to_gguf` read, and what PEFT writes for a Llama.

Tensors are named after the HF module they adapt (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`);
as for the weights themselves, the rows of B for wq / wk are in HF's half-split RoPE order.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llamalab.checkpoint.hf import FROM_HF_KEYS, HF_KEYS, half_split_to_interleaved, interleaved_to_half_split
from llamalab.checkpoint.keys import rename
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError
from llamalab.files import atomic_output
from llamalab.model.lora import adapter_state, apply_lora, merge_adapters

ADAPTER_FILE, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"  # PEFT's file names
PEFT_PREFIX = "base_model.model."  # PEFT's names: the wrapper, then LlamaForCausalLM's own module names
PEFT_PART = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight"}
PEFT_TARGETS = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "w1": "gate_proj", "w2": "down_proj",
                "w3": "up_proj", "output": "lm_head"}
_PEFT_KEY = re.compile(re.escape(PEFT_PREFIX) + r"(.+)\.lora_([AB])(?:\.default)?\.weight")


def save_adapters(state: dict[str, torch.Tensor], folder: str | Path, args: ModelArgs, targets: list[str],
                  rank: int, alpha: float, base_model: str | None = None) -> Path:
    """Write the adapters of a state dict in PEFT's format (what PEFT, vLLM and llama.cpp read) into a new folder.

    `adapter_model.safetensors` holds `base_model.model.<HF module>.lora_A.weight` / `lora_B.weight`; the B of
    wq / wk has its rows in HF's half-split RoPE order, as the HF q_proj / k_proj it adds to.
    """
    tensors = {}
    for key, tensor in adapter_state(state).items():
        name, part = key.rsplit(".", 1)  # ("layers.0.attention.wq", "lora_b")
        if part == "lora_b":
            tensor = _permute_rows(name, tensor, args, interleaved_to_half_split)
        tensors[f"{PEFT_PREFIX}{_hf_module(name)}.{PEFT_PART[part]}"] = tensor.contiguous().cpu()
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "revision": None,
        "inference_mode": True, "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": sorted(PEFT_TARGETS[t] for t in targets), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    with atomic_output(folder, folder=True) as tmp:
        save_file(tensors, tmp / ADAPTER_FILE, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return Path(folder)


def read_adapters(folder: str | Path, args: ModelArgs) -> tuple[dict[str, torch.Tensor], list[str], int, float]:
    """(our-named adapter tensors, targets, rank, scale) of a PEFT LoRA adapter folder made for a Llama of `args`."""
    folder = Path(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        stored = load_file(folder / ADAPTER_FILE)
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(
            f"{folder}: not a PEFT LoRA adapter folder ({ADAPTER_CONFIG} + {ADAPTER_FILE}): {e}") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA" or "r" not in config:
        raise CheckpointError(f"{folder}: {ADAPTER_CONFIG} is not a PEFT LoRA config (peft_type LORA, r, lora_alpha)")
    unsupported = [k for k in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform")
                   if config.get(k)] + (["bias"] if config.get("bias", "none") != "none" else [])
    if unsupported:
        raise CheckpointError(f"{folder}: this adapter uses {', '.join(unsupported)}, which llamalab does not apply; "
                              "merge it with PEFT and load the merged model instead")
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", 8))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = {}
    for key, tensor in stored.items():
        match = _PEFT_KEY.fullmatch(key)
        name = rename(f"{match.group(1)}.weight", FROM_HF_KEYS) if match else None
        if name is None:
            raise CheckpointError(f"{folder}: adapter tensor {key!r} is not a LoRA matrix of a Llama projection")
        name, part = name.removesuffix(".weight"), "lora_a" if match.group(2) == "A" else "lora_b"
        if part == "lora_b":
            try:
                tensor = _permute_rows(name, tensor, args, half_split_to_interleaved)
            except RuntimeError:
                raise CheckpointError(f"{folder}: adapter {key} has shape {tuple(tensor.shape)}, which does not fit "
                                      "this model's heads; load it on the model it was trained on") from None
        tensors[f"{name}.{part}"] = tensor
    targets = sorted({k.rsplit(".", 2)[-2] for k in tensors})
    return tensors, targets, rank, scale


def load_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Put the LoRA adapters of a PEFT adapter folder (ours or made with PEFT) on a model of the same shape."""
    tensors, targets, rank, scale = read_adapters(folder, model.args)
    apply_lora(model, targets, rank, alpha=scale * rank)
    expected = adapter_state(model.state_dict())
    missing = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{folder}: adapters for {missing[0]}, which this model lacks; "
                              "load them on the model they were trained on")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{folder}: adapter {name} has shape {tuple(tensor.shape)}, the model needs "
                                  f"{tuple(expected[name].shape)}; load them on the model they were trained on")
    model.load_state_dict(tensors, strict=False)  # a projection the file lacks keeps B = 0: no change
    return model


def merge_adapter_state(state: dict[str, torch.Tensor], args: ModelArgs, folder: str | Path) -> dict[str, torch.Tensor]:
    """Meta-named weights with a PEFT adapter folder folded in, W + scale · B A (for `convert --lora`)."""
    tensors, _, rank, scale = read_adapters(folder, args)
    merged = dict(state)
    for key, a in tensors.items():
        if not key.endswith(".lora_a"):
            continue
        name = key.removesuffix(".lora_a")
        weight = merged.get(f"{name}.weight")
        if weight is None or weight.shape != (tensors[f"{name}.lora_b"].shape[0], a.shape[1]):
            raise CheckpointError(f"{folder}: adapter {name} does not fit this model's weights; "
                                  "merge it into the model it was trained on")
        update = tensors[f"{name}.lora_b"].float() @ a.float() * scale  # (out, in)
        merged[f"{name}.weight"] = (weight.float() + update).to(weight.dtype)
    return merged


def apply_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """The model with a PEFT adapter folded into its weights (kept beside int8 / int4 weights): `--lora ADAPTER`."""
    merge_adapters(load_adapters(model, folder))
    return model


def _hf_module(name: str) -> str:
    """`layers.0.attention.wq` -> `model.layers.0.self_attn.q_proj` (the HF module a LoRA pair belongs to)."""
    return rename(f"{name}.weight", HF_KEYS).removesuffix(".weight")


def _permute_rows(name: str, b: torch.Tensor, args: ModelArgs, permute) -> torch.Tensor:
    """B of wq / wk with its rows in the other RoPE layout (per query / key-value head); other B unchanged."""
    if name.endswith("attention.wq"):
        return permute(b, args.n_heads)
    if name.endswith("attention.wk"):
        return permute(b, args.kv_heads)
    return b
