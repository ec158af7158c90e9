"""Llama 3's tokenizer: byte-level BPE ranks (`tokenizer.model`, base64 lines) run by tiktoken."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

import tiktoken

from llamalab.errors import TokenizerError
from llamalab.tokenizer.base import Tokenizer

# How Llama 3 splits text into words before BPE: contractions, letter runs with one leading
# non-letter, numbers of at most three digits, punctuation runs, newlines and other whitespace.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_RESERVED_SPECIAL_TOKENS = 256

# Llama 3's 256 special tokens, in id order after the BPE ranks (128000 = <|begin_of_text|>, ...).
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",  # end of a chat turn
] + [f"<|reserved_special_token_{i}|>" for i in range(5, NUM_RESERVED_SPECIAL_TOKENS - 5)]


def read_bpe_ranks(path: Path) -> dict[bytes, int]:
    """The `<base64 token> <rank>` lines of a tiktoken file, checked to number the tokens 0..N-1."""
    ranks = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerError(f"{path}: line {number} is not '<base64 token> <rank>'; "
                                 "not a tiktoken BPE file") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: the ranks are not 0..{len(ranks) - 1} without gaps or repeats")
    return ranks


class TiktokenTokenizer(Tokenizer):
    """Meta's Llama 3 tokenizer: the special tokens take the ids right after the N BPE ranks."""

    def __init__(self, path: str | Path, special_tokens: list[str] = LLAMA3_SPECIAL_TOKENS):
        self.path = Path(path)
        try:
            ranks = read_bpe_ranks(self.path)
        except OSError as e:
            raise TokenizerError(f"cannot read tiktoken file {self.path}: {e.strerror}") from None
        self._special_tokens = specials = {token: len(ranks) + i for i, token in enumerate(special_tokens)}
        self.model = tiktoken.Encoding(
            name=self.path.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=specials
        )
        self.bos_id = specials["<|begin_of_text|>"]
        self.eos_id = specials["<|end_of_text|>"]
        self.pad_id = None
        self.stop_ids = frozenset({self.eos_id, specials["<|eot_id|>"]})

    @property
    def vocab_size(self) -> int:
        return self.model.n_vocab

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        return self.model.encode(text, allowed_special="all" if allow_special else set(), disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        return self.model.decode(list(ids))

    def id_to_piece(self, token_id: int) -> str:
        return self.model.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")
