"""Llama 2's tokenizer: a SentencePiece BPE model (`tokenizer.model`) with byte fallback."""
from __future__ import annotations

import re
from pathlib import Path

import sentencepiece

from llamalab.errors import TokenizerError
from llamalab.tokenizer.base import Tokenizer


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; BOS, EOS and PAD are the ids the model was trained with (Llama 2: 1, 2, none)."""

    def __init__(self, path: str | Path, model_proto: bytes | None = None):
        """A `tokenizer.model` file, or the serialized ModelProto given (path then names its source)."""
        self.path = Path(path)
        try:
            if model_proto is not None:
                self.model = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
            else:
                self.model = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError, UnicodeDecodeError) as e:  # a corrupt file can fail any of these ways
            raise TokenizerError(f"{self.path}: not a readable SentencePiece model ({e})") from None
        self.bos_id = _id_or_none(self.model.bos_id())
        self.eos_id = _id_or_none(self.model.eos_id())
        self.pad_id = _id_or_none(self.model.pad_id())
        self.stop_ids = frozenset({self.eos_id} - {None})
        controls = {self.model.id_to_piece(i): i for i in range(self.vocab_size) if self.model.is_control(i)}
        self._special_tokens = controls
        self._special_pattern = _alternation(controls)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size()

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        if not allow_special or self._special_pattern is None:
            return self.model.encode(text)
        # each run of ordinary text is encoded on its own (with SentencePiece's dummy-prefix space),
        # as Meta's generation.py encodes each chat turn separately between BOS/EOS
        ids = []
        for i, chunk in enumerate(self._special_pattern.split(text)):
            if i % 2:
                ids.append(self._special_tokens[chunk])
            elif chunk:
                ids.extend(self.model.encode(chunk))
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.model.decode(list(ids))

    def id_to_piece(self, token_id: int) -> str:
        return self.model.id_to_piece(token_id)


def _id_or_none(token_id: int) -> int | None:
    """SentencePiece marks an absent special token with -1."""
    return None if token_id < 0 else token_id


def _alternation(tokens: dict[str, int]) -> re.Pattern | None:
    """A regex whose split() keeps each special-token text as its own item (longest match first)."""
    if not tokens:
        return None
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")
