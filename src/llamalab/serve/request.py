"""One request to the scheduler: prompt ids and sampling settings in, text deltas with their tokens out.

The scheduler feeds a request its sampled tokens one at a time (`accept`); the request turns them
into text, cut at the first stop string, decides when it is finished and hands every piece of
output to its `sink` (a callable the HTTP layer provides; it is called from the scheduler thread).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llamalab.generate.constrained import TokenConstraint
from llamalab.generate.sampling import SamplingParams
from llamalab.generate.text import TextStream
from llamalab.tokenizer import StreamDecoder, Tokenizer


@dataclass
class TokenInfo:
    """A generated token: its id, the text it added, its log-probability and the likeliest alternatives."""

    id: int
    text: str
    logprob: float | None = None
    top: list[tuple[str, float]] = field(default_factory=list)  # (text, logprob) of the likeliest tokens


@dataclass
class Output:
    """What a request produced in one step."""

    text: str = ""  # new text; never contains a stop string nor text that may begin one
    token: TokenInfo | None = None  # None for the stop token and for the final flush
    finish_reason: str | None = None  # "stop", "length" or "error" on the last output
    error: str | None = None


class Request:
    """A prompt to complete with up to `max_tokens` tokens; `sink` receives each `Output`."""

    def __init__(self, prompt: list[int], max_tokens: int, tokenizer: Tokenizer, sink: Callable[[Output], None],
                 params: SamplingParams = SamplingParams(), stop: tuple[str, ...] = (),
                 top_logprobs: int | None = None, ignore_eos: bool = False, prompt_logprobs: int | None = None,
                 constraint: TokenConstraint | None = None):
        self.prompt, self.max_tokens, self.params = prompt, max_tokens, params
        self.top_logprobs = top_logprobs  # None: no log-probabilities; n: the chosen token's and n alternatives
        self.prompt_logprobs = prompt_logprobs  # as top_logprobs, for the prompt's tokens (echo)
        self.prompt_infos: list[TokenInfo] | None = None  # set by the prefill when prompt_logprobs is
        self.constraint = constraint  # the grammar the tokens must follow (structured output), or None
        self.sink = sink
        self.tokenizer = tokenizer
        self.stop_ids = frozenset() if ignore_eos else tokenizer.stop_ids
        self.text = TextStream(tokenizer, stop)
        self.generator: torch.Generator | None = None  # set by the scheduler on the model's device
        self.tokens: list[int] = []  # generated ids, the stop token included
        self.finished = False
        self.cancelled = False  # set by the consumer (client gone); the scheduler frees the slot

    @property
    def cached(self) -> int:
        """Positions of this request in the KV cache: everything but the last sampled token."""
        return len(self.prompt) + len(self.tokens) - 1

    @property
    def done(self) -> bool:
        return self.finished or self.cancelled

    def cancel(self) -> None:
        self.cancelled = True

    def accept(self, token: int, logprobs: torch.Tensor | None = None) -> None:
        """Take the next sampled token (and the log-probabilities (vocab,) it was drawn from, if asked)."""
        self.tokens.append(token)
        if self.constraint is not None and token not in self.stop_ids:
            self.constraint.advance(token)
        if token in self.stop_ids:
            self._finish("stop")
            return
        before = len(self.text.text)
        released = self.text.push(token)
        info = TokenInfo(token, self.text.text[before:])
        if logprobs is not None and self.top_logprobs is not None:
            info.logprob = float(logprobs[token])
            top = logprobs.topk(min(self.top_logprobs, logprobs.numel()))
            info.top = [(self._text_of(i), lp) for i, lp in zip(top.indices.tolist(), top.values.tolist())]
        if self.text.stopped:
            self._emit(Output(released, info, finish_reason="stop"))
        elif len(self.tokens) >= self.max_tokens:
            self._finish("length", released, info)
        else:
            self._emit(Output(released, info))

    def record_prompt(self, logprobs: torch.Tensor) -> None:
        """Keep each prompt token's log-probability and alternatives, from logprobs (prompt_len - 1, vocab) of
        the positions before it; the first token has none."""
        texts = prompt_token_texts(self.tokenizer, self.prompt)
        infos = [TokenInfo(self.prompt[0], texts[0])]
        chosen = logprobs.gather(1, torch.tensor(self.prompt[1:], device=logprobs.device)[:, None])[:, 0].tolist()
        top = logprobs.topk(min(self.prompt_logprobs, logprobs.shape[-1])) if self.prompt_logprobs else None
        for i, token in enumerate(self.prompt[1:]):
            info = TokenInfo(token, texts[i + 1], chosen[i])
            if top is not None:
                alternatives = zip(top.indices[i].tolist(), top.values[i].tolist())
                info.top = [(self.tokenizer.decode([t]), lp) for t, lp in alternatives]
            infos.append(info)
        self.prompt_infos = infos

    def finish_without_tokens(self) -> None:
        """End after the prefill (max_tokens 0: the prompt was only to be scored)."""
        self._emit(Output(finish_reason="length"))

    def _text_of(self, token: int) -> str:
        """The text `token` would add after the tokens before it (a lone piece may lose its leading space)."""
        before = self.tokens[-2] if len(self.tokens) > 1 else self.prompt[-1]
        head, text = self.tokenizer.decode([before]), self.tokenizer.decode([before, token])
        return text[len(head):] if text.startswith(head) else self.tokenizer.decode([token])

    def fail(self, message: str) -> None:
        """End with an error (the server failed or is stopping)."""
        if not self.finished:
            self._emit(Output(finish_reason="error", error=message))

    def _finish(self, reason: str, text: str = "", info: TokenInfo | None = None) -> None:
        """Emit the last output, with the text the decoder and the stop strings still hold back."""
        text += self.text.close()
        self._emit(Output(text, info, finish_reason="stop" if self.text.stopped else reason))

    def _emit(self, output: Output) -> None:
        if output.finish_reason is not None:
            self.finished = True
        try:
            self.sink(output)
        except Exception:  # the consumer is gone (its event loop closed): stop generating for it
            self.cancelled = True


def prompt_token_texts(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """The text each token of a sequence adds; they concatenate to the decoded sequence."""
    decoder = StreamDecoder(tokenizer)
    texts = [decoder.push(token) for token in ids]
    texts[-1] += decoder.flush()
    return texts
