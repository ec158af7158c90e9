"""A training run as `llamalab train` makes it: the process joined to torchrun's group (or not) on its device and
seeded, then, after `Trainer.fit`, the trained model (or its LoRA adapters) saved and a sample written."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from llamalab.errors import ConfigError
from llamalab.parallel.mesh import init_distributed
from llamalab.train.config import TrainConfig
from llamalab.train.trainer import Trainer


def setup_process(cfg: TrainConfig) -> torch.device:
    """Join torchrun's process group when there is one, pick the device (cfg.device "auto": cuda if any), seed torch."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = init_distributed()
    elif cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device}: no CUDA device here; use --device cpu")
    torch.manual_seed(cfg.seed)
    return device


def save_results(trainer: Trainer, cfg: TrainConfig, summary: dict) -> dict:
    """After a finished fit: the model saved in OUT_DIR/model (LoRA without merge: OUT_DIR/adapters) and a sample,
    added to the fit's summary."""
    name = "adapters" if cfg.lora_rank and not cfg.merge else "model"
    summary["model"] = trainer.save_model(Path(cfg.out_dir) / name)
    summary["sample"] = trainer.sample()
    return summary
