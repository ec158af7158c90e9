"""Speculative sampling at temperature 0.7 with top-k keeps the target's distribution: over many seeds the tokens
it produces through the draft and the verification follow the exact tempered, truncated target probabilities.

At temperature 1 without top-k a verification fed the wrong q (the draft's plain softmax instead of the distribution
it sampled from) goes unnoticed; here it does not."""
import copy

import torch
from generate_models import peaked_model

from llamalab.generate.sampling import SamplingParams
from llamalab.generate.speculative import SpeculativeGeneration

TEMPERATURE, TOP_K, SEEDS, NEW = 0.7, 8, 24, 59
CHI2_LIMIT = 29.88  # chi-square, TOP_K - 1 = 7 degrees of freedom, p = 1e-4 (scipy.stats.chi2.isf(1e-4, 7))
PROMPT = [1, 8, 12, 3]


def tempered_top_k(logits: torch.Tensor) -> torch.Tensor:
    """softmax(logits / T) over the k largest logits, zero elsewhere (written out here, not the sampler's code)."""
    scaled = logits.double() / TEMPERATURE
    kth = scaled.topk(TOP_K, dim=-1).values[..., -1:]
    return torch.where(scaled >= kth, scaled, torch.tensor(-torch.inf, dtype=scaled.dtype)).softmax(-1)


def test_speculative_tokens_follow_the_tempered_top_k_target():
    torch.manual_seed(3)
    target = peaked_model(vocab_size=16)
    draft = copy.deepcopy(target)  # close to the target, so that proposals are often but not always kept
    with torch.no_grad():
        draft.output.weight.add_(0.05 * torch.randn_like(draft.output.weight))
    observed, expected = torch.zeros(TOP_K), torch.zeros(TOP_K, dtype=torch.float64)
    proposed = accepted = 0
    for seed in range(SEEDS):
        params = SamplingParams(temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0, seed=seed)
        generation = SpeculativeGeneration(target, draft, [PROMPT], NEW, lookahead=3, sampling=params)
        list(generation)
        tokens = generation.completions[0].tokens
        proposed, accepted = proposed + generation.stats["proposed"], accepted + generation.stats["accepted"]
        with torch.no_grad():  # the target's exact next-token distribution at every position, in one causal pass
            p = tempered_top_k(target(torch.tensor([PROMPT + tokens]))[0, len(PROMPT) - 1:-1])  # (NEW, vocab)
        sorted_p, order = p.sort(dim=-1, descending=True)
        ranks = (order == torch.tensor(tokens)[:, None]).double().argmax(-1)  # each token's rank under p
        assert (sorted_p.gather(1, ranks[:, None]) > 0).all(), "a token outside the target's top-k"
        observed += torch.bincount(ranks, minlength=TOP_K)[:TOP_K]
        expected += sorted_p[:, :TOP_K].sum(0)
    assert 0.2 * proposed < accepted < 0.95 * proposed  # both paths (kept proposal, residual draw) are exercised
    # how often the most likely, second, ... token was chosen, against the exact expected counts (a verification
    # fed the draft's untempered softmax as q gives chi-square 40 here; the right q about 6)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_LIMIT, (chi2, observed.tolist(), expected.tolist())
