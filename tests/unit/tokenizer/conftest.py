"""Tokenizers built at test time from a small generated text (no downloads): a SentencePiece model,
a byte-level BPE in Meta's tiktoken format, and the tokenizer.json files transformers makes of them."""
import base64
import json
import random
from collections import Counter

import pytest
import regex

from llamalab.tokenizer import LLAMA3_SPECIAL_TOKENS, train_sentencepiece

WORDS = ("the cat sat on a mat while the dog ran far away into deep woods where naïve café "
         "owners sold crème brûlée to tired travellers from 東京 and 北京 😀 🎉 in 2024 3.14 I'm it's").split()
# Meta's Llama 3 pre-tokenizer pattern, written out here independently of the package's copy
META_LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def make_texts(n_lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n_lines)]


@pytest.fixture
def meta_llama3_pattern():
    return META_LLAMA3_PATTERN


@pytest.fixture
def sample_texts():
    """make_texts(n_lines, seed): lines of random words with accents, CJK, emoji and digits."""
    return make_texts


def train_byte_bpe(texts: list[str], n_merges: int) -> dict[bytes, int]:
    """A tiny byte-level BPE: the 256 bytes, then the most frequent adjacent pair inside a word, merged in turn."""
    words = Counter(w.encode() for t in texts for w in regex.findall(META_LLAMA3_PATTERN, t))
    splits = {w: [bytes([b]) for b in w] for w in words}
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(n_merges):
        pairs = Counter()
        for w, parts in splits.items():
            for pair in zip(parts, parts[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        ranks.setdefault(a + b, len(ranks))
        for parts in splits.values():
            i = 0
            while i < len(parts) - 1:
                if parts[i] == a and parts[i + 1] == b:
                    parts[i:i + 2] = [a + b]
                i += 1
    return ranks


def write_tiktoken_file(path, ranks: dict[bytes, int]):
    """Meta's tokenizer.model format: one `<base64 token> <rank>` line per token."""
    ordered = sorted(ranks.items(), key=lambda x: x[1])
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ordered))
    return path


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory):
    """A Llama-2-style SentencePiece BPE model with 400 pieces."""
    out = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    return train_sentencepiece(make_texts(800), vocab_size=400, out_path=out)


@pytest.fixture(scope="session")
def bpe_ranks():
    return train_byte_bpe(make_texts(400), n_merges=80)


@pytest.fixture(scope="session")
def tiktoken_model_path(tmp_path_factory, bpe_ranks):
    """A small byte-level BPE (336 ranks) in Meta's base64 format; the special tokens follow the ranks."""
    return write_tiktoken_file(tmp_path_factory.mktemp("tiktoken") / "tokenizer.model", bpe_ranks)


@pytest.fixture(scope="session")
def llama3_sized_tiktoken_path(tmp_path_factory, bpe_ranks):
    """The small BPE padded with unreachable tokens to Llama 3's 128000 ranks, so special ids are Meta's."""
    filler = (b"\xff\xfe" + i.to_bytes(3, "big") for i in range(128_000 - len(bpe_ranks)))
    ranks = {**bpe_ranks, **{t: len(bpe_ranks) + i for i, t in enumerate(filler)}}
    return write_tiktoken_file(tmp_path_factory.mktemp("llama3") / "tokenizer.model", ranks)


@pytest.fixture(scope="session")
def hf_llama2_dir(tmp_path_factory, sp_model_path):
    """tokenizer.json + tokenizer_config.json as transformers converts and saves the SentencePiece model."""
    from transformers import LlamaTokenizer

    source = tmp_path_factory.mktemp("hf2-src")
    (source / "tokenizer.model").write_bytes(sp_model_path.read_bytes())
    out = tmp_path_factory.mktemp("hf2")
    LlamaTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def hf_llama3_dir(tmp_path_factory, tiktoken_model_path):
    """tokenizer.json as transformers' TikTokenConverter makes it of the tiktoken file, with Llama 3's specials and,
    as in Meta's HF release, a post-processor that starts each text with <|begin_of_text|>."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    out = tmp_path_factory.mktemp("hf3")
    converted = TikTokenConverter(str(tiktoken_model_path), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()
    bos = "<|begin_of_text|>"
    converted.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, converted.token_to_id(bos))]),
    ])
    converted.save(str(out / "tokenizer.json"))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out
