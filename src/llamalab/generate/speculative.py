"""Speculative decoding: a small draft model proposes a few tokens, the target model checks them in one pass.

Greedy: a proposal is kept while it equals the target's argmax, so the output is exactly the target's
greedy output. Sampling: a proposal x is kept with probability min(1, p(x)/q(x)) and a rejection is
redrawn from max(0, p - q), which leaves the target's distribution p unchanged (Leviathan et al., 2023).
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
        if self.echo or self.penalize:
            raise ConfigError("speculative decoding supports neither echo nor a repetition penalty")
        self.draft, self.lookahead = draft, lookahead
        draft.setup_cache(1, self.cache_len)
        self.stats = {"proposed": 0, "accepted": 0}

    def __iter__(self) -> Iterator[list[list[int]]]:
        with torch.inference_mode():
            start = time.perf_counter()
            prompt = self.history[:, : self.lengths[0]]  # (1, prompt_len)
            target_logits = self.model(prompt, 0, last_only=True)[:, -1]  # (1, vocab)
            self.draft(prompt[:, :-1], 0, last_only=True)  # the draft's cache lags one token behind the sequence
            self.timings["prefill_s"] = time.perf_counter() - start
            start = time.perf_counter()
            _, new = self._accept(target_logits)
            seq, drafted = self.completions[0].prompt_tokens + new[0], self.lengths[0] - 1
            yield new
            while not self.done:
                new, drafted = self._speculate(seq, drafted)
                seq += new
                yield [new]
            self.timings["decode_s"] = time.perf_counter() - start

    def _speculate(self, seq: list[int], drafted: int) -> tuple[list[int], int]:
        """One round: propose up to `lookahead` tokens, verify them with one target pass, return the kept ones."""
        room = self.limits[0] - len(self.completions[0].tokens)  # tokens this row may still produce
        k = min(self.lookahead, room, self.cache_len - len(seq))
        device = self.history.device
        proposals, draft_probs = [], []
        pending = torch.tensor([seq[drafted:]], device=device)  # what the draft has not consumed yet
        for _ in range(k):
            logits = self.draft(pending, drafted, last_only=True)[:, -1]
            drafted += pending.shape[1]
            probs = probabilities(logits, self.sampling)  # (1, vocab)
            token = draw(probs, self.generators)
            proposals.append(int(token))
            draft_probs.append(probs)
            pending = token[:, None]

        # the target scores the last known token and every proposal in one pass: k + 1 next-token distributions
        candidates = torch.tensor([seq[-1:] + proposals], device=device)  # (1, k + 1)
        target_logits = self.model(candidates, len(seq) - 1)[0]  # (k + 1, vocab)
        kept = verify(proposals, torch.cat(draft_probs), probabilities(target_logits, self.sampling), self._generator)
        self.stats["proposed"] += k
        self.stats["accepted"] += len(kept) - 1
        new = []
        for i, token in enumerate(kept):
            new += self._record(0, token, self._logprob(target_logits[i], token))
            if self.done:
                break
        return new, min(drafted, len(seq) + len(kept) - 1)  # the draft's cache is valid up to the kept proposals

    @property
    def _generator(self) -> torch.Generator | None:
        return None if self.generators is None else self.generators[0]

    def _logprob(self, logits: torch.Tensor, token: int) -> float | None:
        return float(logits.log_softmax(-1)[token]) if self.want_logprobs else None


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
