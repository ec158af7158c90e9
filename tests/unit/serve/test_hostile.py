"""Issue 21's hostile requests: each gets an OpenAI-style 4xx (never a 500) and none stalls another client."""
import threading
import time

import httpx
import pytest
from openai_http import assert_openai_error, post

from llamalab.config import ModelArgs
from llamalab.errors import TokenizerError
from llamalab.model import Transformer
from llamalab.serve import Scheduler, create_app

PROMPT = "the dog ran far away"


def test_one_stop_string_longer_than_four_characters_is_accepted(server):
    response = post(server, "/completions", json={"prompt": PROMPT, "max_tokens": 3, "stop": "a long stop string"})
    assert response.status_code == 200, response.text
    assert_openai_error(post(server, "/completions", json={"prompt": PROMPT, "stop": ["a"] * 5}), 400)


def test_top_k_past_any_vocabulary_is_a_400_naming_it(server):
    error = assert_openai_error(post(server, "/completions", json={"prompt": PROMPT, "top_k": 2**70}), 400)
    assert error["param"] == "top_k" and "overflow" not in error["message"].lower()


@pytest.mark.parametrize("path, body", [
    ("/completions", b'{"prompt": "caf\\ud800 au lait", "max_tokens": 2}'),
    ("/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 2}'),
])
def test_a_lone_surrogate_is_a_400_json_error(server, path, body):
    error = assert_openai_error(post(server, path, content=body, headers={"content-type": "application/json"}), 400)
    assert "Unicode" in error["message"]


def test_an_unknown_model_is_a_404_model_not_found(server):
    error = assert_openai_error(post(server, "/completions", json={"model": "gpt-4", "prompt": PROMPT}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert post(server, "/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 1}).status_code == 200
    assert post(server, "/completions", json={"prompt": PROMPT, "max_tokens": 1}).status_code == 200  # no model: ours


def test_docs_and_schema_need_the_api_key_when_one_is_set(launch):
    server = launch(api_key="sesame")
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(server.root + path).status_code in (401, 404), path
    key = {"authorization": "Bearer sesame"}
    assert httpx.get(server.root + "/openapi.json", headers=key).json()["info"]["title"] == "llamalab"
    assert httpx.get(server.root + "/docs", headers=key).status_code == 200


def test_a_tokenizer_larger_than_the_model_is_refused_up_front(tokenizer):
    smaller = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=tokenizer.vocab_size - 10,
                                    multiple_of=16, max_seq_len=32))
    with pytest.raises(TokenizerError, match=f"{tokenizer.vocab_size} tokens"):
        create_app(Scheduler(smaller, slots=1), tokenizer, "tiny")


def test_a_megabyte_stop_string_does_not_stall_another_client(server):
    """Issue 21: one request with a 1 MB stop string froze every client for 35 s (quadratic stop check)."""
    hostile = threading.Thread(target=post, args=(server, "/completions"), kwargs=dict(
        json={"prompt": PROMPT, "max_tokens": 40, "stop": ["x" * 2**20, "the " + "y" * 2**19], "ignore_eos": True}))
    hostile.start()
    deadline = time.monotonic() + 30  # generous: a quiet machine answers in well under a second
    response = post(server, "/completions", json={"prompt": PROMPT, "max_tokens": 4})
    assert response.status_code == 200 and time.monotonic() < deadline
    hostile.join(timeout=60)
    assert not hostile.is_alive()
