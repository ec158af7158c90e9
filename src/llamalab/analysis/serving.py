"""How a server splits a device's memory: the weights, a paged KV cache sized from what is left, and workspace.

`serving_plan` is arithmetic only (no allocation): the server calls it with the loaded model's numbers and the
device's free memory, and a test calls it with a preset's numbers to show that Llama 2 7B starts on an 80 GB card.
"""
from __future__ import annotations

from dataclasses import dataclass

from llamalab.config import ModelArgs
from llamalab.errors import ConfigError

GPU_CACHE_FRACTION = 0.9  # of the device memory left once weights and workspace are counted
CPU_CACHE_FRACTION = 0.25  # of the RAM available: a laptop keeps room for everything else it runs
CPU_CACHE_LIMIT = 4 * 2**30  # and never more than this on CPU by default
PREFILL_LOGITS_BYTES = 256 * 2**20  # generate.engine's bound on one prefill's float32 logits
FP32 = 4


@dataclass(frozen=True)
class ServingPlan:
    """The memory a server takes and what its KV cache holds."""

    weights_bytes: int
    cache_bytes: int  # the paged KV cache, blocks of `block_size` positions (plus one spare block)
    workspace_bytes: int  # left for activations, logits and the attention's gathered keys and values
    block_size: int
    blocks: int
    slots: int  # requests decoded together at most
    max_seq_len: int

    @property
    def tokens(self) -> int:
        """Positions the cache holds over all requests."""
        return self.blocks * self.block_size

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes + self.workspace_bytes

    def requests_at(self, length: int) -> int:
        """Requests of `length` positions (prompt and completion) that fit at once."""
        return min(self.slots, self.blocks // -(-length // self.block_size))

    def describe(self) -> str:
        """One line: weights, cache, the tokens it holds and how many requests of typical lengths fit."""
        typical = sorted({min(n, self.max_seq_len) for n in (1024, self.max_seq_len)})
        fits = " or ".join(f"{self.requests_at(n)} of {n:,} tokens" for n in typical)
        return (f"weights {_gib(self.weights_bytes)}, KV cache {_gib(self.cache_bytes)} paged = {self.blocks:,} blocks "
                f"of {self.block_size} = {self.tokens:,} tokens ({fits} at once, {self.slots} at most)")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def workspace_bytes(args: ModelArgs, slots: int, max_seq_len: int, kv_bytes_per_token: int) -> int:
    """Memory beside weights and cache at the worst step: one layer's keys and values gathered for every row at full
    context (the paged attention's copy), and the largest prefill logits with their log-softmax."""
    gathered = slots * max_seq_len * kv_bytes_per_token // args.n_layers
    logits = 2 * PREFILL_LOGITS_BYTES + 4 * slots * args.vocab_size * FP32
    return gathered + logits


def serving_plan(args: ModelArgs, *, weights_bytes: int, free_bytes: int, kv_bytes_per_token: int, slots: int,
                 max_seq_len: int, device_type: str = "cuda", cache_bytes: int | None = None,
                 block_size: int = 16) -> ServingPlan:
    """The plan for a server whose weights are loaded and `free_bytes` are free on its device.

    Default cache: on a GPU, GPU_CACHE_FRACTION of what is free once the workspace is set aside; on CPU,
    CPU_CACHE_FRACTION of the available RAM up to CPU_CACHE_LIMIT; never more than every slot at max_seq_len
    positions (more could never be used at once). `cache_bytes` asks for a size instead."""
    workspace = workspace_bytes(args, slots, max_seq_len, kv_bytes_per_token)
    block_bytes = kv_bytes_per_token * block_size
    if cache_bytes is None:
        if device_type == "cpu":
            budget = min(int(CPU_CACHE_FRACTION * free_bytes), CPU_CACHE_LIMIT)
        else:
            budget = int(GPU_CACHE_FRACTION * (free_bytes - workspace))
        most = (slots * -(-max_seq_len // block_size) + 1) * block_bytes
        cache_bytes = min(budget, most)
    blocks = cache_bytes // block_bytes - 1  # one block takes the writes of positions no request reserved
    if blocks < 1:
        raise ConfigError(f"a KV cache of {cache_bytes / 2**20:.1f} MiB holds no block of {block_size} positions "
                          f"({block_bytes / 2**20:.2f} MiB each beside a spare one); give it more memory "
                          "(--kv-cache-memory) or free some on the device")
    return ServingPlan(weights_bytes, (blocks + 1) * block_bytes, workspace, block_size, blocks, slots, max_seq_len)
