"""Sharded training snapshots through `torch.distributed.checkpoint` (DCP): each process writes its own shards of
the model and optimizer, nothing is gathered, and a run resumes at another process count or layout (FSDP2 4 → 2,
FSDP2 × TP → DDP): DCP stores every tensor's global shape and reshards it on load.

A snapshot is a folder `step_NNNNNNN/`: DCP's `.metadata` and `__R_0.distcp` files (one per writing process)
plus `run.pt`, the plain state rank 0 saves (step, scheduler, scaler, data position, settings, ModelArgs, each
process's random state). It is written as `step_NNNNNNN.partial/` and renamed once complete.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.utils._pytree import tree_map

from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError
from llamalab.model import Transformer
from llamalab.model.lora import apply_lora, merge_adapters
from llamalab.train.snapshots import gather_objects, rng_state, set_rng_state

RUN_FILE = "run.pt"
_NAME = re.compile(r"step_(\d{7})")


def snapshot_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:07d}"


def sharded_steps(folder: Path) -> list[int]:
    """Steps of the complete sharded snapshots in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir()
                  if (m := _NAME.fullmatch(p.name)) and (p / RUN_FILE).is_file())


def is_sharded_snapshot(path: str | Path) -> bool:
    return (Path(path) / ".metadata").is_file() and (Path(path) / RUN_FILE).is_file()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class PendingSnapshot:
    """A snapshot being written in the background (`save_sharded(..., background=...)`); `wait` completes it."""

    def __init__(self, future, finish):
        self.future, self.finish = future, finish

    def wait(self) -> Path:
        self.future.result()  # this process's shards (and, on rank 0, the metadata) are on disk
        return self.finish()


def save_sharded(folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any],
                 keep_last: int, background: dist.ProcessGroup | bool | None = None) -> Path | PendingSnapshot:
    """Write the snapshot of `step` (every process calls this and writes its shards); keep the newest keep_last.

    `background`: write asynchronously (a copy of the state is taken first, so training goes on) and return a
    PendingSnapshot to `wait` on before the next save; under torchrun pass a gloo process group of its own
    (`dist.new_group(backend="gloo")`), which the writing thread's collectives use.
    """
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    final = snapshot_path(folder, step)
    partial = final.with_name(final.name + ".partial")
    if rank0:
        shutil.rmtree(partial, ignore_errors=True)  # left by a save killed midway
        partial.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)  # this process's shards (DTensors), no gather
    run = {"step": step, "rng": gather_objects(rng_state()), **extra}

    def finish() -> Path:
        if rank0:
            torch.save(run, partial / RUN_FILE)
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in sharded_steps(folder)[:-keep_last] if keep_last else []:
                shutil.rmtree(snapshot_path(folder, old), ignore_errors=True)
        return final

    state = {"model": model_state, "optimizer": optim_state}
    solo = not dist.is_initialized()
    try:
        if background:
            copy = tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, state)
            group = background if isinstance(background, dist.ProcessGroup) else None
            return PendingSnapshot(dcp.async_save(copy, checkpoint_id=partial, process_group=group, no_dist=solo),
                                   finish)
        dcp.save(state, checkpoint_id=partial, no_dist=solo)
        finish()
    except OSError as e:
        raise CheckpointError(f"could not write the sharded checkpoint {final} ({e.strerror or e}); "
                              "free some disk space, then continue with --resume") from None
    _barrier()
    return final


def read_run_state(path: Path) -> dict[str, Any]:
    """The plain state (`run.pt`) of a sharded snapshot."""
    try:
        return torch.load(Path(path) / RUN_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable sharded training checkpoint ({e})") from None


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a snapshot into this process's model and optimizer, in their current layout; return the plain state.

    The random state is this rank's when the process count is unchanged (an exact resume), else rank 0's.
    """
    run = read_run_state(path)
    model_state, optim_state = get_state_dict(model, optimizer)  # the layout to fill (the optimizer state created)
    state = {"model": model_state, "optimizer": optim_state}
    try:
        dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    set_rng_state(run["rng"][rank] if len(run["rng"]) == (dist.get_world_size() if dist.is_initialized() else 1)
                  else run["rng"][0])
    return run


def read_sharded_weights(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """ModelArgs and full Meta-named weights of a sharded snapshot, read in one process (for `convert`).

    LoRA adapters in the snapshot are folded into their weights.
    """
    path = Path(path)
    run = read_run_state(path)
    args = ModelArgs.from_dict(run["model_args"])
    config = run.get("config", {})
    with torch.device("cpu"):
        model = Transformer(args)
    if config.get("lora_rank"):
        apply_lora(model, config["lora_targets"], config["lora_rank"], config["lora_alpha"])
    state = {"model": model.state_dict()}
    try:
        dcp.load(state, checkpoint_id=path, no_dist=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot read the sharded weights ({e})") from None
    model.load_state_dict(state["model"])
    merge_adapters(model)
    weights = model.state_dict()
    if args.tie_embeddings:
        weights.pop("output.weight", None)
    return args, weights


def convert_snapshot(src: str | Path, dst: str | Path, format: str, dtype: torch.dtype | str | None = None,
                     shards: int = 1, tokenizer: str | Path | None = None, show_progress: bool = False,
                     lora: str | Path | None = None, **options) -> Path:
    """`checkpoint.convert` for a sharded training snapshot (`step_N/`), gathered in this process; its run's tokenizer
    goes along unless `tokenizer` is given; `lora`: an adapter folder merged into the weights."""
    from llamalab.checkpoint import write
    from llamalab.checkpoint.peft import merge_adapter_state

    args, state = read_sharded_weights(src)
    if lora is not None:
        state = merge_adapter_state(state, args, lora)
    tokenizer = tokenizer if tokenizer is not None else snapshot_tokenizer(src)
    return write(state, args, dst, format, dtype, shards, tokenizer, show_progress, **options)


def snapshot_tokenizer(path: str | Path) -> Path | None:
    """The tokenizer of the run that wrote a sharded snapshot (beside its data or its starting model) if still there."""
    from llamalab.checkpoint import find_tokenizer
    from llamalab.data.chat import is_chat_file
    from llamalab.train.batches import TokenData

    config = read_run_state(Path(path)).get("config", {})
    data = config.get("data") or ""
    if data and not is_chat_file(data) and (Path(data) / "meta.json").is_file():
        return TokenData(data).tokenizer_path
    return find_tokenizer(config["init_from"]) if config.get("init_from") else None
