"""`suffix` on /v1/completions: the prefix-suffix-middle layout of fill-in-the-middle models, on SmolLM2's
tokenizer.json with the StarCoder FIM tokens added by the `tokenizers` library."""
import shutil

import pytest
import tokenizers

from llamalab.serve.prompts import completion_prompts
from llamalab.serve.protocol import CompletionBody, FieldError
from llamalab.tokenizer import load_tokenizer

FIM = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]


@pytest.fixture(scope="module")
def fim_tokenizer(smollm2_hf_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fim_tokenizer")
    raw = tokenizers.Tokenizer.from_file(str(smollm2_hf_dir / "tokenizer.json"))
    raw.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in FIM])
    raw.save(str(folder / "tokenizer.json"))
    shutil.copy(smollm2_hf_dir / "tokenizer_config.json", folder)
    return load_tokenizer(folder / "tokenizer.json"), raw


def test_suffix_puts_the_prompt_and_the_suffix_around_the_fim_tokens(fim_tokenizer):
    tokenizer, raw = fim_tokenizer
    pre, suf, mid = (raw.token_to_id(t) for t in FIM)
    (ids,) = completion_prompts(CompletionBody(prompt="def add(a, b):\n", suffix="\n    return c"), tokenizer)
    expected = ([pre] + raw.encode("def add(a, b):\n", add_special_tokens=False).ids + [suf]
                + raw.encode("\n    return c", add_special_tokens=False).ids + [mid])
    assert ids == expected


def test_suffix_without_fim_tokens_is_refused_naming_it(smollm2_hf_dir):
    tokenizer = load_tokenizer(smollm2_hf_dir / "tokenizer.json")
    with pytest.raises(FieldError, match="fill-in-the-middle") as refused:
        completion_prompts(CompletionBody(prompt="def add(a, b):\n", suffix="return c"), tokenizer)
    assert refused.value.param == "suffix"
