"""Speculative decoding: a small draft model proposes a few tokens, the target model checks them in one pass.

Greedy: a proposal is kept while it equals the target's argmax, so the output is exactly the target's
greedy output. Sampling: a proposal x is kept with probability min(1, p(x)/q(x)) and a rejection is
redrawn from max(0, p - q), which leaves the target's distribution p unchanged (Leviathan et al., 2023).
The prompt goes through the `Engine` like any generation; the kept tokens go to the same `Sequence`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch

from llamalab.errors import ConfigError
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import draw, probabilities


class SpeculativeGeneration(Generation):
    """A `Generation` of one prompt whose tokens come `lookahead` at a time from `draft`, verified by `model`."""

    def __init__(self, model, draft, prompts: Sequence[Sequence[int]], max_new_tokens: int, lookahead: int = 4,
                 **options):
        if len(prompts) != 1:
            raise ConfigError(f"speculative decoding takes one prompt at a time, got {len(prompts)}")
        if draft.args.vocab_size != model.args.vocab_size:
            raise ConfigError(
                f"the draft model's vocabulary ({draft.args.vocab_size}) differs from the target's "
                f"({model.args.vocab_size}); use a draft trained with the same tokenizer"
            )
        if lookahead < 1:
            raise ConfigError(f"lookahead must be at least 1, got {lookahead}")
        super().__init__(model, prompts, max_new_tokens, **options)
        seq = self.completions[0]
        if self.echo or seq.params.repetition_penalty != 1 or seq.params.counts_generated:
            raise ConfigError("speculative decoding supports neither echo nor repetition / presence / frequency "
                              "penalties")
        self.draft, self.lookahead = draft, lookahead
        draft.setup_cache(1, self.cache_len)
        self.stats = {"proposed": 0, "accepted": 0}

    def __iter__(self) -> Iterator[list[list[int]]]:
        with torch.inference_mode():
            row = self.completions[0]
            start = time.perf_counter()
            new = self.engine.admit([row])  # the target's prefill and first token
            prompt = torch.tensor([row.prompt], device=self.model.device)  # (1, prompt_len)
            self.draft(prompt[:, :-1], 0, last_only=True)  # the draft's cache lags one token behind the sequence
            self.timings["prefill_s"] = time.perf_counter() - start
            start = time.perf_counter()
            seq, drafted = row.prompt + new[0], len(row.prompt) - 1
            yield new
            while not self.done:
                new, drafted = self._speculate(seq, drafted)
                seq += new
                yield [new]
            self.timings["decode_s"] = time.perf_counter() - start

    def _speculate(self, seq: list[int], drafted: int) -> tuple[list[int], int]:
        """One round: propose up to `lookahead` tokens, verify them with one target pass, return the kept ones."""
        row = self.completions[0]
        room = row.max_tokens - len(row.output)  # tokens this row may still produce
        k = min(self.lookahead, room, self.cache_len - len(seq))
        device = self.model.device
        proposals, draft_probs = [], []
        pending = torch.tensor([seq[drafted:]], device=device)  # what the draft has not consumed yet
        for _ in range(k):
            logits = self.draft(pending, drafted, last_only=True)[:, -1]
            drafted += pending.shape[1]
            probs = probabilities(logits, row.params)  # (1, vocab)
            token = draw(probs, row.generator)
            proposals.append(int(token))
            draft_probs.append(probs)
            pending = token[:, None]

        # the target scores the last known token and every proposal in one pass: k + 1 next-token distributions
        candidates = torch.tensor([seq[-1:] + proposals], device=device)  # (1, k + 1)
        target_logits = self.model(candidates, len(seq) - 1)[0]  # (k + 1, vocab)
        kept = verify(proposals, torch.cat(draft_probs), probabilities(target_logits, row.params), row.generator)
        self.stats["proposed"] += k
        self.stats["accepted"] += len(kept) - 1
        new = []
        for i, token in enumerate(kept):
            logprob = float(target_logits[i].log_softmax(-1)[token]) if row.logprobs is not None else None
            if row.accept(token, logprob):
                new.append(token)
            if self.done:
                break
        return new, min(drafted, len(seq) + len(kept) - 1)  # the draft's cache is valid up to the kept proposals


def verify(proposals: list[int], draft_probs: torch.Tensor, target_probs: torch.Tensor,
           generator: torch.Generator | None = None) -> list[int]:
    """The kept tokens: the accepted prefix of the k proposals, then one token drawn from the target.

    draft_probs (k, vocab) proposed them; target_probs (k + 1, vocab) are the target's distributions
    after each prefix. A proposal x is kept with probability min(1, p(x) / q(x)); the first rejected
    one is replaced by a draw from max(0, p - q); when all are kept the target adds one more token.
    """
    for i, token in enumerate(proposals):
        p, q = target_probs[i, token], draft_probs[i, token]
        if torch.rand((), generator=generator, device=p.device) * q >= p:
            residual = (target_probs[i] - draft_probs[i]).clamp(min=0)  # what p has beyond q
            return proposals[:i] + [int(draw(residual[None], generator))]
    return proposals + [int(draw(target_probs[-1:], generator))]
