"""The tokenizer and chat template read from the SmolLM2 GGUF, against transformers' reading of the same file.

transformers (5.x) builds the byte-level BPE of a GGUF but ignores `tokenizer.ggml.pre = smollm`: it splits text
with plain GPT-2 rules. llama.cpp's `smollm` pre-tokenizer, and the tokenizer.json SmolLM2 was trained with
(HuggingFaceTB/SmolLM2-135M-Instruct), first isolate every digit (`Digits(individual_digits=True)`, then
`ByteLevel`). The oracle is therefore transformers' tokenizer with that published pre-tokenizer put back; on text
without digits transformers' unmodified reading must agree too.
"""
import random

import pytest
import tokenizers

from llamalab.tokenizer import StreamDecoder, encode_dialog, load_tokenizer, render_chat_template
from llamalab.tokenizer.gguf_metadata import read_gguf_metadata
from llamalab.tokenizer.gguf_vocab import GGUFBPETokenizer

FRAGMENTS = [
    "Hello world", "The quick brown fox jumps over the lazy dog.", "I'm sure it's fine; we'll see, they'd've",
    "DON'T SHOUT", "naïve café crème brûlée", "Ångström", "東京都", "北京欢迎你", "こんにちは世界", "안녕하세요",
    "Привет, мир", "مرحبا بالعالم", "नमस्ते दुनिया", "Γειά σου", "שָׁלוֹם", "e\u0301 a\u0308 n\u0303 o\u0332",
    "😀", "🎉🎉", "👩\u200d💻", "🇫🇷🇯🇵", "👍🏽", "❤️", "∑ x² ≤ ∞", "½ ¾ ⅔", "Ⅻ ⅷ", "١٢٣٤", "１２３", "²³",
    "0", "7", "42", "3.14159", "1,234,567.89", "-0.5e-10", "2024-11-29", "0xDEADBEEF", "+33 1 23 45 67 89",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }", "#include <stdio.h>",
    "console.log(`${a}`);", "SELECT * FROM t WHERE id=1;", "<div class=\"x\">&amp;</div>", "$ ls -la | grep py",
    "x=[1,2,3]", "{\"key\": [true, null]}", "a\tb\t\tc", "line1\nline2", "\r\n", "\n\n\n", "   ", "\u00a0", "\u3000",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "<|im_", "im_end|>", "<repo_name>",
]
SEPARATORS = ["", " ", "  ", "\n", " \n ", "\t", "   ", "\n\n", ", ", "    "]


def varied_strings(n: int, seed: int = 0) -> list[str]:
    """n strings mixing scripts, emoji, combining marks, code, numbers, digit runs, whitespace runs, special tokens."""
    rng = random.Random(seed)
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F),
              (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xACFF), (0x1F300, 0x1F64F), (0x2000, 0x206F),
              (0x300, 0x36F)]
    out = []
    for i in range(n):
        parts = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.55:
                parts.append(rng.choice(FRAGMENTS))
            elif kind < 0.7:
                parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40))))  # digit runs
            elif kind < 0.85:
                lo, hi = rng.choice(blocks)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
            else:
                parts.append(rng.choice([" ", "\n", "\t", "\r\n", "\u00a0"]) * rng.randint(1, 9))  # whitespace runs
            parts.append(rng.choice(SEPARATORS))
        text = "".join(parts)
        out.append(" " + text if i % 7 == 0 else text)
    return out


STRINGS = varied_strings(1200)


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def oracle(hf_smollm2):
    """transformers' tokenizer of the file (a copy), with SmolLM2's published pre-tokenizer."""
    backend = tokenizers.Tokenizer.from_str(hf_smollm2[0].backend_tokenizer.to_str())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return backend


def test_the_gguf_vocabulary_is_smollm2_s(ours, hf_smollm2):
    hf = hf_smollm2[0]
    assert isinstance(ours, GGUFBPETokenizer) and ours.pre == "smollm"
    assert ours.vocab_size == len(hf) == 49152
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 2)
    assert ours.add_bos is False and ours.encode("hi") == hf.encode("hi")  # no BOS: add_bos_token is false
    assert ours.stop_ids == {hf.convert_tokens_to_ids("<|im_end|>"), hf.convert_tokens_to_ids("<|endoftext|>")}
    assert ours.special_tokens == {t.content: i for i, t in hf.added_tokens_decoder.items() if t.special}
    assert len(ours.special_tokens) == 17


def test_tokenization_equals_transformers_on_1200_varied_strings(ours, oracle, hf_smollm2):
    assert len(STRINGS) >= 1000 and len(set(STRINGS)) > 1150
    mismatches = [s for s in STRINGS if ours.encode(s, allow_special=True) != oracle.encode(s).ids]
    assert not mismatches, mismatches[:3]
    # without allow_special, "<|im_end|>" in the text is ordinary characters, as with split_special_tokens
    oracle.encode_special_tokens = True
    assert all(ours.encode(s) == oracle.encode(s).ids for s in STRINGS[:300])
    # transformers' unmodified GGUF reading differs only where digits follow whitespace
    hf = hf_smollm2[0]
    no_digits = [s for s in STRINGS if not any(c.isdigit() or c in "½¾⅔Ⅻⅷ²³" for c in s)]
    assert len(no_digits) > 300
    assert all(ours.encode(s, allow_special=True) == hf.encode(s) for s in no_digits)
    assert ours.encode("x  1") == [104, 256, 33] != hf.encode("x  1")  # "  " is one token once "1" stands apart


def test_gpt2_pre_tokenizer_equals_transformers_unmodified_reading(smollm2_gguf, hf_smollm2):
    """llama.cpp's `gpt-2` rules on the same vocabulary are what transformers applies to this file."""
    metadata = read_gguf_metadata(smollm2_gguf)
    gpt2 = GGUFBPETokenizer(smollm2_gguf, {**metadata, "tokenizer.ggml.pre": "gpt-2"})
    hf = hf_smollm2[0]
    mismatches = [s for s in STRINGS if gpt2.encode(s, allow_special=True) != hf.encode(s)]
    assert not mismatches, mismatches[:3]


def test_our_gguf_output_keeps_the_tokenizer_and_chat_template(ours, smollm2_gguf, tmp_path):
    """convert --to gguf: the vocabulary, pre-tokenizer, special ids, add_bos and chat template written back."""
    import torch

    from llamalab.checkpoint import save
    from llamalab.config import ModelArgs
    from llamalab.model import Transformer

    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=49152, multiple_of=16, max_seq_len=32))
    with torch.no_grad():
        path = save(model, tmp_path / "m.gguf", format="gguf", tokenizer=smollm2_gguf)
    written, source = read_gguf_metadata(path), read_gguf_metadata(smollm2_gguf)
    for key in ("model", "pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id", "padding_token_id",
                "unknown_token_id", "add_bos_token"):
        assert written[f"tokenizer.ggml.{key}"] == source[f"tokenizer.ggml.{key}"], key
    assert written["tokenizer.chat_template"] == source["tokenizer.chat_template"]
    again = load_tokenizer(path)
    assert (again.stop_ids, again.add_bos, again.chat_template) == (ours.stop_ids, False, ours.chat_template)
    assert all(again.encode(s, allow_special=True) == ours.encode(s, allow_special=True) for s in STRINGS)


def test_decode_inverts_encode_and_equals_transformers(ours, hf_smollm2):
    hf = hf_smollm2[0]
    for s in STRINGS:
        ids = ours.encode(s)
        assert ours.decode(ids) == s
        assert ours.decode(ids) == hf.decode(ids, clean_up_tokenization_spaces=False)


def test_encoding_1000_strings_takes_well_under_a_second(ours):
    import time

    start = time.perf_counter()
    for s in STRINGS[:1000]:
        ours.encode(s, allow_special=True)
    assert time.perf_counter() - start < 1.0


def test_streaming_decode_never_splits_a_character(ours):
    for s in STRINGS[:400]:
        stream = StreamDecoder(ours)
        deltas = [stream.push(i) for i in ours.encode(s)] + [stream.flush()]
        assert "".join(deltas) == s
        assert all("\ufffd" not in d for d in deltas) or "\ufffd" in s


DIALOGS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of Japan?"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about 42 cats 😺.\nThanks"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]


@pytest.mark.parametrize("dialog", DIALOGS, ids=["user", "system", "multi-turn", "system-multi-turn"])
def test_chat_prompt_equals_apply_chat_template(ours, hf_smollm2, dialog):
    hf = hf_smollm2[0]
    assert ours.chat_template == hf.chat_template
    expected = hf.apply_chat_template(dialog, tokenize=False, add_generation_prompt=True)
    assert render_chat_template(ours.chat_template, dialog, ours) == expected
    assert encode_dialog(ours, dialog) == hf.apply_chat_template(dialog, tokenize=True, add_generation_prompt=True,
                                                                 return_dict=False)
    closed = hf.apply_chat_template(dialog, tokenize=False, add_generation_prompt=False)
    assert render_chat_template(ours.chat_template, dialog, ours, add_generation_prompt=False) == closed
