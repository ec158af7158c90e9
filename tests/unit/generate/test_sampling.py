"""Samplers checked against direct definitions written with plain Python / NumPy."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llamalab.errors import ConfigError
from llamalab.generate.sampling import (
    SamplingParams,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    draw,
    make_generator,
    sample,
    token_logprobs,
)

# distinct logits at least 1/64 apart, so that "the k largest" and "the nucleus" are unambiguous
distinct_logits = st.lists(st.integers(-512, 512), min_size=2, max_size=40, unique=True).map(
    lambda xs: [x / 64 for x in xs])


def softmax64(logits):
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def nucleus(logits, p):
    """The smallest set of most likely tokens whose probability reaches p."""
    probs = softmax64(logits)
    kept, total = set(), 0.0
    for i in np.argsort(-probs):
        kept.add(int(i))
        total += probs[i]
        if total >= p:
            break
    return kept


def kept_by(filtered):
    return set(torch.isfinite(filtered[0]).nonzero().flatten().tolist())


@settings(max_examples=60, deadline=None)
@given(distinct_logits, st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_top_k_never_samples_outside_the_k_largest(values, k, seed):
    logits = torch.tensor([values])
    expected = set(np.argsort(-np.asarray(values))[:k].tolist())
    assert kept_by(apply_top_k(logits, k)) == expected
    token = sample(logits, SamplingParams(top_k=k), make_generator(seed))
    assert int(token) in expected


@settings(max_examples=60, deadline=None)
@given(distinct_logits, st.floats(0.01, 1.0), st.integers(0, 2**31 - 1))
def test_top_p_keeps_the_nucleus(values, p, seed):
    logits = torch.tensor([values])
    kept = kept_by(apply_top_p(logits, p))
    # float32 cumulative sums may differ from float64 right at the boundary: allow 1e-5 either way
    assert nucleus(values, max(p - 1e-5, 1e-9)) <= kept <= nucleus(values, min(p + 1e-5, 1.0))
    token = sample(logits, SamplingParams(top_p=p), make_generator(seed))
    assert int(token) in kept


@settings(max_examples=60, deadline=None)
@given(distinct_logits, st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_min_p_drops_tokens_below_the_scaled_maximum(values, min_p, seed):
    probs = softmax64(values)
    logits = torch.tensor([values])
    kept = kept_by(apply_min_p(logits, min_p))
    margin = 1e-5 * probs.max()
    assert {i for i, q in enumerate(probs) if q >= min_p * probs.max() + margin} <= kept
    assert kept <= {i for i, q in enumerate(probs) if q >= min_p * probs.max() - margin}
    token = sample(logits, SamplingParams(min_p=min_p), make_generator(seed))
    assert int(token) in kept


def test_greedy_is_argmax_and_ignores_the_generator():
    logits = torch.randn(4, 100)
    assert torch.equal(sample(logits, SamplingParams(temperature=0)), logits.argmax(-1))
    assert torch.equal(sample(logits, SamplingParams(temperature=0, top_k=5, top_p=0.3)), logits.argmax(-1))


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000
    tokens = draw(probs.log().expand(n, 4).softmax(-1), make_generator(0))
    freq = torch.bincount(tokens, minlength=4).float() / n
    # 4 standard errors of a binomial proportion
    assert torch.all((freq - probs).abs() < 4 * (probs * (1 - probs) / n).sqrt())


def test_tokens_of_probability_zero_are_never_drawn():
    probs = torch.tensor([[0.0, 0.6, 0.0, 0.4, 0.0, 0.0]]).expand(20000, 6)  # zeros first, between and last
    tokens = draw(probs, make_generator(1))
    assert set(tokens.tolist()) == {1, 3}


def test_the_largest_uniform_draw_still_lands_on_a_token_of_positive_probability(monkeypatch):
    """u * total can round up to the total itself (u = 1 - 2^-24, the largest torch.rand gives): the draw is then
    the last token of positive probability, not the vocabulary's last entry."""
    probs = torch.tensor([[0.0, 0.3, 0.7, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0, 0.8]])
    monkeypatch.setattr(torch, "rand", lambda n, *args, **kwargs: torch.full((n, 1), 1 - 2**-24))
    assert draw(probs).tolist() == [2, 4]
    monkeypatch.setattr(torch, "rand", lambda n, *args, **kwargs: torch.ones(n, 1))  # past every cdf: the same
    assert draw(probs).tolist() == [2, 4]


def test_temperature_sharpens_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(8000, 3)
    cold = sample(logits, SamplingParams(temperature=0.5), make_generator(0))
    hot = sample(logits, SamplingParams(temperature=2.0), make_generator(0))
    expected_cold = torch.softmax(torch.tensor([4.0, 2.0, 0.0]), -1)[0]
    expected_hot = torch.softmax(torch.tensor([1.0, 0.5, 0.0]), -1)[0]
    assert abs((cold == 0).float().mean() - expected_cold) < 0.02
    assert abs((hot == 0).float().mean() - expected_hot) < 0.02


def test_fixed_seed_gives_identical_draws_and_another_seed_differs():
    logits = torch.randn(3, 500)
    params = SamplingParams(temperature=1.5)
    a = [sample(logits, params, make_generator(7)) for _ in range(2)]
    b = torch.stack([sample(logits, params, make_generator(8)) for _ in range(5)])
    assert torch.equal(a[0], a[1])
    assert not all(torch.equal(a[0], row) for row in b)


def test_a_row_with_its_own_generator_draws_as_if_alone():
    logits = torch.randn(3, 300)
    alone = sample(logits[1:2], SamplingParams(), [make_generator(5)])
    batched = sample(logits, SamplingParams(), [make_generator(1), make_generator(5), make_generator(2)])
    assert batched[1] == alone[0]


def test_per_row_params_apply_to_their_row():
    logits = torch.randn(3, 200)
    rows = [SamplingParams(temperature=0), SamplingParams(top_k=1), SamplingParams(temperature=0.7, top_k=3)]
    tokens = sample(logits, rows, make_generator(0))
    assert tokens[0] == logits[0].argmax() and tokens[1] == logits[1].argmax()
    assert int(tokens[2]) in logits[2].topk(3).indices.tolist()


def test_repetition_penalty_follows_the_ctrl_formula():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]])
    previous = torch.tensor([[0, 1, -1], [2, 2, -1]])
    out = apply_repetition_penalty(logits, previous, 2.0)
    expected = torch.tensor([[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, -4.0, 0.0]])
    assert torch.equal(out, expected)
    # a strong penalty moves greedy off the repeated token
    assert sample(logits, SamplingParams(temperature=0, repetition_penalty=10.0),
                  previous=torch.tensor([[3], [-1]]))[0] == 0


def test_token_logprobs_are_log_softmax_entries():
    logits = torch.randn(2, 5, 11)
    tokens = torch.randint(0, 11, (2, 5))
    expected = torch.log(torch.softmax(logits.double(), -1)).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(token_logprobs(logits, tokens).double(), expected, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(top_p=0), dict(top_p=1.5), dict(temperature=-0.1), dict(top_k=-1),
                                 dict(min_p=2), dict(repetition_penalty=0), dict(temperature=float("nan"))])
def test_bad_sampling_values_are_config_errors_naming_the_field(bad):
    (name,) = bad
    with pytest.raises(ConfigError, match=name):
        SamplingParams(**bad)
