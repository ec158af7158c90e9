"""Building what a run trains, step by step, so that a caller can change the model between the steps:
the model (fresh or loaded), tensor parallelism, LoRA adapters, activation checkpointing, then data-parallel
wrapping."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.nn.parallel import DistributedDataParallel

from llamalab import checkpoint
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError, DataError
from llamalab.model import Transformer
from llamalab.model.lora import apply_lora
from llamalab.train.config import TrainConfig


def model_args(cfg: TrainConfig, vocab_size: int) -> ModelArgs:
    """The ModelArgs of a fresh model: the preset, then the config's model fields; vocab from the data."""
    fields = {"vocab_size": vocab_size, "max_seq_len": cfg.seq_len, **cfg.model}
    if cfg.preset is not None:
        return ModelArgs.from_preset(cfg.preset, **fields)
    if not cfg.model:
        raise ConfigError("no model given: choose a --preset, model fields (--dim, --n-layers, ...) or --init-from")
    return ModelArgs.from_dict(fields)


def build_model(cfg: TrainConfig, vocab_size: int, device: torch.device) -> Transformer:
    """The model a run starts from: loaded from `init_from` (fine-tuning), else freshly initialised.

    A preset's max_seq_len is kept; otherwise the model's context is the training sequence length.
    """
    if cfg.init_from is not None:
        model = checkpoint.load(cfg.init_from, device=device, dtype=torch.float32, keep_quantized=cfg.qlora == "keep")
        overrides = {k: v for k, v in cfg.model.items() if getattr(model.args, k) != v}
        if set(overrides) - {"dropout", "max_seq_len"}:
            raise ConfigError(f"a loaded model keeps its shape, so {sorted(overrides)} cannot change; "
                              "only dropout and max_seq_len can")
        if overrides:
            model.args = model.args.replace(**overrides)
            _set_dropout(model, model.args.dropout)
            model.init_rope()
        model.train()
        check_fits(model.args, cfg, vocab_size)
    else:
        args = model_args(cfg, vocab_size)
        if cfg.preset is not None and "max_seq_len" not in cfg.model:
            args = args.replace(max_seq_len=ModelArgs.from_preset(cfg.preset).max_seq_len)
        check_fits(args, cfg, vocab_size)
        with torch.device(device):
            model = Transformer(args)
    return model


def check_fits(args: ModelArgs, cfg: TrainConfig, vocab_size: int) -> None:
    """Raise unless the data's token ids and the training sequences fit the model."""
    if vocab_size > args.vocab_size:
        raise DataError(
            f"the data was tokenized with a vocabulary of {vocab_size} ids but the model has vocab_size="
            f"{args.vocab_size}; prepare the data with the model's tokenizer or build the model with "
            f"vocab_size={vocab_size}"
        )
    if cfg.seq_len > args.max_seq_len:
        raise ConfigError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={args.max_seq_len}; "
                          "train on shorter sequences or raise max_seq_len")
    if cfg.tp > 1:
        from llamalab.parallel import check_tp_size

        check_tp_size(args, cfg.tp, training=True)


def _set_dropout(model: nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if hasattr(module, "dropout_p"):
            module.dropout_p = p


def prepare_model(model: Transformer, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """FSDP2 x TP (with --tp), LoRA adapters, activation checkpointing, DDP or FSDP2 under torchrun, torch.compile.

    Returns the module to train: the model itself, or its DistributedDataParallel wrapper.
    """
    from llamalab.parallel import apply_fsdp, apply_fsdp_tp, make_mesh  # DTensor: ~2 s to import, only when used

    world = dist.get_world_size() if dist.is_initialized() else 1
    if cfg.tp > 1:  # before LoRA and checkpoint wrappers rename the modules the TP plan names
        apply_fsdp_tp(model, make_mesh(tp=cfg.tp, dp_shard=cfg.dp_shard or max(1, world // cfg.tp)), loss_parallel=True)
    if cfg.qlora in ("int8", "int4"):
        from llamalab.quantize import quantize_model

        quantize_model(model, cfg.qlora, include_output=not model.args.tie_embeddings)
    if cfg.lora_rank:
        apply_lora(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha)
    if cfg.activation_checkpointing:
        for i, block in enumerate(model.layers):
            model.layers[i] = checkpoint_wrapper(block)  # its state-dict names are unchanged
    module: nn.Module = model
    if world > 1 and cfg.tp == 1:
        if cfg.parallel == "fsdp":
            apply_fsdp(model, make_mesh(dp_shard=world)["dp_shard"])
        else:
            module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        module.compile()
    return module


def unwrap(model: nn.Module) -> Transformer:
    """The Transformer inside a DistributedDataParallel wrapper (FSDP2 shards the model in place)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
