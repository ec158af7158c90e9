"""The interface every tokenizer offers: text ↔ ids, and the special ids a model and a chat format need."""
from __future__ import annotations

from abc import ABC, abstractmethod

from llamalab.errors import TokenizerError


class Tokenizer(ABC):
    """Text ↔ token ids. `stop_ids` are the ids that end a text or a chat turn."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int | None = None
    stop_ids: frozenset[int] = frozenset()  # end of text / of a chat turn: generation stops at any of them
    chat_template: str | None = None  # Jinja2 chat template shipped with the tokenizer (tokenizer_config.json, GGUF)
    add_bos: bool = True  # whether encode() starts a text with BOS by default (add_bos_token; SmolLM2: False)
    add_eos: bool = False  # whether encode() ends a text with EOS by default (add_eos_token)
    sampling_defaults: dict[str, float | int] = {}  # the model's recommended temperature / top_p / top_k / min_p

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Text of each special (control) token → its id."""

    @abstractmethod
    def _encode(self, text: str, allow_special: bool) -> list[int]:
        """Ids of `text` without BOS/EOS; special-token text becomes its id only when allow_special."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """The text of a sequence of ids."""

    @abstractmethod
    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, as the underlying library names it."""

    def encode(self, text: str, bos: bool | None = None, eos: bool | None = None,
               allow_special: bool = False) -> list[int]:
        """Ids of `text`, with BOS first and EOS last when asked (as Meta's `Tokenizer.encode`); None: as the
        tokenizer's add_bos / add_eos say.

        By default text like "<|eot_id|>" is encoded as ordinary characters; `allow_special=True`
        turns it into the special id (needed to encode a rendered chat template).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        bos = self.add_bos and self.bos_id is not None if bos is None else bos
        eos = self.add_eos and self.eos_id is not None if eos is None else eos
        ids = self._encode(text, allow_special)
        if bos:
            ids.insert(0, self._required("bos_id"))
        if eos:
            ids.append(self._required("eos_id"))
        return ids

    def _required(self, name: str) -> int:
        value = getattr(self, name)
        if value is None:
            kind = name.removesuffix("_id")
            raise TokenizerError(f"this tokenizer has no {kind.upper()} token; encode with {kind}=False")
        return value
