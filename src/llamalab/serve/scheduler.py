"""Continuous batching: one thread decodes every running request together, one token per step.

Requests wait in a queue. Between two decode steps the scheduler admits waiting requests into free
rows ("slots") of the model's KV cache, prefilling each prompt on its own, and it frees a row as soon
as its request finishes or is cancelled. The rows, the forward passes, sampling and stop handling are
the decode `Engine`'s (the one `generate` uses too); the scheduler adds the queue and the thread.

On a paged cache a request that the engine preempted (the blocks ran out as running requests grew) goes
back to the head of the queue and is admitted again, recomputed, as soon as it fits; its client sees
its tokens once each, as if nothing happened.
"""
from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
import traceback

import torch

from llamalab.errors import ConfigError, ContextLengthError, ServerBusyError
from llamalab.generate.engine import Engine, ModelCalls, Step
from llamalab.serve.metrics import ServerMetrics
from llamalab.serve.request import Request


class Scheduler:
    """Runs `model` over up to `slots` requests at once, in a background thread started by `start()`.

    The scheduler owns the model from then on: it sets up the KV cache and runs every forward pass. `step`: the
    decode step of steps without prompt tokens (e.g. `LoadedModel.decode_step()`, the C step on CPU; default the
    model's forward); `calls`: the model calls of a model split over ranks (tensor parallelism).
    """

    def __init__(self, model, slots: int = 32, max_seq_len: int | None = None, max_waiting: int = 256,
                 vocab_size: int | None = None, calls: ModelCalls | None = None, kv_cache_bytes: int | None = None,
                 block_size: int = 16, prefill_chunk: int | None = None, prefix_caching: bool = False,
                 step: Step | None = None):
        limits = (("slots", slots, 1), ("max_waiting", max_waiting, 0), ("max_seq_len", max_seq_len, 2))
        for name, value, least in limits:
            if value is not None and value < least:
                raise ConfigError(f"{name} must be at least {least}, got {value}")
        self.model = model.eval()
        self.slots, self.max_waiting = slots, max_waiting
        self.max_seq_len = max_seq_len or model.args.max_seq_len
        self.vocab_size = vocab_size or model.args.vocab_size  # ids past the tokenizer's are never sampled
        self.device = model.device
        if kv_cache_bytes is None:  # every slot preallocated to max_seq_len positions
            model.setup_cache(batch_size=slots, max_seq_len=self.max_seq_len)
        else:  # a paged cache of that many bytes: memory follows the positions requests reserve
            if calls is not None:
                raise ConfigError("a paged KV cache (kv_cache_bytes) is not supported with tensor parallelism yet")
            num_blocks = kv_cache_bytes // (model.kv_bytes_per_token() * block_size)
            if num_blocks < 1:
                raise ConfigError(f"kv_cache_bytes={kv_cache_bytes} holds no block of {block_size} positions")
            model.setup_paged_cache(num_blocks, block_size, batch_size=slots, max_seq_len=self.max_seq_len,
                                    prefix_caching=prefix_caching)
        # LockstepCalls when the model is split over ranks
        self.engine = Engine(model, slots, self.max_seq_len, calls=calls, step=step, vocab_size=self.vocab_size,
                             prefill_chunk=prefill_chunk)  # long prompts a chunk per step beside the decoding
        self.calls = self.engine.calls
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[Request] = self.engine.rows  # the request in KV-cache row i is _running[i]
        self.metrics = ServerMetrics(self)
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llamalab-scheduler", daemon=True)

    # -- the caller's side (any thread) ------------------------------------------------------------
    def submit(self, request: Request) -> None:
        """Queue a request; raise if it cannot fit the context or too many requests are waiting."""
        if not request.prompt:
            raise ConfigError("the prompt is empty; give at least one token")
        if len(request.prompt) + request.max_tokens > self.max_seq_len:
            raise ContextLengthError(
                f"this model's context is {self.max_seq_len} tokens, but {len(request.prompt)} prompt tokens "
                f"+ {request.max_tokens} completion tokens were requested; shorten the prompt or max_tokens"
            )
        capacity = getattr(self.engine.cache, "num_blocks", None)
        if capacity is not None and self.engine.cache.blocks_for(len(request.prompt) + request.max_tokens) > capacity:
            raise ContextLengthError(
                f"{len(request.prompt)} prompt tokens + {request.max_tokens} completion tokens do not fit the whole "
                "KV cache; shorten the prompt or max_tokens")
        request.submitted_at = time.perf_counter()
        with self._wakeup:
            if len(self._waiting) >= self.max_waiting:
                raise ServerBusyError(f"{len(self._waiting)} requests are already waiting; retry later")
            self._waiting.append(request)
            self._wakeup.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after the current step; unfinished requests end with an error."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread.is_alive():
            self._thread.join()
        self.calls.stop()
        self._fail(list(self._waiting) + self._running, "the server is shutting down")
        self._waiting.clear()
        self._running.clear()

    def stats(self) -> dict[str, int]:
        stats = {"slots": self.slots, "running": len(self._running), "waiting": len(self._waiting)}
        cache = self.engine.cache
        if hasattr(cache, "num_blocks"):  # paged
            stats.update(kv_blocks=cache.num_blocks, kv_blocks_used=cache.used_blocks,
                         preemptions=self.engine.preemptions)
            if cache.prefix_caching:
                stats.update(prefix_cache_hit_rate=round(cache.prefix_hit_rate, 4))
        return stats

    # -- the scheduler thread ----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while not (self._stopping or self._waiting or self._running):
                        self._wakeup.wait()
                    if self._stopping:
                        return
                self._step()

    def _step(self) -> None:
        """Prefill the waiting requests that fit (first come, first served), then decode one token for every
        running request."""
        while (request := self._next_admitted()) is not None:
            if request.cancelled:
                self.metrics.released(request)
            else:
                with self._failing([request]):
                    self._prefill(request)
        self._release()
        if self._running:
            with self._failing(list(self._running)):
                self._decode()
            self._requeue()
            self._release()

    def _next_admitted(self) -> Request | None:
        """The first waiting request if it fits the engine now (a cancelled one always goes), else None; one whose
        prompt opens like a prompt still being prefilled waits for it, to share its cached blocks."""
        with self._wakeup:
            if not self._waiting:
                return None
            first = self._waiting[0]
            if first.cancelled or (self.engine.fits(first) and not self.engine.waits_for_prefix(first)):
                return self._waiting.popleft()
        return None

    @contextlib.contextmanager
    def _failing(self, requests: list[Request]):
        """If the model call inside raises (out of memory, a bug), end these requests with the error and go on."""
        try:
            yield
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self._fail(requests, f"generation failed: {type(e).__name__}: {e}")

    def _prefill(self, request: Request) -> None:
        """Write the prompt's keys and values into the next free row and sample the first token (a preempted
        request: its prompt and the tokens it had, then its next token)."""
        sampled = request.sampled
        self.engine.admit([request])
        self.metrics.admitted(request, resumed=sampled > 0)
        self.metrics.stepped([request] if request.sampled > sampled else [])

    def _decode(self) -> None:
        """One forward pass over all running rows, each fed its last token at its own position."""
        before = [(request, request.sampled) for request in self._running if not request.done]
        self.engine.step()
        self.metrics.stepped([request for request, sampled in before if request.sampled > sampled])

    def _requeue(self) -> None:
        """Put the requests the engine preempted back at the head of the queue, oldest first."""
        preempted = self.engine.take_preempted()
        if preempted:
            self.metrics.preempted.inc(len(preempted))
            with self._wakeup:
                self._waiting.extendleft(reversed(preempted))

    def _release(self) -> None:
        """Free the rows of finished and cancelled requests, moving the last rows into the holes."""
        for request in self.engine.release():
            self.metrics.released(request)

    def _fail(self, requests: list[Request], message: str) -> None:
        for request in requests:
            request.fail(message)
