"""Continuous batching: one thread decodes every running request together, one token per step.

Requests wait in a queue. Between two decode steps the scheduler admits waiting requests into free
rows ("slots") of the model's KV cache, prefilling each prompt on its own, and it frees a row as soon
as its request finishes or is cancelled. The running requests always occupy rows 0..n-1, so a decode
step is a single forward pass over n rows, each row at its own position.
"""
from __future__ import annotations

import collections
import contextlib
import sys
import threading
import traceback

import torch

from llamalab.errors import ConfigError, ContextLengthError, ServerBusyError
from llamalab.generate.constrained import constrain
from llamalab.generate.decode import generated_ids
from llamalab.generate.sampling import make_generator, sample
from llamalab.serve.calls import ModelCalls
from llamalab.serve.request import Request


class Scheduler:
    """Runs `model` over up to `slots` requests at once, in a background thread started by `start()`.

    The scheduler owns the model from then on: it sets up the KV cache and runs every forward pass.
    """

    def __init__(self, model, slots: int = 32, max_seq_len: int | None = None, max_waiting: int = 256,
                 vocab_size: int | None = None, calls: ModelCalls | None = None):
        limits = (("slots", slots, 1), ("max_waiting", max_waiting, 0), ("max_seq_len", max_seq_len, 2))
        for name, value, least in limits:
            if value is not None and value < least:
                raise ConfigError(f"{name} must be at least {least}, got {value}")
        self.model = model.eval()
        self.slots, self.max_waiting = slots, max_waiting
        self.max_seq_len = max_seq_len or model.args.max_seq_len
        self.vocab_size = vocab_size or model.args.vocab_size  # ids past the tokenizer's are never sampled
        self.calls = calls or ModelCalls(model)  # LockstepCalls when the model is split over ranks
        self.device = model.tok_embeddings.weight.device
        model.setup_cache(batch_size=slots, max_seq_len=self.max_seq_len)
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[Request] = []  # the request in KV-cache row i is _running[i]
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
        return {"slots": self.slots, "running": len(self._running), "waiting": len(self._waiting)}

    # -- the scheduler thread ----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while not (self._stopping or self._waiting or self._running):
                        self._wakeup.wait()
                    if self._stopping:
                        return
                    admitted = [self._waiting.popleft()
                                for _ in range(min(self.slots - len(self._running), len(self._waiting)))]
                self._step(admitted)

    def _step(self, admitted: list[Request]) -> None:
        """Prefill the newcomers, then decode one token for every running request."""
        for request in admitted:
            if not request.cancelled:
                with self._failing([request]):
                    self._prefill(request)
        self._release()
        if self._running:
            with self._failing(list(self._running)):
                self._decode()
            self._release()

    @contextlib.contextmanager
    def _failing(self, requests: list[Request]):
        """If the model call inside raises (out of memory, a bug), end these requests with the error and go on."""
        try:
            yield
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self._fail(requests, f"generation failed: {type(e).__name__}: {e}")

    def _prefill(self, request: Request) -> None:
        """Write the prompt's keys and values into the free row n and sample the first token.

        The model prefills a single sequence into row 0, so row 0's request first moves to row n.
        """
        n = len(self._running)
        self._running.append(request)
        if n:
            self.calls.move_row(0, n, self._running[0].cached)
            self._running[0], self._running[n] = request, self._running[0]
        request.generator = make_generator(request.params.seed, self.device)
        every = request.prompt_logprobs is not None  # echo: every prompt position's logits
        logits = self.calls.prefill(torch.tensor([request.prompt], device=self.device), every=every)
        if every:  # (1, prompt_len, vocab)
            request.record_prompt(logits[0, :-1, : self.vocab_size].float().log_softmax(dim=-1))
            logits = logits[:, -1]  # (1, vocab)
        if request.max_tokens == 0:
            request.finish_without_tokens()
            return
        self._advance([request], logits)

    def _decode(self) -> None:
        """One forward pass over all running rows, each fed its last token at its own position."""
        rows = self._running
        tokens = torch.tensor([[r.tokens[-1]] for r in rows], device=self.device)  # (n, 1)
        cached = [r.cached for r in rows]
        positions = torch.tensor(cached, device=self.device)  # (n,)
        logits = self.calls.decode(tokens, positions, length=max(cached) + 1)  # (n, vocab)
        self._advance(rows, logits)

    def _advance(self, rows: list[Request], logits: torch.Tensor) -> None:
        """Sample each row's next token and hand it, with its log-probabilities if asked, to its request."""
        logits = logits[:, : self.vocab_size]
        allowed = logits
        if any(r.constraint is not None for r in rows):  # structured output: each constrained row's grammar mask
            allowed = constrain(logits, [r.constraint for r in rows])
        previous = None
        if any(r.params.repetition_penalty != 1 for r in rows):
            previous = torch.nn.utils.rnn.pad_sequence(
                [torch.tensor(r.prompt + r.tokens) for r in rows], batch_first=True, padding_value=-1
            ).to(self.device)  # (n, longest)
        generated = None
        if any(r.params.counts_generated for r in rows):  # presence / frequency penalties read the completion only
            generated = generated_ids([r.tokens for r in rows], self.device)  # (n, longest)
        tokens = sample(allowed, [r.params for r in rows], [r.generator for r in rows], previous, generated)
        logprobs = logits.log_softmax(dim=-1) if any(r.top_logprobs is not None for r in rows) else None
        for i, (request, token) in enumerate(zip(rows, tokens.tolist())):
            request.accept(token, None if logprobs is None else logprobs[i])

    def _release(self) -> None:
        """Free the rows of finished and cancelled requests, moving the last rows into the holes."""
        for i in reversed(range(len(self._running))):
            if self._running[i].done:
                last = self._running.pop()
                if i < len(self._running):
                    self.calls.move_row(len(self._running), i, last.cached)
                    self._running[i] = last

    def _fail(self, requests: list[Request], message: str) -> None:
        for request in requests:
            request.fail(message)
