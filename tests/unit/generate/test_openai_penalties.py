"""OpenAI's presence / frequency penalties and logit bias, checked against numbers worked out by hand."""
import pytest
import torch
from generate_models import peaked_model

from llamalab.errors import ConfigError
from llamalab.generate.decode import generate
from llamalab.generate.sampling import (
    SamplingParams,
    apply_logit_bias,
    apply_presence_frequency_penalties,
    make_generator,
    sample,
    token_counts,
)


def test_token_counts_count_each_id_and_skip_padding():
    ids = torch.tensor([[0, 2, 2, -1], [3, -1, -1, -1]])
    assert token_counts(ids, 4).tolist() == [[1, 0, 2, 0], [0, 0, 0, 1]]


def test_penalties_follow_openais_formula():
    # logit − frequency × count − presence × [count > 0]; counts of tokens 0..3 are 1, 0, 2, 0
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    counts = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    out = apply_presence_frequency_penalties(logits, counts, presence=0.5, frequency=0.25)
    assert out.tolist() == [[0.25, 2.0, 2.0, 0.5]]
    # negative penalties encourage repetition
    out = apply_presence_frequency_penalties(logits, counts, presence=-1.0, frequency=-0.5)
    assert out.tolist() == [[2.5, 2.0, 5.0, 0.5]]


def test_per_row_penalties_apply_to_their_row():
    logits = torch.zeros(2, 3)
    counts = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    out = apply_presence_frequency_penalties(logits, counts, torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.5]]))
    assert out.tolist() == [[-1.0, 0.0, 0.0], [-3.0, 0.0, 0.0]]


def test_frequency_penalty_counts_only_generated_tokens():
    """Token 1 leads by 1.0; generated twice, a frequency penalty of 0.6 costs it 1.2 and token 0 wins.
    The same token in the prompt (`previous`) costs nothing: OpenAI penalises the completion only."""
    logits = torch.tensor([[0.0, 1.0]])
    params = SamplingParams(temperature=0, frequency_penalty=0.6)
    assert sample(logits, params, generated=torch.tensor([[1, 1]])).item() == 0
    assert sample(logits, params, previous=torch.tensor([[1, 1]]), generated=torch.tensor([[0]])).item() == 1
    assert sample(logits, SamplingParams(temperature=0, presence_penalty=0.9),
                  generated=torch.tensor([[1, 1]])).item() == 1  # presence costs 0.9 once, whatever the count


def test_logit_bias_adds_to_each_rows_logits():
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    out = apply_logit_bias(logits, [((0, 5.0), (2, -1.5)), ()])
    assert out.tolist() == [[5.0, 1.0, 0.5], [0.0, 1.0, 2.0]]
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        apply_logit_bias(logits, [((3, 1.0),), ()])


def test_logit_bias_of_plus_100_forces_and_minus_100_bans_a_token():
    logits = torch.tensor([[3.0, 0.0, 1.0, 2.0]])
    forced = SamplingParams(temperature=1.0, logit_bias={1: 100})
    banned = SamplingParams(temperature=1.0, logit_bias={0: -100, 3: -100})
    draws = [sample(logits, forced, make_generator(s)).item() for s in range(20)]
    assert draws == [1] * 20
    assert 0 not in {sample(logits, banned, make_generator(s)).item() for s in range(50)}
    assert sample(logits, SamplingParams(temperature=0, logit_bias={2: 2.5})).item() == 2  # greedy sees it too


def test_generation_applies_the_bias_and_the_penalties():
    """Batched greedy generation equals a cache-free loop applying OpenAI's formulas to the generated tokens."""
    model = peaked_model()
    presence, frequency, prompts = 0.7, 0.9, [[1, 17, 33, 5], [2, 9]]
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            seq = list(prompt)
            for _ in range(12):
                logits = model(torch.tensor([seq]))[0, -1].tolist()
                for token in set(seq[len(prompt):]):
                    logits[token] -= presence + frequency * seq[len(prompt):].count(token)
                seq.append(max(range(len(logits)), key=logits.__getitem__))
            expected.append(seq[len(prompt):])
    params = SamplingParams(temperature=0, presence_penalty=presence, frequency_penalty=frequency)
    got = generate(model, prompts, 12, sampling=params)
    assert [c.tokens for c in got] == expected
    plain = generate(model, prompts, 12, sampling=SamplingParams(temperature=0))
    assert [c.tokens for c in plain] != expected  # the penalties changed something
    (c,) = generate(model, [[1, 17, 33]], 8, sampling=SamplingParams(temperature=0, logit_bias={42: 100}))
    assert c.tokens == [42] * 8


@pytest.mark.parametrize("bad, field", [
    (dict(presence_penalty=2.5), "presence_penalty"), (dict(frequency_penalty=-3), "frequency_penalty"),
    (dict(logit_bias={5: 101}), r"logit_bias\[5\]"), (dict(logit_bias={-1: 1}), "logit_bias key"),
    (dict(logit_bias={i: 1 for i in range(301)}), "301 entries"),
])
def test_out_of_range_openai_sampling_values_are_config_errors(bad, field):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**bad)
