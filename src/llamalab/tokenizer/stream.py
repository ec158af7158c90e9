"""Incremental decoding for streaming: text deltas that never split a leading space or a UTF-8 character."""
from __future__ import annotations

from llamalab.tokenizer.base import Tokenizer

REPLACEMENT = "\ufffd"  # what a decoder yields for the bytes of an unfinished UTF-8 character


class StreamDecoder:
    """Turn ids pushed one at a time into text deltas whose concatenation is `decode(all ids)`.

    Each step decodes a short window (the last emitted tokens plus the new ones) and emits what
    the new tokens added to it: the window's first token keeps the context that decides a leading
    space, and text ending in an unfinished character is held back until the character completes.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # the window starts here: tokens before it are final text
        self.read_offset = 0  # tokens before this have been emitted
        self.emitted_chars = 0  # length of all the text emitted so far

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a character or word is unfinished)."""
        self.ids.append(int(token_id))
        emitted = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if text.endswith(REPLACEMENT) or len(text) <= len(emitted) or not text.startswith(emitted):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.emitted_chars += len(text) - len(emitted)
        return text[len(emitted) :]

    def flush(self) -> str:
        """The text still held back (e.g. invalid UTF-8 at the end); call once after the last id."""
        rest = self.tokenizer.decode(self.ids)[self.emitted_chars :]
        self.emitted_chars += len(rest)
        self.prefix_offset = self.read_offset = len(self.ids)
        return rest
