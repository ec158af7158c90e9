"""Grammar masks: the bitmask layout checked bit by bit, and constrained sampling from random logits (a model that
never writes JSON by itself) producing text that parses and validates, for both ways of reading a tokenizer."""
import json

import jsonschema
import pytest
import torch
from generate_models import train_tiny_tokenizer

from llamalab.errors import ConfigError
from llamalab.generate.constrained import GrammarCompiler, apply_token_bitmask, constrain
from llamalab.generate.sampling import SamplingParams, make_generator, sample
from llamalab.tokenizer import load_tokenizer

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 50},
                                           "c": {"enum": ["cat", "dog"]}},
          "required": ["n", "c"], "additionalProperties": False}


def test_bitmask_bit_j_of_word_w_allows_token_32w_plus_j():
    logits = torch.zeros(2, 40)
    # row 0 allows tokens 0, 3, 31 (the sign bit) and 33; row 1 is not listed
    words = torch.tensor([[1 | 8 | -(2**31), 2]], dtype=torch.int32)
    out = apply_token_bitmask(logits, words, rows=[0])
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [0, 3, 31, 33]
    assert torch.isfinite(out[1]).all()


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    return load_tokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("constrained") / "tok.model"))


@pytest.fixture(scope="module")
def hf(smollm2_hf_dir):
    return load_tokenizer(smollm2_hf_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def gguf(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)  # the GGUF's own BPE vocabulary


@pytest.mark.parametrize("which", ["spm", "hf", "gguf"])
def test_random_logits_under_a_schema_give_valid_json(which, request):
    tokenizer = request.getfixturevalue(which)
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size, {tokenizer.eos_id})
    grammar = compiler.json_schema(SCHEMA)
    for seed in range(3):
        constraint, tokens, generator = compiler.constraint(grammar), [], make_generator(seed)
        for _ in range(60):
            logits = torch.randn(2, tokenizer.vocab_size, generator=generator)
            token = int(sample(constrain(logits, [None, constraint]), SamplingParams(), generator)[1])
            if token == tokenizer.eos_id:
                break
            constraint.advance(token)
            tokens.append(token)
        jsonschema.validate(json.loads(tokenizer.decode(tokens)), SCHEMA)


def test_a_schema_llguidance_rejects_is_a_config_error(hf):
    compiler = GrammarCompiler(hf, hf.vocab_size, {hf.eos_id})
    with pytest.raises(ConfigError, match="invalid JSON schema"):
        compiler.json_schema({"type": "objekt"})
