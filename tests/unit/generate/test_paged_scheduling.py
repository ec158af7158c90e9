"""Paging, prefix sharing, chunked prefill and preemption change where keys and values live and when rows run, never
which tokens a request gets: for a fixed seed each of 33 requests served together on a tight paged cache gives the
tokens it gives alone on the fixed-slot cache. And the prefix cache forgets the least recently used prefix first."""
import random

import pytest
import torch
from generate_models import peaked_model
from test_paged_cache import run_requests

from llamalab.generate.decode import Completion, Generation, generate
from llamalab.generate.engine import PROMPT_TOKENS_PER_ROW, Engine
from llamalab.generate.sampling import SamplingParams
from llamalab.quantize.native import kernels
from llamalab.quantize.native_decode import native_step

SAMPLINGS = (SamplingParams(temperature=0),
             SamplingParams(temperature=0.9, top_p=0.9, seed=11),
             SamplingParams(temperature=1.0, repetition_penalty=1.3, presence_penalty=0.5, seed=5))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return peaked_model(max_seq_len=96)


def workload(seed: int = 0) -> list[tuple[list[int], int, SamplingParams]]:
    """33 requests: a third open with one 24-token system prompt (three blocks of 8), some prompts long enough to be
    chunked, greedy and seeded sampling with penalties mixed."""
    rng = random.Random(seed)
    system = [rng.randrange(2, 97) for _ in range(24)]
    requests = []
    for i in range(33):
        if i % 3 == 0:
            prompt = system + [rng.randrange(2, 97) for _ in range(rng.randint(1, 8))]
        else:
            prompt = [rng.randrange(2, 97) for _ in range(rng.choice([rng.randint(2, 6), rng.randint(20, 40)]))]
        requests.append((prompt, rng.randint(4, 16), SAMPLINGS[i % 3]))
    return requests


@pytest.fixture(scope="module")
def alone(model):
    """Each request's tokens when generated alone on a fixed-slot cache, prefilled whole (stop id 1 included)."""
    return [generate(model, [p], n, sampling=s, stop_ids=[1])[0].tokens for p, n, s in workload()]


@pytest.mark.parametrize("prefix_caching", [False, True])
@pytest.mark.parametrize("prefill_chunk", [None, 8])
def test_33_requests_on_a_tight_paged_cache_get_their_tokens_alone(model, alone, prefix_caching, prefill_chunk):
    serve_33_requests(model, alone, prefix_caching, prefill_chunk)


@pytest.mark.skipif(kernels() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("prefill_chunk", [None, 8])
def test_33_requests_decoded_by_the_c_step_on_a_paged_cache_get_their_tokens_alone(model, alone, prefill_chunk):
    """The decode steps in C, reading and writing the paged cache in place (33 rows: 32 per C call, then 1)."""
    step = native_step(model)
    serve_33_requests(model, alone, True, prefill_chunk, step)
    assert step.cache is model.kv_cache  # the C step ran on it


def serve_33_requests(model, alone, prefix_caching: bool, prefill_chunk: int | None, step=None) -> None:
    cache = model.setup_paged_cache(num_blocks=24, block_size=8, batch_size=33, max_seq_len=96,
                                    prefix_caching=prefix_caching)
    engine = Engine(model, 33, 96, prefill_chunk=prefill_chunk, step=step)
    rows = [Completion(p, n, s, stop_ids=[1]) for p, n, s in workload()]
    with torch.inference_mode():
        most = run_requests(engine, rows)
    assert [r.tokens for r in rows] == alone
    assert most >= 7 and engine.preemptions >= 3  # many ran at once; growing rows took blocks from younger ones
    assert (cache.prefix_hits > 0) == prefix_caching  # later requests attached the system prompt's blocks
    assert cache.used_blocks == 0 and all(r == 0 for r in cache.refs)


def test_generate_on_a_paged_cache_too_small_for_all_rows_preempts_and_gives_the_same_tokens(model, alone):
    requests = workload()[:6]  # their prompts and first tokens take 22 blocks of 8, all their tokens more
    cache = model.setup_paged_cache(num_blocks=24, block_size=8, batch_size=6, max_seq_len=96)
    generation = Generation(model, [p for p, _, _ in requests], 16, sampling=[s for _, _, s in requests],
                            stop_ids=[1])
    streamed = [[] for _ in requests]
    for new in generation:
        for row, tokens in enumerate(new):
            streamed[row] += tokens
    assert generation.engine.preemptions > 0
    model.clear_cache()  # the references alone, on a fixed-slot cache
    expected = [generate(model, [p], 16, sampling=s, stop_ids=[1])[0].tokens for p, _, s in requests]
    assert [c.tokens for c in generation.completions] == expected
    assert streamed == [c.output for c in generation.completions]  # each token yielded once, to its own row
    assert cache.used_blocks == 0
    assert sum(-(-(len(p) + 1) // 8) for p, _, _ in requests) == 22


def test_the_least_recently_used_prefix_is_evicted_first(model):
    """Blocks of 4, prompts of 9 tokens (two cacheable blocks), 3 tokens each: 3 blocks per request, 7 in the pool."""
    rng = random.Random(3)
    a, b, c, d = ([rng.randrange(2, 97) for _ in range(9)] for _ in range(4))
    greedy = SamplingParams(temperature=0)
    model.clear_cache()  # the references on a fixed-slot cache of their own
    expected = {tuple(p): generate(model, [p], 3, sampling=greedy)[0].tokens for p in (a, b, c, d)}
    cache = model.setup_paged_cache(num_blocks=7, block_size=4, batch_size=2, max_seq_len=32, prefix_caching=True)
    engine = Engine(model, 2, 32)

    def serve(prompt) -> int:
        """Run one request alone; the prefix blocks it found cached."""
        hits = cache.prefix_hits
        row = Completion(prompt, 3, greedy)
        with torch.inference_mode():
            run_requests(engine, [row])
        assert row.tokens == expected[tuple(prompt)]  # cached or recomputed, the same tokens
        return cache.prefix_hits - hits

    assert [serve(p) for p in (a, b, c)] == [0, 0, 0]  # 6 prompt blocks cached, one block free
    assert serve(a) == 2  # a found both blocks: now a is the most recently used, b the least
    assert len(cache.unused) == 6 and len(cache.free) == 1
    assert serve(d) == 0  # d's 3 blocks: the free one, then b's two (least recently used) evicted
    assert [serve(p) for p in (c, a)] == [2, 2]  # c and a are still cached ...
    assert serve(b) == 0  # ... b is not (and serving it evicted d, now the least recently used)
    assert serve(d) == 0
    assert cache.used_blocks == 0 and len(cache.unused) + len(cache.free) == 7


def test_a_prompt_opening_like_one_being_prefilled_waits_to_share_its_blocks(model):
    """Four requests with one 24-token system prompt arrive together while another row decodes: chunked at 8 tokens a
    step, the first computes the system prompt's 3 blocks; the others wait for them instead of computing them too."""
    rng = random.Random(4)
    system = [rng.randrange(2, 97) for _ in range(24)]
    prompts = [system + [rng.randrange(2, 97) for _ in range(3)] for _ in range(4)]
    greedy = SamplingParams(temperature=0)
    model.clear_cache()  # the references on a fixed-slot cache of their own
    expected = [generate(model, [p], 4, sampling=greedy)[0].tokens for p in [[5, 6, 7]] + prompts]
    cache = model.setup_paged_cache(num_blocks=40, block_size=8, batch_size=8, max_seq_len=64, prefix_caching=True)
    engine = Engine(model, 8, 64, prefill_chunk=8)
    rows = [Completion(p, 4, greedy) for p in [[5, 6, 7]] + prompts]
    with torch.inference_mode():
        engine.admit(rows[:1])
        engine.step()  # row 0 decodes from here on
        assert engine.admit(rows[1:2]) == [[]]
        assert all(engine.fits(r) and engine.waits_for_prefix(r) for r in rows[2:])
        run_requests(engine, rows[2:])
    assert [r.tokens for r in rows] == expected
    assert cache.prefix_hits == 3 * 3  # the three later requests attached all 3 system blocks


def test_beside_many_decoding_rows_a_step_prefills_more_prompt_tokens(model):
    """A step's prompt tokens: prefill_chunk beside a few decoding rows, PROMPT_TOKENS_PER_ROW per decoding row beside
    many (a burst of new requests is read in fewer steps); the tokens are still those of the request alone."""
    long = [(7 * i) % 90 + 3 for i in range(80)]
    greedy = SamplingParams(temperature=0)
    expected = generate(model, [long], 6, sampling=greedy)[0].tokens
    model.setup_paged_cache(num_blocks=200, block_size=8, batch_size=21, max_seq_len=96)
    engine = Engine(model, 21, 96, prefill_chunk=8)
    rows = [Completion([2 + i, 40 + i], 40, greedy) for i in range(20)]
    with torch.inference_mode():
        for row in rows:
            engine.admit([row])
        engine.step()  # every short prompt is in: 20 rows decode
        late = Completion(long, 6, greedy)
        engine.admit([late])
        parts = []
        packed = engine.calls.packed
        engine.calls.packed = lambda p: parts.append([tuple(t.shape) for t, *_ in p]) or packed(p)
        while not late.done:
            engine.step()
    assert PROMPT_TOKENS_PER_ROW * 20 > 8
    assert parts[0][-1] == (1, PROMPT_TOKENS_PER_ROW * 20 + 1)  # its chunk and its next token, after the 20 rows
    assert late.tokens == expected
