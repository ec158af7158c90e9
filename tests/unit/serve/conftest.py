"""A live llamalab server on loopback: a tiny model, a SentencePiece tokenizer trained here, uvicorn in a thread."""
import random
import socket
import threading
import time

import pytest
import torch
import uvicorn

from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.quantize.native_decode import native_step
from llamalab.serve import Scheduler, create_app
from llamalab.tokenizer import load_tokenizer, train_sentencepiece

WORDS = ("once upon a time there was a little girl named lily who loved to play in the park with her dog "
         "max and the sun was bright and warm so they ran far away into the deep green woods café 東京 😀").split()


def make_texts(n_lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n_lines)]


def tiny_model(vocab_size: int, max_seq_len: int = 128) -> Transformer:
    """A random 2-layer model whose logits are peaked (final norm scaled up), so greedy choices are never near-ties."""
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, multiple_of=32,
                     max_seq_len=max_seq_len)
    model = Transformer(args).eval()
    with torch.no_grad():
        model.norm.weight.fill_(20.0)
    return model


class LiveServer:
    """uvicorn serving `app` in a background thread on a free loopback port."""

    def __init__(self, app, scheduler=None):
        self.scheduler = scheduler
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve_tokenizer") / "tokenizer.model"
    return load_tokenizer(train_sentencepiece(make_texts(600), vocab_size=300, out_path=path))


@pytest.fixture(scope="session")
def model(tokenizer):
    """The served model's twin (same weights), run directly by the tests as the reference."""
    return tiny_model(tokenizer.vocab_size)


@pytest.fixture(scope="session")
def greedy_reference(model):
    """reference(prompt_ids, max_tokens, stop_ids): greedy tokens by argmax over full causal passes (no KV
    cache), ending with the stop id if one was drawn, and the log-probability of each non-stop token."""

    def reference(prompt_ids, max_tokens, stop_ids):
        ids, tokens, logprobs = list(prompt_ids), [], []
        with torch.no_grad():
            for _ in range(max_tokens):
                logp = model(torch.tensor([ids]))[0, -1].log_softmax(-1)
                token = int(logp.argmax())
                tokens.append(token)
                if token in stop_ids:
                    break
                logprobs.append(float(logp[token]))
                ids.append(token)
        return tokens, logprobs

    return reference


@pytest.fixture(scope="session")
def texts():
    """texts(n_lines, seed): lines of 4 to 16 random words."""
    return make_texts


@pytest.fixture(scope="module")
def launch(tokenizer):
    """launch(wrap=None, slots=, max_waiting=, api_key=, ...) -> a LiveServer of a fresh copy of the tiny model
    (the scheduler owns the model it serves) decoding through the C step as `llamalab serve` does on CPU, or, with
    `wrap`, through its forward replaced by wrap(forward) (every call then goes through it)."""
    started = []

    def launch(wrap=None, **options) -> LiveServer:
        model = tiny_model(tokenizer.vocab_size)
        if wrap is not None:
            model.forward = wrap(model.forward)
        limits = {k: options.pop(k) for k in ("slots", "max_waiting", "max_seq_len", "kv_cache_bytes",
                                                   "prefill_chunk", "prefix_caching") if k in options}
        scheduler = Scheduler(model, **limits, step=native_step(model) if wrap is None else None)
        started.append(LiveServer(create_app(scheduler, tokenizer, "tiny", **options), scheduler))
        return started[-1]

    yield launch
    for live in started:
        live.stop()


@pytest.fixture(scope="module")
def server(launch):
    return launch(slots=32)
