"""Run a function in N local processes joined in a gloo process group, as torchrun would launch them."""
from __future__ import annotations

import os
import socket
import tempfile
import time

import torch
import torch._dynamo  # noqa: F401  (DTensor imports it lazily: import once here, not in every forked rank)
import torch.distributed as dist
import torch.multiprocessing as mp


def run_ranks(fn, world_size: int, *args, timeout: float = 120.0) -> list:
    """fn(*args) on ranks 0..world_size-1 (RANK/WORLD_SIZE/LOCAL_RANK set); each rank's return value.

    The ranks are forked (they start at once, with everything imported), unless this process has
    started CUDA, which a forked child cannot use: then they are spawned.
    """
    start_method = "spawn" if torch.cuda.is_initialized() else "fork"
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(_rank_main, args=(world_size, _free_port(), tmp, fn, args),
                                     nprocs=world_size, join=False, start_method=start_method)
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"{world_size} ranks did not finish in {timeout:.0f} s")
        return [torch.load(os.path.join(tmp, f"{rank}.pt"), weights_only=True) for rank in range(world_size)]


def _rank_main(rank: int, world_size: int, port: int, tmp: str, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.save(fn(*args), os.path.join(tmp, f"{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
