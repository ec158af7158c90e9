"""llamalab.serve.create_server: a loaded model behind the API in-process; its KV cache as the formula sizes it."""
import copy

import pytest
from fastapi.testclient import TestClient

from llamalab.errors import TokenizerError
from llamalab.inference import LoadedModel
from llamalab.serve import create_server


def test_create_server_serves_the_greedy_continuation(model, tokenizer, greedy_reference):
    server = create_server(LoadedModel(copy.deepcopy(model), tokenizer, seed=None), "tiny", slots=2, max_seq_len=64)
    prompt = "once upon a time"
    tokens, _ = greedy_reference(tokenizer.encode(prompt, bos=True), 8, tokenizer.stop_ids)
    with TestClient(server.app) as client:  # the lifespan starts (and stops) the scheduler
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == tokenizer.decode([t for t in tokens if t not in tokenizer.stop_ids])
    a = model.args
    assert server.cache_bytes == 2 * a.n_layers * 2 * 64 * a.kv_heads * a.head_dim * 4  # k and v, float32


def test_create_server_without_a_tokenizer_is_a_tokenizer_error(model):
    with pytest.raises(TokenizerError, match="tokenizer"):
        create_server(LoadedModel(copy.deepcopy(model), None, seed=None), "tiny")
