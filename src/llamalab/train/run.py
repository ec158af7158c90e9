"""A training run as `llamalab train` makes it, in one call: `train(cfg)` joins torchrun's group (or not), picks the
device and seeds, builds the trainer, fits, then saves the trained model (or its LoRA adapters) and writes a sample."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from llamalab.errors import ConfigError
from llamalab.parallel.mesh import init_distributed
from llamalab.train.config import TrainConfig
from llamalab.train.trainer import Trainer, build_trainer

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what `kill`, schedulers and containers send


def train(cfg: TrainConfig, *, stop_on_signals: bool = False, allow_tf32: bool = False) -> dict | None:
    """Train as the config says and save the result; rank 0 returns the run's summary (other ranks None).

    The summary holds the step, losses, `interrupted`, the loss-curve PNG (`plot`), the saved model folder
    (`model`: OUT_DIR/model, or OUT_DIR/adapters for LoRA without merge) and the sample text (`sample`).
    stop_on_signals: the first Ctrl-C / SIGTERM saves a checkpoint and stops after the current step (a second
    aborts); allow_tf32: TF32 matmuls on CUDA. Both are process-wide settings; `llamalab train` turns them on.
    """
    device = setup_process(cfg, allow_tf32)
    try:
        trainer = build_trainer(cfg, device)
        if trainer.is_main:
            print(describe(trainer), flush=True)
        stopping = stop_on_ctrl_c(trainer, trainer.is_main) if stop_on_signals else contextlib.nullcontext()
        with stopping:
            summary = trainer.fit()
        if not summary["interrupted"]:
            save_results(trainer, cfg, summary)
        return summary if trainer.is_main else None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def setup_process(cfg: TrainConfig, allow_tf32: bool = False) -> torch.device:
    """Join torchrun's process group when there is one, pick the device (cfg.device "auto": cuda if any), seed torch;
    allow_tf32: TF32 matmuls on CUDA (a process-wide setting)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = init_distributed()
    elif cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device}: no CUDA device here; use --device cpu")
    if allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    return device


def describe(trainer: Trainer) -> str:
    """The run in one line: parameters (trained), tokens a step, steps, device, processes and layout, precision."""
    cfg, params = trainer.cfg, list(trainer.model.parameters())
    n_params, n_trained = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    layout = f"fsdp {trainer.world // cfg.tp} x tp {cfg.tp}" if cfg.tp > 1 else cfg.parallel
    processes = f" x {trainer.world} processes ({layout})" if trainer.world > 1 else ""
    precision = "float32" if trainer.dtype == "float32" else f"{trainer.dtype} autocast, float32 weights"
    return (f"model: {n_params / 1e6:.2f} M parameters ({n_trained / 1e6:.2f} M trained), {trainer.global_batch} x "
            f"{cfg.seq_len} tokens a step, {cfg.max_steps} steps on {trainer.device}{processes}; {precision}")


def save_results(trainer: Trainer, cfg: TrainConfig, summary: dict) -> dict:
    """After a finished fit: the model saved in OUT_DIR/model (LoRA without merge: OUT_DIR/adapters) and a sample,
    added to the fit's summary."""
    name = "adapters" if cfg.lora_rank and not cfg.merge else "model"
    summary["model"] = trainer.save_model(Path(cfg.out_dir) / name)
    summary["sample"] = trainer.sample()
    return summary


@contextlib.contextmanager
def stop_on_ctrl_c(trainer: Trainer, announce: bool = True):
    """The first Ctrl-C (or SIGTERM) asks the trainer to save and stop after its current step; a second aborts.
    Signal handlers belong to the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        if announce:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: saving a checkpoint after this step (send it again to abort without saving)",
                  file=sys.stderr)
        trainer.request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def steps_that_fit(cfg: TrainConfig, seconds: float, at_least: int = 300, at_most: int = 3000,
                   probe_steps: int = 5) -> int:
    """How many steps of this run take about `seconds` on this machine (within [at_least, at_most]), from the median
    of `probe_steps` steps timed on a throwaway trainer (5 % left for the validation passes)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = build_trainer(dataclasses.replace(cfg, out_dir=tmp), setup_process(cfg))
        probe.train_step()  # warm-up
        times = []
        for _ in range(probe_steps):
            start = time.perf_counter()
            probe.train_step()
            times.append(time.perf_counter() - start)
        per_step = statistics.median(times)  # one step slowed by another program does not count
    return int(min(at_most, max(at_least, seconds / (per_step * 1.05))))
