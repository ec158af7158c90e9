"""Batched generation: prefill the prompts together, then decode one token per row per step, on the `Engine`.

Prompts of different lengths are right-padded and prefilled together (causal attention keeps the
padding invisible to the real tokens); decoding then places each row at its own position, and
each row stops on its own stop id or length limit.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

import torch

from llamalab.errors import ConfigError, ContextLengthError
from llamalab.generate import engine
from llamalab.generate.engine import PREFILL_LOGITS_BYTES, Engine, Step, eager_step
from llamalab.generate.sampling import SamplingParams

__all__ = ["PREFILL_LOGITS_BYTES", "Completion", "Generation", "Step", "eager_step", "fit_context", "generate",
           "generated_ids"]


class Completion(engine.Sequence):
    """One prompt's result. `tokens` are the generated ids; a stop id that ended the row is not among them."""

    def __init__(self, prompt: Sequence[int], max_tokens: int, params: SamplingParams = SamplingParams(), **options):
        super().__init__(prompt, max_tokens, params, **options)
        self.text = ""  # the decoded text, filled in by the text layer

    @property
    def prompt_tokens(self) -> list[int]:
        return self.prompt

    @property
    def tokens(self) -> list[int]:
        return self.output


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
        vocab_size: int | None = None,
    ):
        """vocab_size: the tokenizer's, when the model's embedding is padded past it (those ids are never sampled)."""
        if not prompts:
            raise ConfigError("no prompts given: pass at least one prompt")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.model, self.sampling, self.echo = model, sampling, echo
        context = model.args.max_seq_len
        prompts = [fit_context(list(p), context, max_new_tokens, truncate, row) for row, p in enumerate(prompts)]
        rows = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        if len(rows) != len(prompts):
            raise ConfigError(
                f"got {len(rows)} sampling params for a batch of {len(prompts)} rows; give one or one per row")
        self.completions = [Completion(p, max_new_tokens, params, stop_ids=stop_ids, logprobs=logprobs, echo=echo)
                            for p, params in zip(prompts, rows)]
        longest = max(len(p) for p in prompts)
        self.engine = Engine(model, len(prompts), min(context, longest + max_new_tokens), step=step,
                             vocab_size=vocab_size)
        self.cache_len = self.engine.max_seq_len
        self.timings = {"prefill_s": 0.0, "decode_s": 0.0}

    def finish(self, row: int, reason: str = "stop") -> None:
        """End a row early (the text layer calls this when a stop string appears)."""
        self.completions[row].finish(reason)

    @property
    def done(self) -> bool:
        return all(c.done for c in self.completions)

    def __iter__(self) -> Iterator[list[list[int]]]:
        with torch.inference_mode():
            start = time.perf_counter()
            new = self.engine.admit(self.completions)
            self.timings["prefill_s"] = time.perf_counter() - start
            start = time.perf_counter()
            yield new
            waiting: list[Completion] = []  # preempted by a paged cache that ran out of blocks
            while not self.done:
                kept = self.engine.step()
                by_row = {id(seq): tokens for seq, tokens in zip(self.engine.rows, kept)}
                waiting += self.engine.take_preempted()
                if waiting:
                    self._readmit(waiting, by_row)
                yield [by_row.get(id(c), []) for c in self.completions]
            self.engine.release()  # a paged cache gets its blocks back
            self.timings["decode_s"] = time.perf_counter() - start


    def _readmit(self, waiting: list[Completion], by_row: dict[int, list[int]]) -> None:
        """Admit preempted rows again, oldest first, as far as the cache has room once the finished rows are freed."""
        self.engine.release()
        while waiting and self.engine.fits(waiting[0]):
            seq = waiting.pop(0)
            by_row[id(seq)] = self.engine.admit([seq])[0]
        if waiting and not self.engine.rows:
            raise ConfigError(f"the paged KV cache ({self.engine.cache.num_blocks} blocks) cannot hold one row of "
                              f"{len(waiting[0].prompt) + len(waiting[0].output) + 1} positions; give it more blocks")


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


def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             **options) -> list[Completion]:
    """Run a `Generation` to the end and return its completions (options as for `Generation`)."""
    generation = Generation(model, prompts, max_new_tokens, **options)
    for _ in generation:
        pass
    return generation.completions
