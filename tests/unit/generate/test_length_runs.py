"""A decode step with one row far longer than the others runs that row as its own attention part (so the short rows
do not read up to its length), and every row still gets the tokens it gets alone."""
import pytest
import torch
from generate_models import peaked_model

from llamalab.generate.decode import Completion
from llamalab.generate.engine import Engine
from llamalab.generate.sampling import SamplingParams
from llamalab.quantize.native import kernels
from llamalab.quantize.native_decode import native_step


def output_alone(model, prompt, max_tokens, params):
    """The tokens `prompt` gets decoded on its own, on a fixed cache of one row."""
    model.setup_cache(batch_size=1, max_seq_len=256)
    engine, seq = Engine(model, 1, 256), Completion(prompt, max_tokens, params)
    engine.admit([seq])
    while not seq.done:
        engine.step()
    return seq.output


def test_rows_far_longer_than_the_median_are_runs_of_their_own():
    assert Engine._length_runs([10, 12, 11]) == [(0, 3)]
    assert Engine._length_runs([10, 12, 300, 11, 9]) == [(0, 2), (2, 3), (3, 5)]  # 300 > 2 * 11 + 64
    assert Engine._length_runs([300, 10, 12]) == [(0, 1), (1, 3)]
    assert Engine._length_runs([10, 300]) == [(0, 1), (1, 2)]
    assert Engine._length_runs([10, 12, 86, 11, 9]) == [(0, 5)]  # 2 * 11 + 64 = 86 is still in
    assert Engine._length_runs([10, 12, 87, 11, 9]) == [(0, 2), (2, 3), (3, 5)]


@pytest.mark.parametrize("c_step", [False, True], ids=["model forward", "C step"])
def test_a_long_row_decoding_beside_short_ones_gives_every_row_its_tokens_alone(c_step):
    """Through the model's forward the long row is an attention part of its own; the C step reads each row's own
    positions anyway, so its steps stay one decode call."""
    if c_step and kernels() is None:
        pytest.skip("no C compiler on this machine")
    torch.manual_seed(0)
    model = peaked_model(max_seq_len=256)
    prompts = [list(range(2, 14)), [(7 * i) % 90 + 3 for i in range(180)], list(range(20, 29))]
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.9, top_p=0.9, seed=3),
              SamplingParams(temperature=0)]
    alone = [output_alone(model, prompt, 12, p) for prompt, p in zip(prompts, params)]
    model.setup_paged_cache(num_blocks=64, block_size=8, batch_size=3, max_seq_len=256)
    engine = Engine(model, 3, 256, step=native_step(model) if c_step else None)
    seqs = [Completion(prompt, 12, p) for prompt, p in zip(prompts, params)]
    for seq in seqs:
        engine.admit([seq])
    calls = []
    packed = engine.calls.packed
    engine.calls.packed = lambda parts: calls.append([(row, len(t)) for t, _, row, _ in parts]) or packed(parts)
    with torch.inference_mode():  # as the server runs it (the C step leaves steps recording gradients to the model)
        while not all(s.done for s in seqs):
            engine.step()
    assert [s.output for s in seqs] == alone
    if c_step:
        assert not calls and engine.calls.step.cache is model.kv_cache  # every step one C call
    else:
        assert calls and all(parts == [(0, 1), (1, 1), (2, 1)] for parts in calls)  # the 180-token row on its own


def test_rows_waiting_for_prefill_budget_join_the_decode_runs_and_keep_their_tokens():
    """Behind a long prompt that takes the step's whole prefill budget, newer prompts feed one token per step: they
    ride in the runs of decoding rows instead of each being an attention part of its own (8 of them made a CPU step
    ~330 ms), and every row still gets its tokens alone."""
    torch.manual_seed(0)
    model = peaked_model(max_seq_len=256)
    prompts = [list(range(2, 10)), list(range(30, 36)), [(7 * i) % 90 + 3 for i in range(120)],
               list(range(40, 52)), list(range(60, 71)), list(range(5, 18))]
    params = SamplingParams(temperature=0)
    alone = [output_alone(model, prompt, 10, params) for prompt in prompts]
    model.setup_paged_cache(num_blocks=80, block_size=8, batch_size=6, max_seq_len=256)
    engine = Engine(model, 6, 256, prefill_chunk=8)
    seqs = [Completion(prompt, 10, params) for prompt in prompts]
    for seq in seqs[:2]:
        engine.admit([seq])
    engine.step()
    for seq in seqs[2:]:  # the long prompt first: it is the oldest filling row and takes the budget
        engine.admit([seq])
    calls = []
    packed = engine.calls.packed
    engine.calls.packed = lambda parts: calls.append([(row, tuple(t.shape)) for t, _, row, _ in parts]) or packed(parts)
    engine.step()
    # the decoding run, the long prompt's chunk and next token, the three waiting prompts' next tokens together
    assert calls[0] == [(0, (2, 1)), (2, (1, 9)), (3, (3, 1))]
    while not all(s.done for s in seqs):
        engine.step()
    assert [s.output for s in seqs] == alone
