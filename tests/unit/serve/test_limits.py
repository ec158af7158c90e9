"""Malformed and hostile requests get an OpenAI-style 4xx error; the server keeps serving everyone else."""
import threading
import time

import httpx
import openai
import pytest
from openai_http import assert_openai_error, post

PROMPT = "the dog ran far away"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def test_max_tokens_past_the_context_is_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10**12)
    assert refused.value.code == "context_length_exceeded"
    assert "128" in refused.value.message  # names the context length


def test_prompt_over_the_context_is_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the dog " * 200}])
    assert refused.value.code == "context_length_exceeded"


@pytest.mark.parametrize("body", [
    b'{"model": "tiny", "prompt": "a", ',  # cut short
    b"prompt=hello",  # not JSON at all
    b'{"model": "tiny", "prompt": "\xff\xfe caf\xe9"}',  # invalid UTF-8
    b"[1, 2, 3]",  # JSON, but not an object
])
def test_malformed_json_is_a_400(server, body):
    assert_openai_error(post(server, "/completions", content=body, headers={"content-type": "application/json"}), 400)


@pytest.mark.parametrize("path, body, field", [
    ("/completions", {"prompt": PROMPT, "max_tokens": "many"}, "max_tokens"),
    ("/completions", {"prompt": PROMPT, "temperature": "hot"}, "temperature"),
    ("/completions", {"prompt": PROMPT, "temperature": -1}, "temperature"),
    ("/completions", {"prompt": PROMPT, "top_p": 0}, "top_p"),
    ("/completions", {"prompt": {"text": PROMPT}}, "prompt"),
    ("/completions", {"max_tokens": 5}, "prompt"),
    ("/completions", {"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/completions", {"prompt": PROMPT, "seed": 2**70}, "seed"),
    ("/chat/completions", {"messages": "hello"}, "messages"),
    ("/chat/completions", {"messages": []}, "messages"),
    ("/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
])
def test_wrong_types_and_values_are_a_400_naming_the_field(server, path, body, field):
    error = assert_openai_error(post(server, path, json={"model": "tiny", **body}), 400)
    assert error["param"].startswith(field)
    assert field.split(".")[0] in error["message"]


@pytest.mark.parametrize("path, body", [
    ("/completions", {"prompt": PROMPT, "n": 1000}),
    ("/completions", {"prompt": PROMPT, "logit_bias": {"100000": 100}}),
    ("/completions", {"prompt": PROMPT, "n": 3, "best_of": 2}),
    ("/completions", {"prompt": PROMPT, "suffix": "the end"}),  # no fill-in-the-middle tokens
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                           "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}),
    ("/completions", {"prompt": [1, 2, 10**6]}),  # a token id past the vocabulary
    ("/completions", {"prompt": []}),
    ("/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}),  # the chat format needs a user turn
])
def test_requests_the_server_cannot_honour_are_a_400(server, path, body):
    assert_openai_error(post(server, path, json={"model": "tiny", **body}), 400)


def test_a_10_megabyte_body_is_a_413(client):
    with pytest.raises(openai.APIStatusError) as refused:
        client.completions.create(model="tiny", prompt="a" * 10_000_000, max_tokens=1)
    assert refused.value.status_code == 413


def test_unknown_paths_and_methods_get_error_bodies(server):
    assert_openai_error(httpx.get(server.url + "/engines"), 404)
    assert_openai_error(httpx.get(server.url + "/completions"), 405)


def test_hostile_requests_do_not_disturb_a_running_stream(server, client, greedy_reference, tokenizer):
    prompt_ids = tokenizer.encode(PROMPT, bos=True)
    tokens, _ = greedy_reference(prompt_ids, 60, tokenizer.stop_ids)
    expected = tokenizer.decode([t for t in tokens if t not in tokenizer.stop_ids])
    streamed = []

    def stream():
        chunks = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=60, temperature=0, stream=True)
        streamed.append("".join(c.choices[0].text for c in chunks))

    worker = threading.Thread(target=stream)
    worker.start()
    post(server, "/completions", content=b'{"prompt": \xff', headers={"content-type": "application/json"})
    post(server, "/completions", json={"prompt": PROMPT, "max_tokens": 10**9})
    post(server, "/chat/completions", json={"messages": [{"role": "user", "content": "x" * 3_000_000}]})
    with httpx.Client(timeout=30) as http:  # a client that leaves mid-stream
        with http.stream("POST", server.url + "/completions", json={"prompt": PROMPT, "stream": True}) as r:
            next(r.iter_lines())
    worker.join(timeout=60)
    assert streamed == [expected]
    after = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=60, temperature=0)
    assert after.choices[0].text == expected


def test_api_key_is_required_when_set(launch):
    server = launch(api_key="sesame")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
    assert assert_openai_error(httpx.get(server.url + "/models"), 401)["code"] == "invalid_api_key"  # no key at all
    assert openai.OpenAI(base_url=server.url, api_key="sesame", max_retries=0).models.list().data[0].id == "tiny"
    assert httpx.get(server.root + "/health").status_code == 200  # health checks need no key


def test_a_request_that_breaks_the_model_fails_alone(launch, greedy_reference, tokenizer):
    prompt_ids = tokenizer.encode(PROMPT, bos=True)

    def failing_on_long_prompts(forward):
        def checked(tokens, *args, **kwargs):
            if tokens.shape[1] > len(prompt_ids):
                raise RuntimeError("simulated out of memory")
            time.sleep(0.005)  # the stream stays running while the other request fails
            return forward(tokens, *args, **kwargs)
        return checked

    server = launch(wrap=failing_on_long_prompts)
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
    tokens, _ = greedy_reference(prompt_ids, 80, stop_ids=())
    streamed = []

    def stream():
        chunks = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=80, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        streamed.append("".join(c.choices[0].text for c in chunks))

    worker = threading.Thread(target=stream)
    worker.start()
    deadline = time.monotonic() + 60
    while httpx.get(server.root + "/health").json()["running"] == 0:
        assert time.monotonic() < deadline and worker.is_alive(), "the stream never started"
        time.sleep(0.01)
    with pytest.raises(openai.InternalServerError, match="simulated out of memory"):
        client.completions.create(model="tiny", prompt=f"{PROMPT} {PROMPT}", max_tokens=5)
    worker.join(timeout=60)
    assert streamed == [tokenizer.decode(tokens)]
    assert httpx.get(server.root + "/health").json()["running"] == 0
