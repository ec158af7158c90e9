"""The HTTP API fed random JSON per endpoint and field: every answer is a 200 or an OpenAI-style 4xx error object,
never a 5xx, within seconds; another client's requests keep being answered meanwhile (their latency measured)."""
import json
import os
import socket
import statistics
import threading
import time

import httpx
import pytest
import uvicorn
from harness import COUNTS
from hypothesis import given, settings
from hypothesis import strategies as st

from llamalab.serve import Scheduler, create_app
from llamalab.serve.protocol import ChatBody, CompletionBody

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 25))  # per endpoint
OK_STATUSES = {200, 400, 401, 404, 413, 422, 429}

text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # lone surrogates included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
plausible = {  # values near the valid ones reach further than pure noise
    "max_tokens": st.integers(-2, 300), "max_completion_tokens": st.integers(-2, 300), "temperature": st.floats(-1, 3),
    "top_p": st.floats(-0.5, 1.5), "top_k": st.integers(-2, 2**40), "min_p": st.floats(-0.5, 1.5),
    "seed": st.integers(-(2**64), 2**65), "logprobs": st.integers(-1, 30) | st.booleans(),
    "top_logprobs": st.integers(-1, 30), "stop": text | st.lists(text, max_size=6), "n": st.integers(-1, 5),
    "stream": st.booleans(), "prompt": text | st.lists(st.integers(-5, 400), max_size=8),
    "logit_bias": st.dictionaries(st.integers(-5, 400).map(str), st.floats(-200, 200), max_size=3),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer",
                                                                          "tool", "robot"]), "content": text}),
                         max_size=4),
}


def bodies(model):
    fields = sorted(model.model_fields)
    return st.dictionaries(st.sampled_from(fields + ["unknown_field"]), json_values, max_size=4).flatmap(
        lambda noise: st.fixed_dictionaries({k: plausible.get(k, json_values) for k in noise}))


@pytest.fixture(scope="module")
def live(tiny_model, tokenizer_file):
    """A server of the tiny model on loopback, in a thread, and a client that keeps asking it for 4 tokens."""
    from llamalab.tokenizer import load_tokenizer

    app = create_app(Scheduler(tiny_model, slots=4, max_seq_len=64), load_tokenizer(tokenizer_file), "tiny")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    latencies, stop = [], threading.Event()

    def other_client():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                start = time.monotonic()
                r = http.post(url + "/completions", json={"prompt": "the cat", "max_tokens": 4, "temperature": 0})
                assert r.status_code == 200
                latencies.append(time.monotonic() - start)
                time.sleep(0.05)

    other = threading.Thread(target=other_client, daemon=True)
    other.start()
    yield url, latencies
    stop.set()
    other.join(timeout=30)
    server.should_exit = True
    thread.join(timeout=30)
    if latencies:
        print(f"\nother client during the API fuzz: {len(latencies)} requests, median "
              f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    assert latencies and max(latencies) < 10.0, "a fuzzed request stalled the other client"


def check(url: str, path: str, body) -> None:
    """One request: a 200 (its stream free of server errors) or a 4xx with an OpenAI error object."""
    content = json.dumps(body, ensure_ascii=True).encode()  # ASCII escapes carry lone surrogates as JSON allows
    with httpx.Client(timeout=10) as http, http.stream("POST", url + path, content=content,
                                                       headers={"content-type": "application/json"}) as r:
        payload = r.read().decode("utf-8", errors="replace")
    assert r.status_code in OK_STATUSES, f"{path} {body!r}: {r.status_code} {payload[:500]}"
    if r.status_code != 200:
        error = json.loads(payload)["error"]
        assert isinstance(error["message"], str) and error["message"] and error["type"], payload
    assert "server_error" not in payload, f"{path} {body!r}: {payload[:500]}"


@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES)
@given(body=bodies(CompletionBody))
def test_completions(live, body):
    COUNTS["api /v1/completions"] += 1
    check(live[0], "/completions", {"prompt": "the dog", "max_tokens": 3, **body})


@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES)
@given(body=bodies(ChatBody))
def test_chat_completions(live, body):
    COUNTS["api /v1/chat/completions"] += 1
    check(live[0], "/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **body})


@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES // 2)
@given(body=json_values)
def test_any_json_body(live, body):
    COUNTS["api any JSON"] += 1
    check(live[0], "/completions", body)
