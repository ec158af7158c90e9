"""The server on a paged KV cache sized in bytes: the same answers as alone, waiting instead of failing when the
blocks run out, every block back once the requests are done."""
import asyncio
import time

import httpx
import openai
import pytest

from llamalab.quantize.native_decode import NativeStep

BYTES_PER_POSITION = 2 * 2 * 2 * 16 * 4  # layers x (keys, values) x KV heads x head_dim x float32


def alone(greedy_reference, tokenizer, prompt: str, max_tokens: int) -> str:
    """The greedy answer to `prompt` from a full causal pass, as the server's text."""
    tokens, _ = greedy_reference(tokenizer.encode(prompt, bos=True), max_tokens, tokenizer.stop_ids)
    return tokenizer.decode([t for t in tokens if t not in tokenizer.stop_ids])


def served_together(server, prompts: list[str], max_tokens: int) -> list[str]:
    """The server's greedy answers to all `prompts` sent at once."""
    async def run():
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
        answers = [client.completions.create(model="tiny", prompt=p, max_tokens=max_tokens, temperature=0)
                   for p in prompts]
        return [r.choices[0].text for r in await asyncio.gather(*answers)]
    return asyncio.run(run())


def settled_health(server) -> dict:
    """/health once no request runs or waits (a finished request's row is freed just after its answer is sent)."""
    deadline = time.monotonic() + 30
    while (health := httpx.get(server.root + "/health").json())["running"] or health["waiting"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.01)
    return health


@pytest.fixture(scope="module")
def paged_server(launch):
    """16 rows but blocks for only 96 positions: 3 requests of up to 24 positions (two blocks of 16) at once."""
    return launch(slots=16, max_seq_len=128, kv_cache_bytes=6 * 16 * BYTES_PER_POSITION)


def test_paged_server_answers_each_of_many_clients_as_alone(paged_server, greedy_reference, tokenizer, texts):
    prompts = texts(24, seed=11)
    expected = [alone(greedy_reference, tokenizer, prompt, 8) for prompt in prompts]
    assert served_together(paged_server, prompts, 8) == expected  # more than the blocks hold at once: the rest waited
    step = paged_server.scheduler.engine.calls.step
    assert isinstance(step, NativeStep) and step.cache is paged_server.scheduler.engine.cache  # C read the blocks
    health = settled_health(paged_server)
    assert (health["kv_blocks"], health["kv_blocks_used"], health["running"]) == (6, 0, 0)


def test_a_request_larger_than_the_whole_cache_is_refused(paged_server):
    client = openai.OpenAI(base_url=paged_server.url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="KV cache"):
        client.completions.create(model="tiny", prompt="once upon a time", max_tokens=100)  # 7 blocks


def test_prompts_prefilled_in_chunks_beside_decoding_give_the_same_answers(launch, greedy_reference, tokenizer,
                                                                          texts):
    server = launch(slots=8, prefill_chunk=4, kv_cache_bytes=24 * 16 * BYTES_PER_POSITION)
    prompts = texts(8, seed=5)  # 5 to 17 words: most take several chunks of 4 tokens
    expected = [alone(greedy_reference, tokenizer, prompt, 10) for prompt in prompts]
    assert served_together(server, prompts, 10) == expected


def test_preempted_requests_stream_each_token_once_and_as_alone(paged_server, greedy_reference, tokenizer, texts):
    """12 clients of 40 tokens each: 6 blocks hold one block per prompt, but each grows to 4 blocks, so running
    requests preempt younger ones, which are recomputed later; greedy and seeded clients get what they get alone."""
    prompts = [p for p in texts(60, seed=3) if len(tokenizer.encode(p, bos=True)) <= 24][:12]  # 64 positions at most
    assert len(prompts) == 12
    settings = [{"temperature": 0} if i % 2 else {"temperature": 0.8, "top_p": 0.95, "seed": i} for i in range(12)]
    options = [dict(model="tiny", prompt=p, max_tokens=40, logprobs=0, extra_body={"ignore_eos": True}, **s)
               for p, s in zip(prompts, settings)]

    async def stream(client, i) -> tuple[str, list[str]]:
        chunks = [c async for c in await client.completions.create(stream=True, **options[i])]
        tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
        return "".join(c.choices[0].text for c in chunks if c.choices), tokens

    async def run():
        client = openai.AsyncOpenAI(base_url=paged_server.url, api_key="unused", max_retries=0, timeout=120)
        alone = [(await client.completions.create(**o)).choices[0].text for o in options]  # one at a time
        before = httpx.get(paged_server.root + "/health").json()["preemptions"]
        together = await asyncio.gather(*(stream(client, i) for i in range(12)))
        return alone, together, httpx.get(paged_server.root + "/health").json()["preemptions"] - before

    alone, together, preemptions = asyncio.run(run())
    assert preemptions > 0
    for i, (text, tokens) in enumerate(together):
        assert text == alone[i] and len(tokens) == 40  # no token streamed twice, none lost
    for i in range(1, 12, 2):  # greedy: the reference of full causal passes without a cache
        expected, _ = greedy_reference(tokenizer.encode(prompts[i], bos=True), 40, ())
        assert alone[i] == tokenizer.decode(expected)
    assert settled_health(paged_server)["kv_blocks_used"] == 0


def test_no_block_is_lost_to_clients_that_leave_mid_stream(paged_server, texts):
    """40 streaming clients of 30 tokens on the 6-block cache (waiting, preempting), every other one leaving after
    its first few tokens: afterwards every block is free and the server answers as before."""
    prompts = texts(40, seed=9)

    async def client(http, i):
        body = {"model": "tiny", "prompt": prompts[i], "max_tokens": 30, "ignore_eos": True, "stream": True,
                "temperature": 0.9, "seed": i}
        async with http.stream("POST", paged_server.url + "/completions", json=body) as response:
            events = 0
            async for line in response.aiter_lines():
                events += line.startswith("data:")
                if i % 2 and events == 3:
                    return "left"  # leaving the block closes the stream: the server cancels the request
        return "done"

    async def run():
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(client(http, i) for i in range(40)))

    assert asyncio.run(run()).count("left") == 20
    assert settled_health(paged_server)["kv_blocks_used"] == 0
    client_ = openai.OpenAI(base_url=paged_server.url, api_key="unused", max_retries=0)
    assert client_.completions.create(model="tiny", prompt="once", max_tokens=3).usage.completion_tokens >= 1
