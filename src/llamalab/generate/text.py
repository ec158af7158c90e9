"""Text in, text out: streaming deltas with stop strings, and Meta's `text_completion` / `chat_completion`."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from llamalab.generate.decode import Completion, Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.tokenizer import StreamDecoder, Tokenizer, encode_dialog

META_SAMPLING = SamplingParams(temperature=0.6, top_p=0.9)  # the defaults of Meta's generation.py


class TextStream:
    """One row's text as its tokens arrive, cut before the first stop string.

    Text that could be the beginning of a stop string is held back until it is known not to be,
    so the deltas concatenate to exactly the final text. Each character is looked at once per stop
    string (see `StopMatcher`), so a long stop string costs no more per token than a short one.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.matchers = [StopMatcher(s) for s in self.stop]
        self.text = ""  # the text so far (cut at a stop string once one appears)
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False  # a stop string appeared

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now certain."""
        if not self.stopped:
            self._add(self.decoder.push(token_id))
        return self._release(final=False)

    def close(self) -> str:
        """The rest of the text, after the last token."""
        if not self.stopped:
            self._add(self.decoder.flush())
        return self._release(final=True)

    def _add(self, new: str) -> None:
        """Append text, cutting it before the earliest stop string that ends inside it."""
        start = len(self.text)
        self.text += new
        cuts = [start + end - len(m.stop) for m in self.matchers if (end := m.feed(new)) is not None]
        if cuts:
            self.text, self.stopped = self.text[: min(cuts)], True

    def _release(self, final: bool) -> str:
        held = 0 if final or self.stopped else max((m.matched for m in self.matchers), default=0)
        end = len(self.text) - held
        delta, self.sent = self.text[self.sent : end], max(self.sent, end)
        return delta


class StopMatcher:
    """Knuth-Morris-Pratt search for one stop string in text fed piece by piece.

    `matched` is the length of the longest end of the text so far that begins the stop string. The
    failure table is extended only as far as the text has matched, so the work is linear in the text.
    """

    def __init__(self, stop: str):
        self.stop, self.matched = stop, 0
        self.border = [0]  # border[k]: the longest proper prefix of stop[:k+1] that is also its suffix

    def feed(self, text: str) -> int | None:
        """Advance over `text`; the index in it just past the first complete stop string, or None."""
        stop, q = self.stop, self.matched
        for i, ch in enumerate(text):
            while q and stop[q] != ch:
                q = self._border(q - 1)
            if stop[q] == ch:
                q += 1
            if q == len(stop):
                self.matched = 0
                return i + 1
        self.matched = q
        return None

    def _border(self, k: int) -> int:
        border, stop = self.border, self.stop
        while len(border) <= k:  # extend the table one entry at a time (amortized O(1) each)
            i, j = len(border), border[-1]
            while j and stop[i] != stop[j]:
                j = border[j - 1]
            border.append(j + (stop[i] == stop[j]))
        return border[k]


def stream_text(generation: Generation, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> Iterator[list[str]]:
    """Run a generation, yielding each row's new text per step; ends a row at its first stop string.

    Each row's deltas concatenate to its completion's `text`, which is filled in at the end.
    """
    streams = [TextStream(tokenizer, stop) for _ in generation.completions]
    for new in generation:
        deltas = []
        for row, (tokens, stream) in enumerate(zip(new, streams)):
            deltas.append("".join(stream.push(t) for t in tokens))
            if stream.stopped:
                generation.finish(row, "stop")
        yield deltas
    last = [stream.close() for stream in streams]
    for c, stream in zip(generation.completions, streams):
        c.text = stream.text
    if any(last):
        yield last


def text_completion(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_gen_len: int | None = None,
    sampling: SamplingParams | Sequence[SamplingParams] = META_SAMPLING,
    stop: Sequence[str] = (),
    **options,
) -> list[Completion]:
    """Continue each prompt (with BOS when the tokenizer adds one); options are `Generation`'s (logprobs, echo,
    truncate, step)."""
    return _complete(model, tokenizer, [tokenizer.encode(p) for p in prompts], max_gen_len, sampling, stop,
                     **options)


def chat_completion(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    dialogs: Sequence[list[dict[str, str]]],
    max_gen_len: int | None = None,
    sampling: SamplingParams | Sequence[SamplingParams] = META_SAMPLING,
    stop: Sequence[str] = (),
    **options,
) -> list[Completion]:
    """The assistant's reply to each dialog, in the tokenizer's chat format (its stored template first)."""
    return _complete(model, tokenizer, [encode_dialog(tokenizer, d) for d in dialogs], max_gen_len, sampling, stop,
                     **options)


def text_generation(model: torch.nn.Module, tokenizer: Tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    sampling: SamplingParams | Sequence[SamplingParams] = META_SAMPLING, **options) -> Generation:
    """A `Generation` of the prompts' ids that ends a row at the tokenizer's stop ids and never samples an id past its
    vocabulary (a padded embedding's); options are Generation's (logprobs, echo, truncate, step). Run it with
    `stream_text` for text and stop strings."""
    vocab_size = min(tokenizer.vocab_size, model.args.vocab_size)
    return Generation(model, prompts, max_new_tokens, sampling, stop_ids=tokenizer.stop_ids, vocab_size=vocab_size,
                      **options)


def chat_generation(model: torch.nn.Module, tokenizer: Tokenizer, dialog: list[dict[str, str]], max_new_tokens: int,
                    sampling: SamplingParams = META_SAMPLING, **options) -> Generation:
    """The assistant's reply to `dialog` as a `text_generation`; the oldest exchanges after the system prompt are
    deleted from `dialog` (in place) while its prompt does not fit the model's context (see `fit_dialog`)."""
    prompt = fit_dialog(tokenizer, dialog, model.args.max_seq_len)
    return text_generation(model, tokenizer, [prompt], max_new_tokens, sampling, **options)


def fit_dialog(tokenizer: Tokenizer, dialog: list[dict[str, str]], context: int) -> list[int]:
    """The dialog's prompt ids, shorter than `context`: the oldest exchanges after the system prompt are deleted from
    `dialog` (in place) while it does not fit, keeping at least the last message."""
    first = 1 if dialog[0]["role"] == "system" else 0
    while True:
        ids = encode_dialog(tokenizer, dialog)
        if len(ids) < context or len(dialog) - first < 3:
            return ids
        del dialog[first : first + 2]  # one user message and its answer


def _complete(model, tokenizer, prompts, max_gen_len, sampling, stop, **options) -> list[Completion]:
    generation = text_generation(model, tokenizer, prompts, max_gen_len or model.args.max_seq_len - 1, sampling,
                                 **options)
    for _ in stream_text(generation, tokenizer, stop):
        pass
    return generation.completions
