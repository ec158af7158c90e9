"""Llama 3 splits numbers into groups of at most three digits before BPE (`\\p{N}{1,3}`): checked on long digit runs
with a BPE that has digit merges, against tiktoken running Meta's own pattern."""
import base64
import random

import pytest
import tiktoken
from tiktoken._educational import bpe_train

from llamalab.tokenizer import TiktokenTokenizer

# Meta's pattern from llama3/tokenizer.py, written out here as the oracle (not the package's copy)
META_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
UNGROUPED = META_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}+")  # the bug this test exists to catch
rng = random.Random(0)
DIGIT_TEXTS = ["".join(rng.choice("0123456789") for _ in range(n)) for n in (4, 7, 10, 16, 31, 64)] + [
    "call 5551234567 or 18005550199", "pi is 3.14159265358979, e is 2.718281828", "year 20242025 and 1e100"]


@pytest.fixture(scope="module")
def digit_bpe(tmp_path_factory):
    """A byte-level BPE trained (with Meta's pattern) on text full of numbers, so that digit pairs merge."""
    text = " ".join("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12))) for _ in range(600))
    ranks = bpe_train(text + " the cat sat on the mat", 256 + 60, META_PATTERN, visualise=None)
    path = tmp_path_factory.mktemp("digits") / "tokenizer.model"
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ordered))
    return path, ranks


def test_long_digit_runs_encode_as_tiktoken_with_metas_pattern(digit_bpe):
    path, ranks = digit_bpe
    ours = TiktokenTokenizer(path)
    meta = tiktoken.Encoding("meta", pat_str=META_PATTERN, mergeable_ranks=ranks, special_tokens={})
    ungrouped = tiktoken.Encoding("ungrouped", pat_str=UNGROUPED, mergeable_ranks=ranks, special_tokens={})
    assert sum(meta.encode(t) != ungrouped.encode(t) for t in DIGIT_TEXTS) >= 3  # the texts tell the two apart
    for text in DIGIT_TEXTS:
        assert ours.encode(text, bos=False) == meta.encode(text), text
        assert ours.decode(meta.encode(text)) == text
