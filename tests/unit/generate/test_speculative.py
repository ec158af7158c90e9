"""Speculative decoding keeps the target model's output: exactly for greedy, in distribution for sampling."""
import pytest
import torch
from generate_models import peaked_model

from llamalab.errors import ConfigError
from llamalab.generate.decode import generate
from llamalab.generate.sampling import SamplingParams
from llamalab.generate.speculative import SpeculativeGeneration, verify

GREEDY = SamplingParams(temperature=0)


def speculate(target, draft, prompt, n, **options):
    generation = SpeculativeGeneration(target, draft, [prompt], n, **options)
    steps = list(generation)
    return generation, steps


@pytest.mark.parametrize("lookahead", [1, 3, 6])
def test_speculative_greedy_equals_plain_greedy(lookahead):
    target, draft = peaked_model(), peaked_model(n_layers=1)
    prompt = [1, 8, 20, 3]
    expected = generate(target, [prompt], 25, sampling=GREEDY, logprobs=True)[0]
    generation, steps = speculate(target, draft, prompt, 25, sampling=GREEDY, lookahead=lookahead, logprobs=True)
    (c,) = generation.completions
    assert c.tokens == expected.tokens and c.finish_reason == "length"
    assert c.logprobs == pytest.approx(expected.logprobs, abs=1e-4)
    assert [t for step in steps for t in step[0]] == c.tokens
    assert generation.stats["accepted"] < generation.stats["proposed"]  # an unrelated draft is often wrong


def test_a_draft_equal_to_the_target_is_always_accepted():
    target = peaked_model()
    generation, steps = speculate(target, target, [1, 2, 3], 20, sampling=GREEDY, lookahead=4)
    assert generation.stats["accepted"] == generation.stats["proposed"]
    assert len(steps) == 1 + 4  # the first token, then rounds of 4 proposals + 1 bonus token
    assert generation.completions[0].tokens == generate(target, [[1, 2, 3]], 20, sampling=GREEDY)[0].tokens


def test_speculative_stops_on_a_stop_id_like_plain_decoding():
    target, draft = peaked_model(), peaked_model(n_layers=1)
    free = generate(target, [[1, 9]], 20, sampling=GREEDY)[0].tokens
    stop = free[7]
    generation, _ = speculate(target, draft, [1, 9], 20, sampling=GREEDY, stop_ids=[stop])
    assert generation.completions[0].tokens == free[: free.index(stop)]
    assert generation.completions[0].finish_reason == "stop"


def test_verification_keeps_the_target_distribution():
    """The first two kept tokens follow the target's p (the second given the first), whatever the draft's q."""
    generator = torch.Generator().manual_seed(0)
    target_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    draft_probs = torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.4, 0.3, 0.2, 0.1]])
    n, firsts, seconds = 6000, torch.zeros(4), torch.zeros(4)
    for _ in range(n):
        first = int(torch.multinomial(draft_probs[0], 1, generator=generator))
        second = int(torch.multinomial(draft_probs[1], 1, generator=generator))
        kept = verify([first, second], draft_probs, target_probs, generator)
        firsts[kept[0]] += 1
        if kept[0] == first and len(kept) > 1:
            seconds[kept[1]] += 1  # the second token after an accepted first one
    p = target_probs[0]
    assert torch.all((firsts / n - p).abs() < 4 * (p * (1 - p) / n).sqrt())
    m, p2 = seconds.sum(), target_probs[1]
    assert torch.all((seconds / m - p2).abs() < 4 * (p2 * (1 - p2) / m).sqrt())


def test_verification_with_one_hot_distributions_keeps_the_matching_prefix():
    one_hot = torch.eye(5)
    kept = verify([2, 4, 1], one_hot[[2, 4, 1]], one_hot[[2, 4, 3, 0]])
    assert kept == [2, 4, 3]
    assert verify([2, 4], one_hot[[2, 4]], one_hot[[2, 4, 0]]) == [2, 4, 0]


def test_seeded_speculative_sampling_is_reproducible():
    target, draft = peaked_model(), peaked_model(n_layers=1)
    params = SamplingParams(temperature=1.0, seed=5)
    runs = [speculate(target, draft, [1, 2], 12, sampling=params)[0].completions[0].tokens for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 12


def test_speculative_rejects_batches_and_mismatched_vocabularies():
    target = peaked_model()
    with pytest.raises(ConfigError, match="one prompt"):
        SpeculativeGeneration(target, target, [[1], [2]], 4)
    with pytest.raises(ConfigError, match="vocabulary"):
        SpeculativeGeneration(target, peaked_model(vocab_size=50), [[1]], 4)
