"""Batched generation on the static KV cache: prefill the prompts, then decode one token per row per step.

Prompts of different lengths are right-padded and prefilled together (causal attention keeps the
padding invisible to the real tokens); decoding then places each row at its own position, and
each row stops on its own stop id or length limit.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from llamalab.errors import ConfigError, ContextLengthError
from llamalab.generate.sampling import SamplingParams, make_generator, sample, token_logprobs

# A decode step: (tokens (bsz, 1), start_pos int or (bsz,) tensor) -> next-token logits (bsz, vocab).
Step = Callable[[torch.Tensor, "int | torch.Tensor"], torch.Tensor]

PREFILL_LOGITS_BYTES = 256 * 2**20  # full-sequence prefill logits are computed in chunks of at most this size


@dataclass
class Completion:
    """One prompt's result. `tokens` are the generated ids; a stop id that ended the row is not among them."""

    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None  # log p of each generated token under the model's raw distribution
    prompt_logprobs: list[float] | None = None  # echo: log p of each prompt token after the first
    finish_reason: str | None = None  # "stop" (a stop id or stop string) or "length"
    text: str = ""  # the decoded text, filled in by the text layer


def eager_step(model: torch.nn.Module) -> Step:
    """The plain decode step: one forward pass computing only the last position's logits."""

    def step(tokens: torch.Tensor, start_pos: int | torch.Tensor) -> torch.Tensor:
        return model(tokens, start_pos, last_only=True)[:, -1]

    return step


class Generation:
    """One batched generation. Iterating runs it, yielding each step's new tokens of each row (often one, or none).

    After the iteration `completions` holds the results and `timings` the prefill and decode times.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
        stop_ids: Iterable[int] = (),
        logprobs: bool = False,
        echo: bool = False,
        truncate: bool = False,
        step: Step | None = None,
    ):
        if not prompts:
            raise ConfigError("no prompts given: pass at least one prompt")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.model, self.step = model, step or eager_step(model)
        self.sampling, self.stop_ids = sampling, frozenset(stop_ids)
        self.want_logprobs, self.echo = logprobs, echo
        context = model.args.max_seq_len
        prompts = [fit_context(list(p), context, max_new_tokens, truncate, row) for row, p in enumerate(prompts)]
        self.completions = [
            Completion(p, logprobs=[] if logprobs else None, prompt_logprobs=[] if echo else None) for p in prompts
        ]
        self.lengths = [len(p) for p in prompts]
        self.cache_len = self._ensure_cache(len(prompts), min(context, max(self.lengths) + max_new_tokens))
        self.limits = [min(max_new_tokens, self.cache_len - n) for n in self.lengths]
        self.timings = {"prefill_s": 0.0, "decode_s": 0.0}

        device = model.tok_embeddings.weight.device
        rows = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        self.generators = [make_generator(p.seed, device) for p in rows]
        if all(g is None for g in self.generators):
            self.generators = None
        # each row's prompt, then (for the repetition penalty) its new tokens; -1 after its end
        self.history = torch.full((len(prompts), self.cache_len), -1, dtype=torch.long, device=device)
        for row, p in enumerate(prompts):
            self.history[row, : len(p)] = torch.tensor(p)
        self.penalize = any(p.repetition_penalty != 1 for p in rows)
        self.count_generated = any(p.counts_generated for p in rows)  # presence / frequency penalties

    def _ensure_cache(self, batch_size: int, length: int) -> int:
        """Reuse the model's KV cache when it is large enough, else allocate one; return its length."""
        shape = self.model.cache_shape
        if shape is None or shape[0] < batch_size or shape[1] < length:
            self.model.setup_cache(batch_size, length)
            shape = self.model.cache_shape
        return shape[1]

    def finish(self, row: int, reason: str = "stop") -> None:
        """End a row early (the text layer calls this when a stop string appears)."""
        if self.completions[row].finish_reason is None:
            self.completions[row].finish_reason = reason

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.completions)

    def __iter__(self) -> Iterator[list[list[int]]]:
        with torch.inference_mode():
            start = time.perf_counter()
            logits = self._prefill()
            self.timings["prefill_s"] = time.perf_counter() - start
            start = time.perf_counter()
            shared = len(set(self.lengths)) == 1  # rows at one position: an int start_pos, no mask needed
            lengths = torch.tensor(self.lengths, device=self.history.device)
            for index in range(max(self.limits)):
                tokens, new = self._accept(logits)
                yield new
                if self.done:
                    break
                # a finished row keeps decoding whatever it samples, at a position that stays in the cache
                positions = self.lengths[0] + index if shared else (lengths + index).clamp(max=self.cache_len - 1)
                logits = self.step(tokens[:, None], positions)
            self.timings["decode_s"] = time.perf_counter() - start

    def _prefill(self) -> torch.Tensor:
        """Run the right-padded prompts through the model; return each row's next-token logits (bsz, vocab)."""
        bsz, longest = len(self.lengths), max(self.lengths)
        tokens = self.history[:, :longest].clamp(min=0)  # (bsz, longest), padding as token 0
        ends = [n - 1 for n in self.lengths]
        vocab = self.model.args.vocab_size
        chunk = max(1, PREFILL_LOGITS_BYTES // (4 * bsz * vocab))
        last = [None] * bsz
        for begin in range(0, longest, chunk):
            end = min(begin + chunk, longest)
            full = self.echo or any(begin <= e < end - 1 for e in ends)  # some row ends before the chunk's end
            logits = self.model(tokens[:, begin:end], begin, last_only=not full)  # (bsz, end-begin or 1, vocab)
            for row, e in enumerate(ends):
                if begin <= e < end:
                    last[row] = logits[row, e - begin if full else -1]
            if self.echo:
                targets = self.history[:, begin + 1 : end + 1].clamp(min=0)  # (bsz, <= end-begin)
                lp = token_logprobs(logits[:, : targets.shape[1]], targets)
                for row, c in enumerate(self.completions):
                    c.prompt_logprobs += lp[row, : max(0, min(end, ends[row]) - begin)].tolist()
        return torch.stack(last)

    def _accept(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
        """Sample each row's next token from logits (bsz, vocab); record those of running rows."""
        previous = self.history if self.penalize else None
        generated = generated_ids([c.tokens for c in self.completions], logits.device) if self.count_generated else None
        tokens = sample(logits, self.sampling, self.generators, previous, generated)  # (bsz,)
        logprobs = token_logprobs(logits, tokens).tolist() if self.want_logprobs else [None] * len(self.lengths)
        return tokens, [self._record(row, t, lp) for row, (t, lp) in enumerate(zip(tokens.tolist(), logprobs))]

    def _record(self, row: int, token: int, logprob: float | None = None) -> list[int]:
        """Append a running row's new token unless it is a stop id; end the row on a stop or its limit."""
        c = self.completions[row]
        if c.finish_reason is not None:
            return []
        if self.penalize:  # only the penalty reads the history; on a GPU each write is a kernel launch per row
            self.history[row, self.lengths[row] + len(c.tokens)] = token
        if token in self.stop_ids:
            c.finish_reason = "stop"
            return []
        c.tokens.append(token)
        if c.logprobs is not None:
            c.logprobs.append(logprob)
        if len(c.tokens) >= self.limits[row]:
            c.finish_reason = "length"
        return [token]


def generated_ids(rows: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> torch.Tensor:
    """Each row's generated ids right-padded with -1: (batch, longest), what the presence / frequency penalties read."""
    longest = max((len(r) for r in rows), default=0)
    return torch.tensor([list(r) + [-1] * (longest - len(r)) for r in rows], dtype=torch.long, device=device)


def fit_context(prompt: list[int], context: int, max_new_tokens: int, truncate: bool, row: int = 0) -> list[int]:
    """The prompt, checked to leave room for a new token; with `truncate`, its oldest tokens dropped to make room."""
    if not prompt:
        raise ConfigError(f"prompt {row} is empty: give at least one token (text prompts start with BOS)")
    if truncate:
        keep = max(1, context - max_new_tokens)
        return prompt[-keep:]
    if len(prompt) >= context:
        raise ContextLengthError(
            f"prompt {row} has {len(prompt)} tokens but the context holds {context} including at least one "
            "new token; shorten the prompt or ask for truncation (truncate=True, --truncate)"
        )
    return prompt


def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, **options) -> list[Completion]:
    """Run a `Generation` to the end and return its completions (options as for `Generation`)."""
    generation = Generation(model, prompts, max_new_tokens, **options)
    for _ in generation:
        pass
    return generation.completions
