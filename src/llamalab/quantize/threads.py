"""How many threads a repeated parallel step runs on, chosen by timing it (`ThreadChoice`).

A decode step splits every stage over its threads and waits at a barrier after each. When another process keeps
one of the cores busy, the thread sharing that core runs only part of the time and every barrier waits for it: on 2
cores with one busy, SmolLM2's C step ran at 49-54 tokens/s on 2 threads against 76 on 1 (130-139 on 2 when quiet).
No setting known before the step runs is right for both machines, so the step is timed: it starts on every thread
PyTorch uses, now and then runs a step on one thread fewer (or more, back up to that number), and keeps whichever
count was at least 1 / `GAIN` times faster. The tries grow rarer while they lose (every 8 to 256 steps): on a quiet
machine 3 of the first 64 steps are tried on the slower count, then one in 128-256.
"""
from __future__ import annotations

from collections import deque

import torch

GAIN = 0.9  # a count is taken when its best step time is below this fraction of the current count's
FIRST_TRY, LAST_TRY = 8, 256  # steps between tries: from the first, doubling while they lose, up to the last
TRY_STEPS = 1  # steps timed on the count tried (its best counts); one: a try costs one slower step when it loses
KEPT = 4  # recent step times kept of the current count


class ThreadChoice:
    """The thread count for the next step (`count`), learnt from the times `record` is given.

    `most` None: torch.get_num_threads() at every step (so torch.set_num_threads also bounds this). Times are
    compared only between steps of the same `shape` (e.g. the number of rows); a new shape starts a new record.
    """

    def __init__(self, most: int | None = None):
        self.fixed_most = most
        self._start()

    def _start(self) -> None:
        self.most = self._most()
        self.current = self.most
        self.trying: int | None = None  # the count being tried, or None
        self.tried: list[float] = []
        self.recent: deque[float] = deque(maxlen=KEPT)
        self.interval, self.since_try, self.shape = FIRST_TRY, 0, None
        self.upward = False  # the next try from a middle count goes up (alternating)

    @property
    def count(self) -> int:
        """Threads for the next step."""
        most = self._most()
        if most != self.most:  # torch.set_num_threads changed it: start again from the new number
            self._start()
        return self.trying or self.current

    def record(self, seconds: float, shape=None) -> None:
        """The time of the step just run on `count` threads, for a step of `shape`."""
        if shape != self.shape:
            self.shape, self.trying, self.tried = shape, None, []
            self.recent.clear()
        if self.trying is not None:
            self.tried.append(seconds)
            if len(self.tried) == TRY_STEPS:
                self._decide()
            return
        self.recent.append(seconds)
        self.since_try += 1
        if self.since_try >= self.interval and len(self.recent) == KEPT and self.most > 1:
            self.trying, self.tried = self._neighbour(), []

    def _decide(self) -> None:
        if min(self.tried) < GAIN * min(self.recent):
            self.current, self.interval = self.trying, FIRST_TRY
            self.recent.clear()
        else:
            self.interval = min(2 * self.interval, LAST_TRY)
        self.trying, self.tried, self.since_try = None, [], 0

    def _neighbour(self) -> int:
        if self.current == self.most:
            return self.current - 1
        if self.current == 1:
            return 2
        self.upward = not self.upward
        return self.current + 1 if self.upward else self.current - 1

    def _most(self) -> int:
        return max(1, self.fixed_most or torch.get_num_threads())
