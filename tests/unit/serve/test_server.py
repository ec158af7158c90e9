"""llamalab.serve.create_server: a loaded model behind the API in-process; its KV cache as the formula sizes it."""
import copy

import pytest
from fastapi.testclient import TestClient

from llamalab.errors import ConfigError, TokenizerError
from llamalab.inference import LoadedModel
from llamalab.serve import create_server


@pytest.mark.parametrize("kv_cache", [None, "fixed"])
def test_create_server_serves_the_greedy_continuation(model, tokenizer, greedy_reference, kv_cache):
    server = create_server(LoadedModel(copy.deepcopy(model), tokenizer, seed=None), "tiny", slots=2, max_seq_len=64,
                           kv_cache=kv_cache)
    prompt = "once upon a time"
    tokens, _ = greedy_reference(tokenizer.encode(prompt, bos=True), 8, tokenizer.stop_ids)
    with TestClient(server.app) as client:  # the lifespan starts (and stops) the scheduler
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == tokenizer.decode([t for t in tokens if t not in tokenizer.stop_ids])
    a = model.args
    per_position = 2 * a.n_layers * a.kv_heads * a.head_dim * 4  # k and v of every layer, float32
    if kv_cache == "fixed":  # every slot preallocated
        assert server.plan is None and server.cache_bytes == 2 * 64 * per_position
    else:  # paged by default: on CPU never more than both slots at full length, plus the spare block
        assert server.cache_bytes == server.plan.cache_bytes == (2 * 64 + 16) * per_position
        assert server.plan.blocks == 8 and server.scheduler.engine.cache.prefix_caching


def test_paged_options_with_the_fixed_cache_are_config_errors(model, tokenizer):
    loaded = LoadedModel(copy.deepcopy(model), tokenizer, seed=None)
    for options in ({"kv_cache_memory": 2**20}, {"prefix_caching": True}, {"kv_cache": "slots"}):
        with pytest.raises(ConfigError, match="--kv-cache|KV cache"):
            create_server(loaded, "tiny", **{"kv_cache": "fixed", **options})


def test_create_server_without_a_tokenizer_is_a_tokenizer_error(model):
    with pytest.raises(TokenizerError, match="tokenizer"):
        create_server(LoadedModel(copy.deepcopy(model), None, seed=None), "tiny")


def test_more_slots_than_cache_blocks_is_a_config_error(model, tokenizer):
    a = model.args
    block = 16 * 2 * a.n_layers * a.kv_heads * a.head_dim * 4  # one block of 16 positions, float32 k and v
    loaded = LoadedModel(copy.deepcopy(model), tokenizer, seed=None)
    with pytest.raises(ConfigError, match="--slots 4: the KV cache holds 3 blocks"):
        create_server(loaded, "tiny", slots=4, max_seq_len=64, kv_cache_memory=4 * block)  # 3 blocks + the spare
