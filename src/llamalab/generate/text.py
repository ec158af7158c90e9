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
    so the deltas concatenate to exactly the final text.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.text = ""  # the text so far (cut at a stop string once one appears)
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False  # a stop string appeared

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now certain."""
        if not self.stopped:
            self.text += self.decoder.push(token_id)
        return self._release(final=False)

    def close(self) -> str:
        """The rest of the text, after the last token."""
        if not self.stopped:
            self.text += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
        end = len(self.text) if final or self.stopped else len(self.text) - self._stop_prefix_len()
        delta, self.sent = self.text[self.sent : end], max(self.sent, end)
        return delta

    def _stop_prefix_len(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        return max((n for s in self.stop for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)


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
    """Continue each prompt (BOS added); options are `Generation`'s (logprobs, echo, truncate, step)."""
    return _complete(model, tokenizer, [tokenizer.encode(p, bos=True) for p in prompts], max_gen_len, sampling, stop,
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


def _complete(model, tokenizer, prompts, max_gen_len, sampling, stop, **options) -> list[Completion]:
    max_new_tokens = max_gen_len or model.args.max_seq_len - 1
    generation = Generation(model, prompts, max_new_tokens, sampling, stop_ids=tokenizer.stop_ids, **options)
    for _ in stream_text(generation, tokenizer, stop):
        pass
    return generation.completions
