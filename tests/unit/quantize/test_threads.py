"""ThreadChoice (quantize/threads.py) on simulated machines: it settles on the faster thread count, quiet or with a
busy core, follows a change of load, and spends few steps trying the slower one."""
import pytest
import torch

from llamalab.quantize.threads import LAST_TRY, ThreadChoice


def run(choice: ThreadChoice, seconds_on, steps: int, shape=1) -> list[int]:
    """The thread counts `choice` ran `steps` steps on, each taking seconds_on(count)."""
    counts = []
    for _ in range(steps):
        count = choice.count
        counts.append(count)
        choice.record(seconds_on(count), shape)
    return counts


QUIET = {2: 0.0075, 1: 0.013}.get  # SmolLM2's C step on this 2-core machine: 2 threads win
BUSY = {2: 0.020, 1: 0.013}.get  # one core busy elsewhere: the barriers wait for the thread that shares it


def test_quiet_machine_keeps_every_thread_and_rarely_tries_fewer():
    counts = run(ThreadChoice(most=2), QUIET, 1000)
    assert counts[-1] == 2
    assert counts.count(1) <= 0.03 * len(counts)


def test_busy_core_moves_to_one_thread_within_a_few_steps_and_stays():
    counts = run(ThreadChoice(most=2), BUSY, 1000)
    first_one = counts.index(1)
    assert first_one <= 12
    assert counts[-1] == 1
    assert counts[first_one:].count(2) <= 0.03 * len(counts)


def test_load_going_away_brings_the_threads_back():
    choice = ThreadChoice(most=2)
    assert run(choice, BUSY, 300)[-1] == 1
    counts = run(choice, QUIET, 2 * LAST_TRY + 20)
    assert counts[-1] == 2 and counts[-20:] == [2] * 20


def test_many_cores_with_one_busy_settle_one_below():
    """Eight threads; with a core busy elsewhere seven are fastest (each count further away is slower)."""
    times = {n: 0.010 / n + (0.05 if n == 8 else 0.001 * (7 - n)) for n in range(1, 9)}
    counts = run(ThreadChoice(most=8), times.get, 600)
    assert counts[-50:] == [7] * 50


def test_times_of_another_shape_are_not_compared():
    """Steps of 16 rows take longer than steps of 1: switching the shape must not look like a slower count."""
    choice = ThreadChoice(most=2)
    run(choice, QUIET, 100, shape=1)
    counts = run(choice, lambda n: 16 * QUIET(n), 100, shape=16)
    assert counts[-1] == 2


def test_torch_thread_setting_bounds_the_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        choice = ThreadChoice()
        assert set(run(choice, BUSY, 50)) == {1}
        torch.set_num_threads(2)
        assert choice.count == 2  # a new bound starts again from it
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("most", [1, 2])
def test_the_c_step_gives_the_same_logits_on_any_thread_count(most):
    """Switching counts mid-generation must not change a token: each output is summed by one thread in one order."""
    from llamalab.generate.decode import Generation
    from llamalab.generate.sampling import SamplingParams
    from llamalab.inference import load_model
    from llamalab.quantize.native_decode import NativeStep

    loaded = load_model("debug", random_init=True, seed=0, device="cpu", dtype="float32")
    logits = {}
    for threads in (1, most):
        step = loaded.decode_step()
        assert isinstance(step, NativeStep)
        step.threads = ThreadChoice(most=threads)
        seen = []
        generation = Generation(loaded.model, [[5, 9, 2], [7]], 12, SamplingParams(temperature=0),
                                step=lambda tokens, start, kv_len=None, step=step, seen=seen:
                                seen.append(step(tokens, start, kv_len)) or seen[-1])
        list(generation)
        logits[threads] = torch.stack(seen)
    assert torch.equal(logits[1], logits[most])
