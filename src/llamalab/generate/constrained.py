"""Constrained decoding: a grammar (a JSON schema, any JSON object, a Lark grammar) becomes, at every step, the set
of tokens that keep the text inside it; `apply_token_bitmask` sends every other token's logit to -inf.

The grammar engine is llguidance (Microsoft's, used by vLLM, SGLang and llama.cpp): no dependencies, a mask
computed lazily per step from an Earley parser and a token trie (no up-front index over the vocabulary), and
JSON schemas compiled in well under a millisecond. Each generated row holds its own `TokenConstraint`, so
constrained and free rows share one batch: the free rows' logits are left alone.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import llguidance
import tokenizers
import torch

from llamalab.errors import ConfigError
from llamalab.tokenizer import Tokenizer

ANY_JSON_OBJECT = {"type": "object"}  # response_format json_object: any object


def bitmask_words(vocab_size: int) -> int:
    """int32 words of a token bitmask: one bit per token."""
    return (vocab_size + 31) // 32


def apply_token_bitmask(logits: torch.Tensor, bitmasks: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """Logits (batch, vocab) with the tokens not allowed by each listed row's bitmask (len(rows), words) at -inf.

    Bit j of word w allows token 32·w + j; rows not listed are unchanged.
    """
    if not rows:
        return logits
    vocab = logits.shape[-1]
    bits = torch.arange(32, dtype=torch.int32, device=bitmasks.device)
    allowed = (bitmasks.unsqueeze(-1) >> bits) & 1  # (len(rows), words, 32)
    allowed = allowed.flatten(1)[:, :vocab].to(device=logits.device, dtype=torch.bool)  # (len(rows), vocab)
    index = torch.tensor(list(rows), device=logits.device)
    masked = logits[index].masked_fill(~allowed, float("-inf"))
    return logits.index_copy(0, index, masked)


class GrammarCompiler:
    """Grammars for one tokenizer: checks them and starts a `TokenConstraint` per generated row."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: Iterable[int]):
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(_wrapped(tokenizer), n_vocab=vocab_size,
                                                eos_token=sorted(stop_ids) or None)

    def json_schema(self, schema: dict | bool) -> str:
        """The grammar of the JSON texts valid under `schema`; a schema llguidance cannot use is a ConfigError."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema, overrides={"whitespace_flexible": False})  # compact JSON: no runs of spaces to wander into
        except (ValueError, TypeError) as e:
            raise ConfigError(f"invalid JSON schema: {e}") from None
        return self._checked(grammar, "JSON schema")

    def lark(self, grammar: str) -> str:
        """A Lark grammar (llguidance's dialect, with `%json {schema}` for JSON parts), checked."""
        return self._checked(llguidance.LLMatcher.grammar_from_lark(grammar), "grammar")

    def _checked(self, grammar: str, what: str) -> str:
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error and not error.startswith("WARNING"):
            raise ConfigError(f"invalid {what}: {error}")
        return grammar

    def constraint(self, grammar: str) -> TokenConstraint:
        return TokenConstraint(llguidance.LLMatcher(self.tokenizer, grammar, log_level=0), self.vocab_size)


class TokenConstraint:
    """One row's grammar state: the tokens allowed next, advanced by each token the row takes."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self.matcher = matcher
        self.bitmask = torch.zeros(bitmask_words(vocab_size), dtype=torch.int32)  # (words,)

    def allowed(self) -> torch.Tensor:
        """The bitmask (words,) of tokens allowed next (only the end-of-text ids once the grammar is complete)."""
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.bitmask.numel() * 4)
        return self.bitmask

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ConfigError(f"token {token} does not fit the grammar: {self.matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The text so far is a whole sentence of the grammar and nothing may follow."""
        return self.matcher.is_stopped()


def constrain(logits: torch.Tensor, constraints: Sequence[TokenConstraint | None]) -> torch.Tensor:
    """Mask each constrained row of logits (batch, vocab) to its grammar's allowed tokens; free rows unchanged."""
    rows = [row for row, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    bitmasks = torch.stack([constraints[row].allowed() for row in rows])  # (len(rows), words)
    return apply_token_bitmask(logits, bitmasks, rows)


def _wrapped(tokenizer: Tokenizer):
    """What llguidance reads a tokenizer from: a tokenizer.json text, or each token's bytes."""
    model = getattr(tokenizer, "model", None)
    if isinstance(model, tokenizers.Tokenizer):  # tokenizer.json, or a GGUF BPE vocabulary built as one
        return model.to_str()
    return llguidance.TokenizerWrapper(_ByteTokens(tokenizer))


class _ByteTokens:
    """A tokenizer seen as llguidance's TokenizerWrapper expects: each id's bytes, the specials, an encoder."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.eos_token_id, self.bos_token_id = tokenizer.eos_id, tokenizer.bos_id
        self.special_token_ids = sorted(set(tokenizer.special_tokens.values()))
        self.tokens = [_token_bytes(tokenizer, i) for i in range(tokenizer.vocab_size)]

    def __call__(self, text: str) -> list[int]:
        """Ids of `text` as a continuation: SentencePiece's dummy-prefix space, which a text continuing another
        does not get, is avoided by encoding after a newline and dropping the newline's ids."""
        head = self.tokenizer.encode("\n", bos=False, eos=False)
        ids = self.tokenizer.encode("\n" + text, bos=False, eos=False)
        return ids[len(head):] if ids[: len(head)] == head else self.tokenizer.encode(text, bos=False, eos=False)


def _token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    """The bytes one token stands for: SentencePiece pieces (`▁` = space, `<0xNN>` = a byte) or tiktoken's bytes."""
    model = getattr(tokenizer, "model", None)
    if hasattr(model, "decode_single_token_bytes"):  # tiktoken
        try:
            return model.decode_single_token_bytes(token)
        except KeyError:
            return b""
    piece = tokenizer.id_to_piece(token)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")

