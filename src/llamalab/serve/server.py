"""A loaded model behind the OpenAI-compatible API: the scheduler, the app, and uvicorn to run them."""
from __future__ import annotations

from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from llamalab.errors import TokenizerError
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
        return sum(layer.attention.cache.k.nbytes * 2 for layer in self.scheduler.model.layers)

    def run(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serve on host:port until interrupted."""
        uvicorn.run(self.app, host=host, port=port, log_level="warning")


def create_server(loaded: LoadedModel, name: str, *, slots: int = 32, max_seq_len: int | None = None,
                  max_waiting: int = 256, api_key: str | None = None,
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Server | None:
    """The server of a loaded model (which needs a tokenizer); `name` is the model id clients see.

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
    scheduler = Scheduler(model, slots=slots, max_waiting=max_waiting, max_seq_len=max_seq_len,
                          vocab_size=min(tokenizer.vocab_size, model.args.vocab_size),
                          calls=LockstepCalls(model) if loaded.tp > 1 else None)
    app = create_app(scheduler, tokenizer, name, api_key=api_key, max_body_bytes=max_body_bytes)
    return Server(app, scheduler)
