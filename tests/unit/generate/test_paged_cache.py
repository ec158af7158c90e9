"""The paged KV cache: the same logits and tokens as the static one, memory that follows the reserved positions,
and no block lost after many requests come and go."""
import random

import pytest
import torch
from generate_models import peaked_model

from llamalab.errors import ConfigError
from llamalab.generate.decode import Completion, generate
from llamalab.generate.engine import Engine
from llamalab.generate.sampling import SamplingParams


@pytest.fixture
def model():
    torch.manual_seed(0)
    return peaked_model()


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_prefill_then_decode_on_blocks_equals_the_full_forward(model, block_size):
    tokens = torch.randint(0, 97, (2, 20))
    full = model(tokens)  # no cache: one causal pass
    cache = model.setup_paged_cache(num_blocks=64, block_size=block_size, batch_size=2, max_seq_len=32)
    assert cache.reserve(0, 20) and cache.reserve(1, 20)
    pieces = [model(tokens[:, :7], 0)]  # prefill, then chunks and single tokens at a shared position
    pieces.append(model(tokens[:, 7:12], 7))
    pieces += [model(tokens[:, i:i + 1], torch.tensor([i, i]), kv_len=i + 1) for i in range(12, 20)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_rows_hold_blocks_scattered_over_the_pool(model):
    cache = model.setup_paged_cache(num_blocks=12, block_size=2, batch_size=3, max_seq_len=16)
    for length in range(1, 9):  # interleaved growth: each row's blocks end up non-contiguous
        for row in range(3):
            assert cache.reserve(row, length)
    assert cache.row_blocks[0] == [0, 3, 6, 9]
    assert not cache.reserve(0, 10) and cache.used_blocks == 12  # the pool is spent; nothing changes
    cache.free_row(1)
    assert cache.used_blocks == 8 and cache.can_reserve(8) and not cache.can_reserve(9)


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0),
                                      SamplingParams(temperature=0.9, top_p=0.9, seed=3, repetition_penalty=1.2)])
def test_generation_on_the_paged_cache_gives_the_static_tokens(model, sampling):
    prompts = [[5, 6, 7], list(range(10, 30)), [1] * 9]
    expected = [c.tokens for c in generate(model, prompts, 12, sampling=sampling)]
    model.setup_paged_cache(num_blocks=20, block_size=4, batch_size=3, max_seq_len=40)
    got = generate(model, prompts, 12, sampling=sampling)
    assert [c.tokens for c in got] == expected


def run_requests(engine: Engine, requests: list[Completion], cancel: random.Random | None = None) -> int:
    """Serve the requests as the server's scheduler does: first come, first served, admitted when they fit (and their
    prompt's first block is not being prefilled by another row), one prefill each, preempted ones back at the head of
    the queue; cancelling some at random when asked. Return the most that ran at once."""
    waiting, most = list(requests), 0
    while waiting or engine.rows:
        while waiting and engine.fits(waiting[0]) and not engine.waits_for_prefix(waiting[0]):
            engine.admit([waiting.pop(0)])
        assert engine.rows or not waiting, "a request that can never fit"
        most = max(most, len(engine.rows))
        engine.release()
        if engine.rows:
            engine.step()
            waiting[:0] = engine.take_preempted()
            if cancel is not None and engine.rows and cancel.random() < 0.3:
                cancel.choice(engine.rows).finish("stop")  # a client leaving mid-stream
            engine.release()
    return most


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_no_block_leaks_after_a_thousand_mixed_requests(model, prefix_caching):
    """Short and long prompts (chunked), some opening with a shared prefix, cancelled at random mid-stream, rows
    preempted as others grow: once all are done every block is free (or cached, held by no row)."""
    cache = model.setup_paged_cache(num_blocks=40, block_size=4, batch_size=16, max_seq_len=64,
                                    prefix_caching=prefix_caching)
    engine = Engine(model, 16, 64, prefill_chunk=6)
    rng = random.Random(0)
    shared = [rng.randrange(2, 97) for _ in range(12)]
    prompts = [(shared if rng.random() < 0.3 else []) + [rng.randrange(97) for _ in range(rng.randint(1, 20))]
               for _ in range(1000)]
    requests = [Completion(p, rng.randint(1, 12), SamplingParams(temperature=1.0, seed=i), stop_ids=[0, 1])
                for i, p in enumerate(prompts)]
    with torch.inference_mode():
        run_requests(engine, requests, cancel=random.Random(1))
    assert all(r.done for r in requests) and engine.preemptions > 0
    assert cache.used_blocks == 0 and sorted(cache.free + list(cache.unused)) == list(range(40))
    assert all(r == 0 for r in cache.refs) and (len(cache.unused) > 0) == prefix_caching
    assert all(not blocks for blocks in cache.row_blocks) and bool((cache.block_table == cache.spare).all())


def test_a_budget_in_blocks_serves_more_short_requests_at_once_than_the_same_bytes_as_slots(model):
    max_seq_len, budget_positions = 64, 2 * 64  # the bytes of two fixed slots of 64 positions
    short = [Completion([3, 4, 5, 6], 4, SamplingParams(temperature=0)) for _ in range(32)]
    model.setup_cache(batch_size=2, max_seq_len=max_seq_len)
    with torch.inference_mode():
        fixed = run_requests(Engine(model, 2, max_seq_len), short)
    expected = [r.tokens for r in short]
    model.setup_paged_cache(num_blocks=budget_positions // 8, block_size=8, batch_size=32, max_seq_len=max_seq_len)
    short = [Completion([3, 4, 5, 6], 4, SamplingParams(temperature=0)) for _ in range(32)]
    with torch.inference_mode():
        paged = run_requests(Engine(model, 32, max_seq_len), short)
    assert (fixed, paged) == (2, 16)  # 8 positions each: one block of 8 per request
    assert [r.tokens for r in short] == expected


def test_a_request_that_does_not_fit_is_refused_by_admit(model):
    model.setup_paged_cache(num_blocks=2, block_size=4, batch_size=4, max_seq_len=32)
    engine = Engine(model, 4, 32)
    big = Completion(list(range(10)), 4)
    assert not engine.fits(big)
    with pytest.raises(ConfigError, match="no room"):
        engine.admit([big])


@pytest.mark.parametrize("paged", [False, True])
def test_a_long_prompt_prefilled_in_chunks_beside_decoding_rows_gives_the_same_tokens(model, paged):
    prompts = [[5, 6, 7], [8, 9], list(range(10, 50))]  # the 40-token prompt arrives while two rows decode
    expected = [generate(model, [p], 10, sampling=SamplingParams(temperature=0))[0].tokens for p in prompts]
    if paged:
        model.setup_paged_cache(num_blocks=12, block_size=8, batch_size=3, max_seq_len=64)
    else:
        model.setup_cache(batch_size=3, max_seq_len=64)
    engine = Engine(model, 3, 64, prefill_chunk=8)
    rows = [Completion(p, 10, SamplingParams(temperature=0)) for p in prompts]
    passes = []  # forward passes per step: the chunk and the decoding rows share one
    for name in ("forward", "forward_packed"):
        method = getattr(model, name)
        setattr(model, name, lambda *a, method=method, **k: passes.append(1) or method(*a, **k))
    with torch.inference_mode():
        assert engine.admit(rows[:1]) == engine.admit(rows[1:2]) == [[]]  # no prefill yet: it goes with the steps
        first = engine.step()  # nobody decodes yet: both prompts whole, in one pass, and their first tokens
        assert first[0] and first[1]
        waited = 0
        assert engine.admit(rows[2:]) == [[]]
        while not all(r.done for r in rows):
            passes.clear()
            new = engine.step()
            assert len(passes) == 1
            if not rows[2].output:
                waited += 1
                assert new[0] and new[1]  # the decoding rows got a token in every step of the long prefill
    del model.forward, model.forward_packed
    assert waited == 4  # each step a chunk of 8 and the next prompt token: 9, 18, 27, 36; then 36..38 and 39 samples
    assert [r.tokens for r in rows] == expected


def test_prompts_sharing_a_prefix_share_its_blocks_and_give_the_same_tokens(model):
    system = list(range(40, 60))  # 20 tokens: two full blocks of 8 shared, the rest computed per request
    rng = random.Random(2)
    prompts = [system + [rng.randrange(97) for _ in range(rng.randint(1, 6))] for _ in range(12)]
    greedy = SamplingParams(temperature=0)
    expected = [generate(model, [p], 6, sampling=greedy)[0].tokens for p in prompts]
    cache = model.setup_paged_cache(num_blocks=14, block_size=8, batch_size=4, max_seq_len=64, prefix_caching=True)
    engine = Engine(model, 4, 64)
    rows = [Completion(p, 6, greedy) for p in prompts]
    with torch.inference_mode():
        run_requests(engine, rows)
    assert [r.tokens for r in rows] == expected
    assert cache.prefix_queries == sum((len(p) - 1) // 8 for p in prompts)  # full blocks before the last token
    assert cache.prefix_hits == 2 * 11  # every request but the first found both blocks of the system prompt
    assert cache.used_blocks == 0 and len(cache.unused) >= 2  # the shared blocks stay cached, held by none



def test_blocks_handed_out_for_the_first_time_are_zeroed(model):
    """The pool is allocated uninitialized (no memory touched up front); garbage there (NaN here) must not reach a
    row: masked positions are read too, and 0 x NaN is NaN."""
    prompts = [[5, 6, 7], list(range(10, 30)), [1] * 9]
    greedy = SamplingParams(temperature=0)
    expected = [c.tokens for c in generate(model, prompts, 12, sampling=greedy)]
    cache = model.setup_paged_cache(num_blocks=20, block_size=4, batch_size=3, max_seq_len=40)
    for layer in cache.layers:  # every block but the spare one, as uninitialized memory may hold
        layer.k[:, :-1].fill_(float("nan"))
        layer.v[:, :-1].fill_(float("nan"))
    assert [c.tokens for c in generate(model, prompts, 12, sampling=greedy)] == expected
    touched = sum(cache.zeroed)  # blocks go out lowest first: those ever used, each zeroed once; the rest untouched
    assert 0 < touched < 20 and cache.zeroed[:touched] == [True] * touched
