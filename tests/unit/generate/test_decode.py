"""The prefill/decode loop checked against plain full-sequence forward passes (no KV cache)."""
import pytest
import torch
from generate_models import peaked_model

from llamalab.errors import ConfigError, ContextLengthError
from llamalab.generate import decode
from llamalab.generate.decode import Generation, generate
from llamalab.generate.sampling import SamplingParams, apply_repetition_penalty

GREEDY = SamplingParams(temperature=0)


@pytest.fixture
def model():
    return peaked_model()


def full_forward_greedy(model, prompt, n):
    """Greedy continuation by re-running the whole sequence without a cache at every step."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def full_logprobs(model, seq):
    """log p(seq[i+1] | seq[:i+1]) for every i, from one cache-free pass."""
    with torch.no_grad():
        logp = model(torch.tensor([seq]))[0].double().log_softmax(-1)
    return [float(logp[i, seq[i + 1]]) for i in range(len(seq) - 1)]


def test_greedy_equals_argmax_of_full_sequence_logits(model):
    prompt = [1, 17, 33, 5]
    (c,) = generate(model, [prompt], 12, sampling=GREEDY)
    assert c.tokens == full_forward_greedy(model, prompt, 12)
    assert c.finish_reason == "length"


def test_repetition_penalty_covers_the_prompt_and_the_generated_tokens(model):
    """Greedy with a penalty equals a cache-free loop penalising every token of the sequence so far."""
    prompts, penalty = [[1, 17, 33, 5], [2, 9]], 3.0
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            seq = list(prompt)
            for _ in range(10):
                logits = apply_repetition_penalty(model(torch.tensor([seq]))[:, -1], torch.tensor([seq]), penalty)
                seq.append(int(logits.argmax()))
            expected.append(seq[len(prompt):])
    got = generate(model, prompts, 10, sampling=SamplingParams(temperature=0, repetition_penalty=penalty))
    assert [c.tokens for c in got] == expected


def test_ragged_batch_equals_each_prompt_alone(model):
    prompts = [[1, 4, 9], [1, 2, 3, 4, 5, 6, 7, 8], [1], [1, 50, 60, 70, 80]]
    batched = generate(model, prompts, 10, sampling=GREEDY)
    for prompt, c in zip(prompts, batched):
        model.clear_cache()
        assert c.tokens == generate(model, [prompt], 10, sampling=GREEDY)[0].tokens
        assert c.tokens == full_forward_greedy(model, prompt, 10)


def test_seeded_sampling_is_reproducible_and_per_row(model):
    prompts = [[1, 4, 9], [1, 2, 3, 4, 5, 6]]
    params = SamplingParams(temperature=1.5, top_k=40, seed=123)
    first = [c.tokens for c in generate(model, prompts, 15, sampling=params)]
    again = [c.tokens for c in generate(model, prompts, 15, sampling=params)]
    alone = generate(model, prompts[1:], 15, sampling=params)[0].tokens
    other_seed = SamplingParams(temperature=1.5, top_k=40, seed=124)
    other = [c.tokens for c in generate(model, prompts, 15, sampling=other_seed)]
    assert first == again
    assert first[1] == alone  # a row's draws come from its own seeded generator
    assert first != other


def test_each_row_stops_on_its_own_stop_id(model):
    prompts = [[1, 4, 9], [1, 2, 3, 4, 5, 6]]
    free = generate(model, prompts, 10, sampling=GREEDY)
    stop = free[0].tokens[3]  # the 4th token of row 0 becomes a stop id
    stopped = generate(model, prompts, 10, sampling=GREEDY, stop_ids=[stop])
    first = free[0].tokens.index(stop)
    assert stopped[0].tokens == free[0].tokens[:first] and stopped[0].finish_reason == "stop"
    if stop in free[1].tokens:
        assert stopped[1].tokens == free[1].tokens[: free[1].tokens.index(stop)]
    else:
        assert stopped[1].tokens == free[1].tokens and stopped[1].finish_reason == "length"


def test_logprobs_and_echo_match_a_full_pass(model):
    prompts = [[1, 4, 9, 22], [1, 2]]
    completions = generate(model, prompts, 6, sampling=GREEDY, logprobs=True, echo=True)
    for prompt, c in zip(prompts, completions):
        expected = full_logprobs(model, prompt + c.tokens)
        assert c.prompt_logprobs == pytest.approx(expected[: len(prompt) - 1], abs=1e-4)
        assert c.logprobs == pytest.approx(expected[len(prompt) - 1:], abs=1e-4)


def test_chunked_prefill_gives_the_same_tokens(model, monkeypatch):
    prompts = [[1] + list(range(5, 25)), [1, 3, 5]]
    whole = generate(model, prompts, 5, sampling=GREEDY, echo=True)
    monkeypatch.setattr(decode, "PREFILL_LOGITS_BYTES", 4 * 2 * 97 * 3)  # chunks of 3 positions
    model.clear_cache()
    chunked = generate(model, prompts, 5, sampling=GREEDY, echo=True)
    for a, b in zip(whole, chunked):
        assert a.tokens == b.tokens
        assert a.prompt_logprobs == pytest.approx(b.prompt_logprobs, abs=1e-4)


def test_generation_stops_at_the_end_of_the_context(model):
    prompt = list(range(1, 60))  # 59 of the 64 positions
    (c,) = generate(model, [prompt], 100, sampling=GREEDY)
    assert len(c.tokens) == 5 and c.finish_reason == "length"


def test_prompt_over_the_context_is_an_error_unless_truncated(model):
    prompt = list(range(1, 70))
    with pytest.raises(ContextLengthError, match="truncat"):
        generate(model, [prompt], 4)
    (c,) = generate(model, [prompt], 4, sampling=GREEDY, truncate=True)
    assert c.prompt_tokens == prompt[-60:] and len(c.tokens) == 4


def test_empty_prompt_and_bad_lengths_are_config_errors(model):
    with pytest.raises(ConfigError, match="empty"):
        generate(model, [[1, 2], []], 4)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(model, [[1, 2]], 0)


def test_iteration_yields_the_tokens_as_they_come(model):
    generation = Generation(model, [[1, 2, 3], [1, 5]], 4, sampling=GREEDY)
    steps = list(generation)
    assert len(steps) == 4
    for row, c in enumerate(generation.completions):
        assert [t for step in steps for t in step[row]] == c.tokens
