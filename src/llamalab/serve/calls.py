"""The engine's model calls in lockstep over tensor-parallel ranks.

With tensor parallelism (`--tp`) every rank holds a slice of the model and must run the same calls in
the same order: rank 0 schedules and uses `LockstepCalls`, which broadcasts each call before running
it; the other ranks run `follow`, which receives the calls and repeats them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from llamalab.generate.engine import ModelCalls

__all__ = ["LockstepCalls", "ModelCalls", "follow"]

PREFILL, DECODE, MOVE, STOP = range(4)  # the operation codes rank 0 broadcasts
HEADER = 6  # longs in a call's header: the code and up to five sizes


class LockstepCalls(ModelCalls):
    """Rank 0's calls: each is first broadcast, so that the ranks running `follow` do the same."""

    def prefill(self, tokens, start_pos, first_row, last_only):
        self._announce(PREFILL, *tokens.shape, start_pos, first_row, int(last_only))
        dist.broadcast(tokens, src=0)
        return super().prefill(tokens, start_pos, first_row, last_only)

    def decode(self, tokens, start_pos, kv_len):
        shared = isinstance(start_pos, int)  # every row at one position: only the tokens travel
        self._announce(DECODE, tokens.shape[0], start_pos if shared else -1, kv_len or 0)
        dist.broadcast(tokens if shared else torch.cat([tokens, start_pos[:, None]], dim=1), src=0)  # (n, 1 or 2)
        return super().decode(tokens, start_pos, kv_len)

    packs = False  # the other ranks repeat prefill and decode calls: a step's chunks go as calls of their own

    def move_row(self, src, dst, length):
        self._announce(MOVE, src, dst, length)
        super().move_row(src, dst, length)

    def stop(self):
        self._announce(STOP)

    def _announce(self, op: int, *sizes: int) -> None:
        header = torch.tensor([op, *sizes] + [0] * (HEADER - 1 - len(sizes)), device=self.device)
        dist.broadcast(header, src=0)


def follow(model, slots: int, max_seq_len: int) -> None:
    """On a rank other than 0: repeat rank 0's calls on this rank's slice of the model until it stops.

    `slots` and `max_seq_len` must be rank 0's scheduler's, so that the KV caches have the same rows.
    """
    model.eval().setup_cache(batch_size=slots, max_seq_len=max_seq_len)
    calls = ModelCalls(model)
    header = torch.empty(HEADER, dtype=torch.long, device=calls.device)
    with torch.inference_mode():
        while True:
            dist.broadcast(header, src=0)
            op, a, b, c, d, e = header.tolist()
            if op == STOP:
                return
            if op == MOVE:
                calls.move_row(a, b, c)
            elif op == PREFILL:
                tokens = torch.empty(a, b, dtype=torch.long, device=calls.device)
                dist.broadcast(tokens, src=0)
                calls.prefill(tokens, c, d, bool(e))
            else:
                payload = torch.empty(a, 1 if b >= 0 else 2, dtype=torch.long, device=calls.device)
                dist.broadcast(payload, src=0)
                start_pos = b if b >= 0 else payload[:, 1]
                calls.decode(payload[:, :1], start_pos, c or None)
