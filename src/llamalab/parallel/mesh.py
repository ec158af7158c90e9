"""Process-group and device-mesh setup from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
from __future__ import annotations

import os
import secrets

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from llamalab.errors import ConfigError


def init_distributed(device_type: str | None = None) -> torch.device:
    """Join the torchrun process group once (NCCL on CUDA, gloo on CPU); return this rank's device.

    device_type None picks CUDA when there is one; each rank then uses GPU LOCAL_RANK of its node.
    """
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_type)
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ConfigError("no torchrun environment (RANK, WORLD_SIZE): "
                              "launch with `torchrun --nproc-per-node N ...`")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def make_mesh(tp: int = 1, dp_shard: int = 1, device_type: str | None = None) -> DeviceMesh:
    """The (dp_shard, tp) device mesh over every rank; tp is the inner dimension (neighbouring ranks, one node)."""
    device = init_distributed(device_type)
    world_size = dist.get_world_size()
    if tp < 1 or dp_shard < 1 or tp * dp_shard != world_size:
        raise ConfigError(
            f"data-parallel {dp_shard} x tensor-parallel {tp} needs {dp_shard * tp} processes, not the {world_size} "
            f"torchrun started; launch `torchrun --nproc-per-node {dp_shard * tp} ...` or change the sizes"
        )
    return init_device_mesh(device.type, (dp_shard, tp), mesh_dim_names=("dp_shard", "tp"))


def is_main_process() -> bool:
    """True on rank 0 or when not distributed: the one process that prints and writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def shared_seed(seed: int | None) -> int:
    """The seed every rank samples with: `seed` when given, else one rank 0 draws from OS entropy and sends to all
    (torch's default seed is the same everywhere, so it would not vary between runs)."""
    if seed is not None:
        return seed
    chosen = [secrets.randbits(31) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    return chosen[0]
