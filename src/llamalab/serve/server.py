"""A loaded model behind the OpenAI-compatible API: the scheduler, the app, and uvicorn to run them."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import uvicorn
from fastapi import FastAPI

from llamalab.analysis.serving import ServingPlan, serving_plan
from llamalab.errors import ConfigError, TokenizerError
from llamalab.inference import LoadedModel
from llamalab.serve.app import create_app
from llamalab.serve.calls import LockstepCalls, follow
from llamalab.serve.scheduler import Scheduler

DEFAULT_MAX_SEQ_LEN = 4096  # context per request unless asked otherwise (a 128k cache per slot is huge)
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
# prompt tokens a step prefills beside the decoding requests, in the same forward pass. On a GPU a step of a few
# hundred tokens costs about what a decode step does; on a CPU each token costs its arithmetic, and 32 tokens keep
# a step within ~2x a decode step of 8 rows (stories15M: 1.9x; bench/serve.py measures the latencies)
DEFAULT_PREFILL_CHUNK = {"cuda": 512, "cpu": 32}
KV_CACHES = ("paged", "fixed")


@dataclass
class Server:
    """The app (FastAPI) and the scheduler it submits requests to."""

    app: FastAPI
    scheduler: Scheduler
    plan: ServingPlan | None = None  # the paged cache's memory plan (None: fixed slots)

    @property
    def cache_bytes(self) -> int:
        """Bytes of the KV cache the scheduler allocated for its slots."""
        return self.scheduler.model.kv_cache.nbytes

    def run(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serve on host:port until interrupted."""
        uvicorn.run(self.app, host=host, port=port, log_level="warning")


def create_server(loaded: LoadedModel, name: str, *, slots: int = 32, max_seq_len: int | None = None,
                  max_waiting: int = 256, api_key: str | None = None,
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, kv_cache: str | None = None,
                  kv_cache_memory: float | None = None, prefill_chunk: int | str | None = "auto",
                  prefix_caching: bool | None = None) -> Server | None:
    """The server of a loaded model (which needs a tokenizer); `name` is the model id clients see.

    `kv_cache` "paged" (the default, but for tp > 1): a paged KV cache shared by the `slots` rows as they need it,
    of `kv_cache_memory` bytes (below 1: that fraction of the device's free memory; None: `serving_plan`'s
    default), with prefix caching unless `prefix_caching` is False. "fixed": every slot preallocated to
    max_seq_len positions (the engine before paging; the only one with tensor parallelism).
    `prefill_chunk`: prompt tokens each step prefills beside the decoding requests, in their forward pass (or
    generate.engine.PROMPT_TOKENS_PER_ROW per decoding request when that is more; "auto":
    DEFAULT_PREFILL_CHUNK of the device; None: each prompt whole when admitted).

    For a model split over tp > 1 ranks: rank 0 gets the server, and every other rank repeats rank 0's model
    calls until the server stops, then gets None.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    if tokenizer is None:
        raise TokenizerError("a server needs the model's tokenizer and none was found beside it; load one with it")
    kv_cache = kv_cache or ("paged" if loaded.tp == 1 else "fixed")
    if kv_cache not in KV_CACHES:
        raise ConfigError(f"unknown KV cache {kv_cache!r}; choose one of: {', '.join(KV_CACHES)}")
    if kv_cache == "paged" and loaded.tp > 1:
        raise ConfigError("a paged KV cache does not work with --tp yet; use --kv-cache fixed")
    if kv_cache == "fixed" and (kv_cache_memory is not None or prefix_caching):
        raise ConfigError("--kv-cache-memory and --prefix-caching need the paged KV cache; drop --kv-cache fixed")
    max_seq_len = max_seq_len or min(model.args.max_seq_len, DEFAULT_MAX_SEQ_LEN)
    if loaded.tp > 1 and not loaded.main_process:
        follow(model, slots, max_seq_len)
        return None
    if prefill_chunk == "auto":
        prefill_chunk = DEFAULT_PREFILL_CHUNK["cuda" if model.device.type == "cuda" else "cpu"]
    plan = None
    if kv_cache == "paged":
        plan = plan_cache(model, slots, max_seq_len, kv_cache_memory)
        if slots > plan.blocks:
            raise ConfigError(f"--slots {slots}: the KV cache holds {plan.blocks} blocks of {plan.block_size} "
                              "positions, so no more requests than that can run at once; ask for fewer slots or more "
                              "memory (--kv-cache-memory)")
    elif loaded.tp == 1:
        check_cache_fits(model, slots, max_seq_len)
    scheduler = Scheduler(model, slots=slots, max_waiting=max_waiting, max_seq_len=max_seq_len,
                          vocab_size=min(tokenizer.vocab_size, model.args.vocab_size),
                          calls=LockstepCalls(model) if loaded.tp > 1 else None,
                          kv_cache_bytes=None if plan is None else plan.blocks * plan.block_size *
                          model.kv_bytes_per_token(), block_size=16 if plan is None else plan.block_size,
                          prefill_chunk=prefill_chunk, prefix_caching=prefix_caching is not False,
                          step=loaded.decode_step() if loaded.tp == 1 and not loaded.compiled else None)  # C on CPU
    app = create_app(scheduler, tokenizer, name, api_key=api_key, max_body_bytes=max_body_bytes)
    return Server(app, scheduler, plan)


def plan_cache(model, slots: int, max_seq_len: int, kv_cache_memory: float | None) -> ServingPlan:
    """The paged cache's plan from the loaded model and its device's free memory (see `serving_plan`)."""
    model.clear_cache()  # the scheduler sets up its own; what is left is the weights
    weights = sum(t.nbytes for t in model.parameters()) + sum(t.nbytes for t in model.buffers())
    free = _free_memory(model)
    cache_bytes = None
    if kv_cache_memory is not None:
        cache_bytes = int(kv_cache_memory if kv_cache_memory >= 1 else kv_cache_memory * free)
        if cache_bytes > free:
            raise ConfigError(f"--kv-cache-memory asks for {cache_bytes / 2**30:.1f} GiB, more than the "
                              f"{free / 2**30:.1f} GiB free on {model.device}; ask for less")
    return serving_plan(model.args, weights_bytes=weights, free_bytes=free, slots=slots, max_seq_len=max_seq_len,
                        kv_bytes_per_token=model.kv_bytes_per_token(), device_type=model.device.type,
                        cache_bytes=cache_bytes)


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
