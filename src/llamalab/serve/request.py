"""One request to the scheduler: prompt ids and sampling settings in, text deltas with their tokens out.

A `Request` is a row of the decode engine (`generate.engine.Sequence`): the engine feeds it its sampled
tokens one at a time (`accept`); the request turns them into text, cut at the first stop string, and
hands every piece of output to its `sink` (a callable the HTTP layer provides; it is called from the
scheduler thread).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llamalab.generate.constrained import TokenConstraint
from llamalab.generate.engine import Sequence
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
    stop: bool = False  # the stop token that ended the text (listed by /v1/completions' logprobs, not by chat)


@dataclass
class Output:
    """What a request produced in one step."""

    text: str = ""  # new text; never contains a stop string nor text that may begin one
    token: TokenInfo | None = None  # None for the stop token and for the final flush
    finish_reason: str | None = None  # "stop", "length" or "error" on the last output
    error: str | None = None


class Request(Sequence):
    """A prompt to complete with up to `max_tokens` tokens; `sink` receives each `Output`."""

    def __init__(self, prompt: list[int], max_tokens: int, tokenizer: Tokenizer, sink: Callable[[Output], None],
                 params: SamplingParams = SamplingParams(), stop: tuple[str, ...] = (),
                 top_logprobs: int | None = None, ignore_eos: bool = False, prompt_logprobs: int | None = None,
                 constraint: TokenConstraint | None = None):
        # top_logprobs None: no log-probabilities; n: the chosen token's and n alternatives
        super().__init__(prompt, max_tokens, params, stop_ids=() if ignore_eos else tokenizer.stop_ids,
                         top_logprobs=top_logprobs, echo=prompt_logprobs is not None, constraint=constraint)
        self.prompt_top = prompt_logprobs  # as top_logprobs, for the prompt's tokens (echo)
        self.prompt_infos: list[TokenInfo] | None = None  # set after the prefill when prompt_logprobs is
        self._prompt_scores: list[torch.Tensor] = []  # echo: the prefill's log-probabilities, chunk by chunk
        self.sink = sink
        self.tokenizer = tokenizer
        self.text = TextStream(tokenizer, stop)
        self.finished = False  # the last output went out
        self.cancelled = False  # set by the consumer (client gone); the scheduler frees the slot
        # perf_counter() times the scheduler sets: submitted, first token, latest token (for the metrics)
        self.submitted_at: float = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    @property
    def tokens(self) -> list[int]:
        """Generated ids, a stop token that ended the request included (what usage counts)."""
        return self.output + [self.last_token] if self.sampled > len(self.output) else self.output

    @property
    def done(self) -> bool:
        return self.finished or self.cancelled or self.finish_reason is not None

    def cancel(self) -> None:
        self.cancelled = True

    def accept(self, token: int, logprob: float | None = None, top: tuple[list[int], list[float]] | None = None
               ) -> bool:
        """Take the next sampled token, its log-probability and the likeliest (ids, logprobs), if asked."""
        if not self.take(token, logprob):
            if self.finish_reason is None:  # the stop token: no text, but its log-probability (vLLM's legacy logprobs)
                self.finish_reason = "stop"
                stop = TokenInfo(token, "", stop=True) if self.top_logprobs is not None else None
                if stop is not None:
                    stop.logprob = logprob
                    stop.top = [(self._text_of(i), lp) for i, lp in zip(*top)] if top is not None else []
                self._finish("stop", info=stop)
            return False
        before = len(self.text.text)
        released = self.text.push(token)
        info = TokenInfo(token, self.text.text[before:])
        if self.top_logprobs is not None:
            info.logprob = logprob
            info.top = [(self._text_of(i), lp) for i, lp in zip(*top)]
        if self.text.stopped:
            self.finish_reason = "stop"
            self._emit(Output(released, info, finish_reason="stop"))
        elif len(self.output) >= self.max_tokens:
            self.finish_reason = "length"
            self._finish("length", released, info)
        else:
            self._emit(Output(released, info))
        return True

    def finish(self, reason: str = "stop") -> None:
        """End now (a stop token; max_tokens 0 after the prefill), with the text still held back."""
        if self.finish_reason is None:
            self.finish_reason = reason
            self._finish(reason)

    def score_prompt(self, logprobs: torch.Tensor) -> None:
        self._prompt_scores.append(logprobs)

    def prefilled(self) -> None:
        if self.prompt_top is not None:
            self.record_prompt(torch.cat(self._prompt_scores) if self._prompt_scores else
                               torch.empty(0, 1, device="cpu"))
            self._prompt_scores = []

    def record_prompt(self, logprobs: torch.Tensor) -> None:
        """Keep each prompt token's log-probability and alternatives, from logprobs (prompt_len - 1, vocab) of
        the positions before it; the first token has none."""
        texts = prompt_token_texts(self.tokenizer, self.prompt)
        infos = [TokenInfo(self.prompt[0], texts[0])]
        chosen = logprobs.gather(1, torch.tensor(self.prompt[1:], device=logprobs.device)[:, None])[:, 0].tolist()
        top = logprobs.topk(min(self.prompt_top, logprobs.shape[-1])) if self.prompt_top else None
        for i, token in enumerate(self.prompt[1:]):
            info = TokenInfo(token, texts[i + 1], chosen[i])
            if top is not None:
                alternatives = zip(top.indices[i].tolist(), top.values[i].tolist())
                info.top = [(self.tokenizer.decode([t]), lp) for t, lp in alternatives]
            infos.append(info)
        self.prompt_infos = infos

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
