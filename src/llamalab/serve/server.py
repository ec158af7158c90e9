"""A loaded model behind the OpenAI-compatible API: the scheduler, the app, and uvicorn to run them."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import uvicorn
from fastapi import FastAPI

from llamalab.errors import ConfigError, TokenizerError
from llamalab.inference import LoadedModel
from llamalab.serve.app import create_app
from llamalab.serve.calls import LockstepCalls, follow
from llamalab.serve.scheduler import Scheduler

DEFAULT_MAX_SEQ_LEN = 4096  # context per request unless asked otherwise (a 128k cache per slot is huge)
DEFAULT_MAX_BODY_BYTES = 4 * 2**20


@dataclass
class Server:
    """The app (FastAPI) and the scheduler it submits requests to."""

    app: FastAPI
    scheduler: Scheduler

    @property
    def cache_bytes(self) -> int:
        """Bytes of the KV cache the scheduler allocated for its slots."""
        return self.scheduler.model.kv_cache.nbytes

    def run(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serve on host:port until interrupted."""
        uvicorn.run(self.app, host=host, port=port, log_level="warning")


def create_server(loaded: LoadedModel, name: str, *, slots: int = 32, max_seq_len: int | None = None,
                  max_waiting: int = 256, api_key: str | None = None,
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, kv_cache_memory: float | None = None,
                  prefill_chunk: int | None = None) -> Server | None:
    """The server of a loaded model (which needs a tokenizer); `name` is the model id clients see.

    `kv_cache_memory` (bytes, or below 1 a fraction of the device's free memory) gives a paged KV cache of that
    size, shared by the `slots` rows as they need it; None preallocates every slot to max_seq_len positions.
    `prefill_chunk` prefills longer prompts that many tokens per step, beside the decoding requests.

    For a model split over tp > 1 ranks: rank 0 gets the server, and every other rank repeats rank 0's model
    calls until the server stops, then gets None.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    if tokenizer is None:
        raise TokenizerError("a server needs the model's tokenizer and none was found beside it; load one with it")
    max_seq_len = max_seq_len or min(model.args.max_seq_len, DEFAULT_MAX_SEQ_LEN)
    if loaded.tp > 1 and not loaded.main_process:
        follow(model, slots, max_seq_len)
        return None
    kv_cache_bytes = None
    if kv_cache_memory is not None:
        if loaded.tp > 1:
            raise ConfigError("--kv-cache-memory (a paged KV cache) does not work with --tp yet; use --slots")
        kv_cache_bytes = int(kv_cache_memory if kv_cache_memory >= 1 else kv_cache_memory * _free_memory(model))
    elif loaded.tp == 1:
        check_cache_fits(model, slots, max_seq_len)
    scheduler = Scheduler(model, slots=slots, max_waiting=max_waiting, max_seq_len=max_seq_len,
                          vocab_size=min(tokenizer.vocab_size, model.args.vocab_size),
                          calls=LockstepCalls(model) if loaded.tp > 1 else None, kv_cache_bytes=kv_cache_bytes,
                          prefill_chunk=prefill_chunk)
    app = create_app(scheduler, tokenizer, name, api_key=api_key, max_body_bytes=max_body_bytes)
    return Server(app, scheduler)


def check_cache_fits(model, slots: int, max_seq_len: int) -> None:
    """Refuse a KV cache larger than the free memory of its device: `--slots 1000000` is an error, not an OOM kill."""
    a = model.args
    element = torch.empty(0, dtype=model.norm.weight.dtype).element_size()
    needed = 2 * a.n_layers * slots * max_seq_len * a.kv_heads * a.head_dim * element  # keys and values
    device = model.norm.weight.device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _free_host_memory()
    if free is not None and needed > free:
        raise ConfigError(f"a KV cache of {slots} rows x {max_seq_len} tokens needs {needed / 2**30:.1f} GiB, more "
                          f"than the {free / 2**30:.1f} GiB free on {device}; "
                          "ask for fewer rows (--slots, --batch-size) or a shorter context")


def _free_memory(model) -> int:
    """Bytes free on the model's device (0 where unknown)."""
    device = model.device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _free_host_memory()
    return free or 0


def _free_host_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return pages * os.sysconf("SC_PAGE_SIZE") if pages else None
