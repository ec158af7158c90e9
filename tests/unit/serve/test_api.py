"""The OpenAI endpoints through the official `openai` client, checked against the model run directly."""
import openai
import pytest

from llamalab.tokenizer import encode_dialog

PROMPT = "once upon a time there was a little girl"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_greedy_completion_equals_argmax_of_full_forward_passes(client, greedy_reference, tokenizer):
    prompt_ids = tokenizer.encode(PROMPT, bos=True)
    tokens, logprobs = greedy_reference(prompt_ids, 24, tokenizer.stop_ids)
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, logprobs=3)
    choice = r.choices[0]
    generated = [t for t in tokens if t not in tokenizer.stop_ids]
    assert choice.text == tokenizer.decode(generated)
    assert choice.finish_reason == ("stop" if tokens[-1] in tokenizer.stop_ids else "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt_ids), len(tokens))
    assert choice.logprobs.token_logprobs == pytest.approx(logprobs, abs=1e-4)
    for top, chosen in zip(choice.logprobs.top_logprobs, logprobs):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(chosen, abs=1e-4)  # greedy: the chosen is the top
    assert "".join(choice.logprobs.tokens) == choice.text


def test_greedy_chat_equals_argmax_over_the_chat_formatted_prompt(client, greedy_reference, tokenizer):
    messages = [{"role": "system", "content": "you tell stories"}, {"role": "user", "content": "the dog ran"}]
    tokens, logprobs = greedy_reference(encode_dialog(tokenizer, messages), 20, tokenizer.stop_ids)
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                       logprobs=True, top_logprobs=2)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == tokenizer.decode([t for t in tokens if t not in tokenizer.stop_ids])
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx(logprobs, abs=1e-4)
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)


def test_prompt_given_as_token_ids_equals_prompt_given_as_text(client, tokenizer):
    ids = tokenizer.encode(PROMPT, bos=True)
    by_text = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_streamed_text_equals_whole_text_for_the_same_seed(client, endpoint):
    sampling = dict(model="tiny", max_tokens=30, temperature=1.0, top_p=0.9, seed=1234)
    if endpoint == "completions":
        whole = client.completions.create(prompt=PROMPT, **sampling).choices[0].text
        chunks = list(client.completions.create(prompt=PROMPT, stream=True, **sampling))
        streamed = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        messages = [{"role": "user", "content": PROMPT}]
        whole = client.chat.completions.create(messages=messages, **sampling).choices[0].message.content
        chunks = list(client.chat.completions.create(messages=messages, stream=True, **sampling))
        assert chunks[0].choices[0].delta.role == "assistant"
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    assert len(chunks) > 2 and streamed == whole
    assert finish in ("stop", "length")


def test_different_seeds_draw_different_texts(client):
    texts = {client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, seed=seed).choices[0].text
             for seed in (1, 2, 3)}
    assert len(texts) == 3


def test_stream_reports_usage_when_asked(client, tokenizer):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=7, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage.prompt_tokens == len(tokenizer.encode(PROMPT, bos=True))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and usage.completion_tokens <= 7


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text_before_it(client, stream):
    full = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    pairs = (full[i:i + 2] for i in range(8, len(full) - 2))
    stop = next(p for p in pairs if p.strip() and "\ufffd" not in p)  # two characters from the middle
    expected = full[: full.find(stop)]
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "zzzz"],
                                  stream=stream)
    if stream:
        chunks = list(r)
        text, finish = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        text, finish = r.choices[0].text, r.choices[0].finish_reason
    assert (text, finish) == (expected, "stop")


def test_max_tokens_ends_with_finish_reason_length(client, greedy_reference, tokenizer):
    tokens, _ = greedy_reference(tokenizer.encode(PROMPT, bos=True), 3, tokenizer.stop_ids)
    assert not set(tokens) & tokenizer.stop_ids
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, temperature=0)
    assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (3, "length")


def test_health_reports_slots(server):
    import httpx

    body = httpx.get(server.root + "/health").json()
    assert body["status"] == "ok" and body["slots"] == 32
