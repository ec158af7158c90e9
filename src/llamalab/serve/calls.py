"""What the scheduler asks of the model: prefill a prompt into row 0, decode rows 0..n-1, move a cache row.

With tensor parallelism (`--tp`) every rank holds a slice of the model and must run the same calls in
the same order: rank 0 schedules and uses `LockstepCalls`, which broadcasts each call before running
it; the other ranks run `follow`, which receives the calls and repeats them.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

PREFILL, DECODE, MOVE, STOP = range(4)  # the operation codes rank 0 broadcasts


class ModelCalls:
    """The scheduler's model operations on this process's model."""

    def __init__(self, model):
        self.model = model
        self.device = model.tok_embeddings.weight.device

    def prefill(self, tokens: torch.Tensor, every: bool = False) -> torch.Tensor:
        """Write one prompt (1, prompt_len) into KV-cache row 0; its next-token logits (1, vocab),
        or with `every` the logits of every position (1, prompt_len, vocab)."""
        logits = self.model(tokens, start_pos=0, last_only=not every)
        return logits if every else logits[:, -1]

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        """One token (n, 1) per row 0..n-1, each at its own position (n,); next-token logits (n, vocab).

        `length` > every position: attention reads only that many cache positions, not the whole cache.
        """
        with self._cache_window(length):
            return self.model(tokens, start_pos=positions)[:, -1]

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of KV-cache row src into row dst, in every layer."""
        for layer in self.model.layers:
            cache = layer.attention.cache
            cache.k[dst, :, :length] = cache.k[src, :, :length]
            cache.v[dst, :, :length] = cache.v[src, :, :length]

    def stop(self) -> None:
        """No more calls will come."""

    @contextlib.contextmanager
    def _cache_window(self, length: int):
        """Show the model the first `length` positions of each layer's KV cache (views: writes reach the cache)."""
        caches = [layer.attention.cache for layer in self.model.layers]
        whole = [(cache.k, cache.v) for cache in caches]
        for cache, (k, v) in zip(caches, whole):
            cache.k, cache.v = k[:, :, :length], v[:, :, :length]  # (slots, n_kv_heads, length, head_dim)
        try:
            yield
        finally:
            for cache, (k, v) in zip(caches, whole):
                cache.k, cache.v = k, v


class LockstepCalls(ModelCalls):
    """Rank 0's calls: each is first broadcast, so that the ranks running `follow` do the same."""

    def prefill(self, tokens, every=False):
        self._announce(PREFILL, tokens.shape[1], int(every))
        dist.broadcast(tokens, src=0)
        return super().prefill(tokens, every)

    def decode(self, tokens, positions, length):
        self._announce(DECODE, tokens.shape[0], length)
        dist.broadcast(torch.cat([tokens, positions[:, None]], dim=1), src=0)  # (n, 2)
        return super().decode(tokens, positions, length)

    def move_row(self, src, dst, length):
        self._announce(MOVE, src, dst, length)
        super().move_row(src, dst, length)

    def stop(self):
        self._announce(STOP)

    def _announce(self, op: int, *sizes: int) -> None:
        header = torch.tensor([op, *sizes, 0, 0, 0][:4], device=self.device)
        dist.broadcast(header, src=0)


def follow(model, slots: int, max_seq_len: int) -> None:
    """On a rank other than 0: repeat rank 0's calls on this rank's slice of the model until it stops.

    `slots` and `max_seq_len` must be rank 0's scheduler's, so that the KV caches have the same rows.
    """
    model.eval().setup_cache(batch_size=slots, max_seq_len=max_seq_len)
    calls = ModelCalls(model)
    header = torch.empty(4, dtype=torch.long, device=calls.device)
    with torch.inference_mode():
        while True:
            dist.broadcast(header, src=0)
            op, a, b, c = header.tolist()
            if op == STOP:
                return
            if op == MOVE:
                calls.move_row(a, b, c)
                continue
            shape = (1, a) if op == PREFILL else (a, 2)
            payload = torch.empty(shape, dtype=torch.long, device=calls.device)
            dist.broadcast(payload, src=0)
            if op == PREFILL:
                calls.prefill(payload, every=bool(b))
            else:
                calls.decode(payload[:, :1], payload[:, 1], length=b)
