"""Training snapshots (the checkpoints of a run, not `llamalab.checkpoint`'s model files): everything needed to
continue a run exactly, one file per saved step, newest N kept.

A file `step_NNNNNNN.pt` holds the full (unsharded) model and optimizer state keyed by parameter name,
the LR scheduler and gradient scaler, the step, the data position, every process's random-number
state and the run's settings. It is written under a temporary name and renamed into place, so an
interrupted or failed save leaves the previous checkpoints as they were.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from llamalab.errors import CheckpointError
from llamalab.files import atomic_output, remove_abandoned_temporaries

FORMAT_VERSION = 1
_NAME = re.compile(r"step_(\d{7})\.pt")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:07d}.pt"


def saved_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in `folder`, oldest first (temporary files are not complete)."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name)))


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch random-number state (CPU, and CUDA when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_objects(obj: Any) -> list[Any]:
    """obj of every process, in rank order (just [obj] when not distributed)."""
    if not dist.is_initialized():
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def save_checkpoint(folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any], keep_last: int) -> Path | None:
    """Write the checkpoint of `step` (every process calls this; rank 0 writes) and drop all but the newest keep_last.

    `extra` holds the plain state of the run (scheduler, scaler, data position, settings). Returns the
    path on rank 0, None elsewhere. A failed write raises CheckpointError and leaves older files intact.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    rng = gather_objects(rng_state())
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    path = checkpoint_path(folder, step)
    remove_abandoned_temporaries(folder)  # what a save killed midway left behind
    state = {"format_version": FORMAT_VERSION, "step": step, "model": model_state, "optimizer": optim_state,
             "rng": rng, **extra}
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__  # torch.save wraps the OSError of a failed write
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(e)
        previous = saved_steps(folder)
        kept = f"the checkpoint of step {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {path} ({reason}); {kept}. "
                              "Free some disk space, then continue with --resume") from None
    for old in saved_steps(folder)[:-keep_last] if keep_last else []:
        checkpoint_path(folder, old).unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The saved state of a checkpoint file (tensors on the CPU; no code is run)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: not a readable training checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a llamalab training checkpoint of version {FORMAT_VERSION}")
    return state


def load_newest_checkpoint(folder: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The state of the newest readable checkpoint in `folder` (None when there is none); an unreadable newer one
    is skipped with a warning, so that a crash mid-write of the disk costs one save interval, not the run."""
    steps = saved_steps(folder)
    for step in reversed(steps):
        try:
            return load_checkpoint(checkpoint_path(folder, step))
        except CheckpointError as e:
            older = "trying the one before" if step != steps[0] else "no older one is left"
            warn(f"warning: skipping the unreadable checkpoint of step {step} ({e}); {older}")
    if steps:
        raise CheckpointError(f"no checkpoint in {folder} is readable; start afresh in another --out-dir")
    return None


def restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Put the saved model and optimizer state, and this process's random state, back into place."""
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    rank = dist.get_rank() if dist.is_initialized() else 0
    if len(state["rng"]) != (dist.get_world_size() if dist.is_initialized() else 1):
        raise CheckpointError(f"the checkpoint was written by {len(state['rng'])} process(es); "
                              "resume with the same number of processes")
    set_rng_state(state["rng"][rank])
