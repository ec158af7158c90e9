"""The sequences of one HTTP request (several prompts, `n`, `best_of`) run as scheduler requests side by side.

Their outputs come back from the scheduler thread tagged with the sequence's index; a non-streamed answer
waits for all of them, a streamed one forwards each as a chunk of its choice.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request as HTTPRequest

from llamalab.serve.protocol import APIError
from llamalab.serve.request import Output, Request
from llamalab.serve.responses import Choice, Responses, usage
from llamalab.serve.scheduler import Scheduler

DISCONNECT_POLL_S = 0.5  # how often a non-streamed request checks that its client is still there


class Streamed:
    """Outputs of streamed sequences, handed from the scheduler thread to the event loop as (index, output)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def sink(self, index: int) -> Callable[[Output], None]:
        return lambda output: self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, output))

    async def next(self) -> list[tuple[int, Output]]:
        """The next output and every other one already there."""
        outputs = [await self.queue.get()]
        while not self.queue.empty():
            outputs.append(self.queue.get_nowait())
        return outputs


class Collected:
    """Outputs of non-streamed sequences, gathered in the scheduler thread; the event loop is woken once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int):
        self.loop, self.done = loop, asyncio.Event()
        self.outputs: list[list[Output]] = [[] for _ in range(count)]
        self.unfinished = count

    def sink(self, index: int) -> Callable[[Output], None]:
        def add(output: Output) -> None:
            self.outputs[index].append(output)
            if output.finish_reason is not None:
                self.unfinished -= 1  # only the scheduler thread calls sinks: no race
                if self.unfinished == 0:
                    self.loop.call_soon_threadsafe(self.done.set)

        return add


def submit_all(scheduler: Scheduler, requests: list[Request]) -> None:
    """Queue every sequence of a request, or none: one refused (context, server busy) cancels those before it."""
    for i, request in enumerate(requests):
        try:
            scheduler.submit(request)
        except BaseException:
            for earlier in requests[:i]:
                earlier.cancel()
            raise


async def gather(requests: list[Request], collected: Collected, http: HTTPRequest) -> list[Choice]:
    """Every sequence's outputs; every DISCONNECT_POLL_S, check that the client is still there (else cancel)."""
    try:
        while True:
            try:
                await asyncio.wait_for(collected.done.wait(), DISCONNECT_POLL_S)
                break
            except TimeoutError:
                if await http.is_disconnected():
                    raise APIError(499, "the client closed the connection") from None
    finally:
        for request in requests:
            request.cancel()
    for outputs in collected.outputs:
        if outputs[-1].error is not None:
            raise APIError(500, outputs[-1].error, type="server_error")
    return [Choice(i, r, o) for i, (r, o) in enumerate(zip(requests, collected.outputs))]


def best_of(choices: list[Choice], candidates: int, n: int) -> list[Choice]:
    """Of each prompt's `candidates` sequences (consecutive), the n with the highest total log-probability,
    renumbered prompt by prompt (choice index = prompt index × n + rank)."""
    kept = []
    for start in range(0, len(choices), candidates):
        group = sorted(choices[start : start + candidates], key=lambda c: -c.logprob)[:n]
        kept += [Choice(start // candidates * n + rank, c.request, c.outputs) for rank, c in enumerate(group)]
    return kept


def answer_usage(requests: list[Request], candidates: int) -> dict:
    """Prompt tokens counted once per prompt; completion tokens of every sequence drawn."""
    prompts = sum(len(r.prompt) for r in requests[::candidates])
    return usage(prompts, sum(len(r.tokens) for r in requests))


async def events(requests: list[Request], streamed: Streamed, responses: Responses, include_usage: bool,
                 per_prompt: int = 1) -> AsyncIterator[str]:
    """Server-sent events of streamed sequences; if the client leaves, Starlette cancels this, freeing the slots."""
    try:
        unfinished = len(requests)
        while unfinished:
            chunks = []
            for index, output in await streamed.next():  # what the scheduler produced meanwhile goes out in one write
                if output.error is not None:
                    chunks.append(event(APIError(500, output.error, type="server_error").body()))
                elif (chunk := responses.chunk(index, requests[index], output)) is not None:
                    chunks.append(event(chunk))
                unfinished -= output.finish_reason is not None
            if not unfinished and include_usage:
                chunks.append(event(responses.usage_chunk(answer_usage(requests, per_prompt))))
            if chunks:
                yield "".join(chunks)
        yield "data: [DONE]\n\n"
    finally:
        for request in requests:
            request.cancel()


def event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
