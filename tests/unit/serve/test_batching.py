"""Continuous batching seen from the clients: many at once, each as if alone; slots freed on disconnect; 429."""
import asyncio
import time

import httpx
import openai
import pytest

from llamalab.quantize.native_decode import NativeStep


def test_32_concurrent_clients_each_get_what_they_get_alone(server, greedy_reference, tokenizer, texts):
    prompts = texts(32, seed=7)  # 5 to 17 words: different lengths, so rows sit at different positions
    expected = []
    for prompt in prompts:
        tokens, _ = greedy_reference(tokenizer.encode(prompt, bos=True), 16, tokenizer.stop_ids)
        expected.append(tokenizer.decode([t for t in tokens if t not in tokenizer.stop_ids]))

    async def complete(client, i):  # half the clients stream, half wait for the whole text
        options = dict(model="tiny", prompt=prompts[i], max_tokens=16, temperature=0)
        if i % 2:
            return "".join([c.choices[0].text async for c in await client.completions.create(stream=True, **options)])
        return (await client.completions.create(**options)).choices[0].text

    async def run():  # how much faster together is, bench/serve.py measures; here only what each client gets
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
        alone = [await complete(client, i) for i in range(32)]
        together = await asyncio.gather(*(complete(client, i) for i in range(32)))
        return alone, together

    alone, together = asyncio.run(run())
    assert alone == expected
    assert together == expected
    step = server.scheduler.engine.calls.step
    assert isinstance(step, NativeStep) and step.cache is server.scheduler.engine.cache  # decoded in C


@pytest.fixture(scope="module")
def slow_server(launch):
    """One slot, one waiting place, 200 ms per forward pass: a 100-token request runs 20 s unless it is cancelled,
    so a slot freed within the tests' generous deadlines (10 s) was freed by the cancellation."""

    def slowed(forward):
        return lambda *args, **kwargs: time.sleep(0.2) or forward(*args, **kwargs)

    return launch(wrap=slowed, slots=1, max_waiting=1)


def running(server) -> int:
    return httpx.get(server.root + "/health").json()["running"]


FREED_DEADLINE_S = 10.0  # half the 20 s a 100-token request takes: generous for a loaded 2-core machine


def wait_until_idle(server, deadline_s: float = FREED_DEADLINE_S) -> None:
    """Return once no request runs; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while running(server):
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.02)


LONG = {"model": "tiny", "prompt": "once upon a time", "max_tokens": 100, "ignore_eos": True, "stream": True}


def first_event(lines) -> str:
    """The first server-sent event from `iter_lines()` (hold on to the iterator: dropping it closes the stream)."""
    return next(line for line in lines if line.startswith("data:"))


def test_client_disconnecting_mid_stream_frees_its_slot(slow_server):
    with httpx.Client(timeout=30) as http:  # 100 tokens take 20 s; leave after the first
        with http.stream("POST", slow_server.url + "/completions", json=LONG) as response:
            first_event(events := response.iter_lines())  # noqa: F841 (held: dropping the iterator closes the stream)
            assert running(slow_server) == 1
    wait_until_idle(slow_server)


def test_client_giving_up_on_a_whole_completion_frees_its_slot(slow_server):
    with pytest.raises(httpx.TimeoutException):
        httpx.post(slow_server.url + "/completions", json={**LONG, "stream": False}, timeout=0.3)
    wait_until_idle(slow_server)


def test_too_many_waiting_requests_get_429_and_the_others_continue(slow_server):
    client = openai.OpenAI(base_url=slow_server.url, api_key="unused", max_retries=0)
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", slow_server.url + "/completions", json=LONG) as holding_the_slot:
            first_event(held := holding_the_slot.iter_lines())
            with http.stream("POST", slow_server.url + "/completions", json=LONG) as waiting:
                assert waiting.status_code == 200
                with pytest.raises(openai.RateLimitError) as refused:
                    client.completions.create(model="tiny", prompt="hello", max_tokens=2)
                assert refused.value.response.json()["error"]["type"] == "rate_limit_error"
                held.close()
                holding_the_slot.close()
                first_event(waiting.iter_lines())  # admitted once the first one is gone
    wait_until_idle(slow_server)
    r = client.completions.create(model="tiny", prompt="hello", max_tokens=2)
    assert r.usage.completion_tokens >= 1
