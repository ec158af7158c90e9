"""Issue 22 on the tiny model: prompt lists, n, best_of, echo with prompt logprobs, penalties, /tokenize — each
checked against the model run directly or against the same server answering one sequence at a time."""
import httpx
import openai
import pytest
import torch

PROMPT = "once upon a time there was a little girl"
OTHER = "the dog ran far away"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def post(server, path: str, **body) -> httpx.Response:
    return httpx.post(server.url + path, json={"model": "tiny", **body}, timeout=60)


def full_logprobs(model, ids):
    """log p(ids[i] | ids[:i]) for i >= 1 and the whole (len-1, vocab) table, from one cache-free pass."""
    with torch.no_grad():
        logp = model(torch.tensor([ids]))[0, :-1].double().log_softmax(-1)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))], logp


def test_a_list_of_prompts_answers_each_as_if_alone(client, tokenizer):
    ids = tokenizer.encode(OTHER)
    r = client.completions.create(model="tiny", prompt=[PROMPT, OTHER], max_tokens=10, temperature=0)
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0).choices[0].text
             for p in (PROMPT, OTHER)]
    assert [c.index for c in r.choices] == [0, 1] and [c.text for c in r.choices] == alone
    by_ids = client.completions.create(model="tiny", prompt=[ids, tokenizer.encode(PROMPT)], max_tokens=10,
                                       temperature=0)
    assert [c.text for c in by_ids.choices] == alone[::-1]
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT)) + len(ids)


def test_n_choices_draw_from_seed_plus_index(client):
    """Choice i of a seeded request draws as a request of one choice with seed + i."""
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, n=3, seed=40)
    alone = [client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, seed=40 + i).choices[0].text
             for i in range(3)]
    assert [c.text for c in r.choices] == alone and len(set(alone)) == 3


def test_n_with_a_prompt_list_numbers_choices_prompt_by_prompt(client):
    r = client.completions.create(model="tiny", prompt=[PROMPT, OTHER], max_tokens=6, n=2, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text != r.choices[2].text == r.choices[3].text


def test_best_of_keeps_the_n_likeliest_of_the_draws(client):
    draws = [client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=7 + i, logprobs=0)
             for i in range(4)]
    ranked = sorted((d.choices[0] for d in draws), key=lambda c: -sum(c.logprobs.token_logprobs))
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=7, best_of=4, n=2)
    assert [c.text for c in r.choices] == [c.text for c in ranked[:2]]
    assert r.choices[0].logprobs is None  # not asked for, though best_of used them
    assert r.usage.completion_tokens == sum(d.usage.completion_tokens for d in draws)  # every draw is billed


def test_echo_with_max_tokens_0_scores_every_prompt_token(client, model, tokenizer):
    ids = tokenizer.encode(PROMPT)
    expected, table = full_logprobs(model, ids)
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=3)
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text == tokenizer.decode(ids) == "".join(lp.tokens)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for i, top in enumerate(lp.top_logprobs[1:]):
        best = table[i].topk(3).values.tolist()  # tokens with the same text share one entry: the likeliest's
        assert 1 <= len(top) <= 3 and max(top.values()) == pytest.approx(best[0], abs=1e-4)
        assert all(min(abs(v - b) for b in best) < 1e-4 for v in top.values())
    assert r.usage.completion_tokens == 0 and choice.finish_reason == "length"


def test_echo_with_a_generated_token_as_lm_eval_asks(client, model, tokenizer, greedy_reference):
    """lm-evaluation-harness sends echo, logprobs 1, max_tokens 1, several token-id prompts in one request."""
    prompts = [tokenizer.encode(PROMPT), tokenizer.encode(OTHER)]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=1, echo=True, logprobs=1, temperature=0)
    for ids, choice in zip(prompts, r.choices):
        expected, _ = full_logprobs(model, ids)
        (token,), (logprob,) = greedy_reference(ids, 1, set())
        lp = choice.logprobs
        assert len(lp.tokens) == len(ids) + 1
        assert lp.token_logprobs[1:] == pytest.approx(expected + [logprob], abs=1e-4)
        assert choice.text == tokenizer.decode(ids + [token])


def test_a_stop_token_that_ends_the_text_is_in_the_completion_logprobs(client, model, tokenizer):
    """As in vLLM: max_tokens 1 always lists one token after the prompt, even the end-of-text (its text is "")."""
    ids = tokenizer.encode(PROMPT)
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0,
                                  logit_bias={str(tokenizer.eos_id): 100})
    lp = r.choices[0].logprobs
    with torch.no_grad():
        expected = float(model(torch.tensor([ids]))[0, -1].double().log_softmax(-1)[tokenizer.eos_id])
    assert len(lp.tokens) == len(ids) + 1 and lp.tokens[-1] == "" and r.choices[0].finish_reason == "stop"
    assert lp.token_logprobs[-1] == pytest.approx(expected, abs=1e-4)  # the model's own, not the biased one
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                          logprobs=True, logit_bias={str(tokenizer.eos_id): 100})
    assert chat.choices[0].message.content == "" and chat.choices[0].logprobs.content == []


def test_echo_streams_the_prompt_first(client, tokenizer):
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, echo=True,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert whole.choices[0].text.startswith(tokenizer.decode(tokenizer.encode(PROMPT)))


def test_streamed_choices_carry_their_index(client):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, n=2, seed=3, stream=True))
    streamed = ["".join(c.choices[0].text for c in chunks if c.choices[0].index == i) for i in range(2)]
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, n=2, seed=3)
    assert streamed == [c.text for c in whole.choices]


def test_logit_bias_and_penalties_reach_the_sampler(client, model, tokenizer):
    forced = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=0,
                                       logit_bias={"42": 100})
    assert forced.choices[0].text == tokenizer.decode([42] * 5)
    ids, presence, frequency = tokenizer.encode(PROMPT), 0.8, 1.1
    seq = list(ids)
    with torch.no_grad():  # greedy under OpenAI's formula over the generated tokens, by hand
        for _ in range(12):
            logits = model(torch.tensor([seq]))[0, -1].tolist()
            new = seq[len(ids):]
            for token in set(new):
                logits[token] -= presence + frequency * new.count(token)
            seq.append(max(range(len(logits)), key=logits.__getitem__))
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0, presence_penalty=presence,
                                  frequency_penalty=frequency, extra_body={"ignore_eos": True})
    assert r.choices[0].text == tokenizer.decode(seq[len(ids):])


def test_tokenize_detokenize_and_tokenizer_info_in_vllms_shapes(server, tokenizer):
    with_bos = httpx.post(server.root + "/tokenize", json={"prompt": PROMPT}).json()
    assert with_bos["tokens"] == tokenizer.encode(PROMPT) and with_bos["count"] == len(with_bos["tokens"])
    assert with_bos["max_model_len"] == 128
    plain = httpx.post(server.root + "/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()
    assert plain["tokens"] == tokenizer.encode(PROMPT, bos=False)
    eos = tokenizer.id_to_piece(tokenizer.eos_id)
    assert httpx.post(server.root + "/tokenize", json={"prompt": eos, "add_special_tokens": False}).json()["tokens"] \
        == [tokenizer.eos_id]  # special-token text is the special id, as lm-eval's remote tokenizer expects
    back = httpx.post(server.root + "/detokenize", json={"tokens": plain["tokens"]}).json()
    assert back == {"prompt": tokenizer.decode(plain["tokens"])}
    info = httpx.get(server.root + "/tokenizer_info").json()
    assert info["eos_token"] == eos and info["bos_token"] == tokenizer.id_to_piece(tokenizer.bos_id)
    assert info["vocab_size"] == tokenizer.vocab_size


@pytest.mark.parametrize("path, body, param", [
    ("/completions", {"prompt": PROMPT, "n": 1000}, "n"),
    ("/completions", {"prompt": [PROMPT] * 40, "n": 8}, "n"),
    ("/completions", {"prompt": [PROMPT] * 64, "n": 4, "max_tokens": 90}, "max_tokens"),
    ("/completions", {"prompt": PROMPT, "logit_bias": {"100000": 5}}, "logit_bias"),
    ("/completions", {"prompt": PROMPT, "logit_bias": {"x": 5}}, "logit_bias"),
    ("/completions", {"prompt": PROMPT, "logit_bias": {"5": 101}}, "logit_bias"),
    ("/completions", {"prompt": PROMPT, "presence_penalty": 2.5}, "presence_penalty"),
    ("/completions", {"prompt": PROMPT, "n": 3, "best_of": 2}, "best_of"),
    ("/completions", {"prompt": PROMPT, "best_of": 3, "stream": True}, "best_of"),
    ("/completions", {"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
    ("/completions", {"prompt": PROMPT, "suffix": "and then"}, "suffix"),
    ("/completions", {"prompt": [[1, 2], []]}, "prompt"),
    ("/completions", {"prompt": [[1, 2], [3, 10**6]]}, "prompt"),
    ("/chat/completions", {"messages": [{"role": "tool", "content": "42"}]}, "messages"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages"),
    ("/chat/completions", {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]}, "messages"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, "tool_choice"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [
        {"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "tool_choice"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                           "response_format": {"type": "json_schema"}}, "response_format"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": 3}}}},
     "response_format"),
])
def test_requests_beyond_the_limits_are_a_400_naming_the_field(server, path, body, param):
    response = post(server, path, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].split(".")[0] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]
