"""FLOP formulas against torch.utils.flop_counter.FlopCounterMode on real passes of small models."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, mm_flop, sdpa_backward_flop_count, sdpa_flop_count

from llamalab.analysis import decode_flops, flops_per_token, forward_flops, prefill_flops, training_flops
from llamalab.config import ModelArgs
from llamalab.model import Transformer

aten = torch.ops.aten
# PyTorch's counter knows the CUDA attention kernels and out-of-place addmm; teach it the CPU attention kernels and
# the in-place addmm_ (the chunked head loss sums its weight gradient with it) with its own formulas.
UNCOUNTED_OPS = {
    aten.addmm_: lambda out, a, b, *_, **__: mm_flop(a, b),
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, **__: sdpa_backward_flop_count(grad, q, k, v),
}
BATCH = 2
CONFIGS = {
    "gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_seq_len=128),
    "mha-tied": ModelArgs(dim=48, n_layers=3, n_heads=3, vocab_size=200, multiple_of=16, max_seq_len=128,
                          tie_embeddings=True),
    "mqa": ModelArgs(dim=64, n_layers=1, n_heads=8, n_kv_heads=1, vocab_size=96, hidden_dim=100, max_seq_len=128),
}


def measured_flops(fn) -> float:
    """FLOPs PyTorch counts while fn runs, per sequence of the batch."""
    with FlopCounterMode(display=False, custom_mapping=UNCOUNTED_OPS) as counter:
        fn()
    return counter.get_total_flops() / BATCH


def tokens(args, seq_len):
    return torch.randint(0, args.vocab_size, (BATCH, seq_len))


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("seq_len", [1, 17, 128])
def test_forward_flops_match_the_counted_forward_pass(config, seq_len, impl):
    args = CONFIGS[config]
    model = Transformer(args, attention_impl=impl)
    measured = measured_flops(lambda: model(tokens(args, seq_len)))
    assert forward_flops(args, seq_len).total == pytest.approx(measured, rel=0.01)
    assert flops_per_token(args, seq_len) * seq_len == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("seq_len", [16, 96])
def test_training_flops_match_the_counted_forward_and_backward(config, seq_len):
    # the reference attention's explicit matmuls are the model FLOPs; fused kernels add a recomputation
    args = CONFIGS[config]
    model = Transformer(args, attention_impl="reference")
    batch = tokens(args, seq_len)
    measured = measured_flops(lambda: model.loss(batch, batch).backward())
    assert training_flops(args, seq_len).total == pytest.approx(measured, rel=0.01)
    assert flops_per_token(args, seq_len, training=True) * seq_len == pytest.approx(measured, rel=0.01)


def test_attention_share_grows_with_sequence_length():
    args = CONFIGS["gqa"]
    model = Transformer(args, attention_impl="reference")
    short, long = (measured_flops(lambda s=s: model(tokens(args, s))) / s for s in (8, 128))
    assert long > short  # per-token cost rises: 6·N alone would predict equality
    assert flops_per_token(args, 128) - flops_per_token(args, 8) == pytest.approx(long - short, rel=0.01)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_prefill_and_decode_flops_match_the_cached_passes(config, impl):
    args = CONFIGS[config]
    model = Transformer(args, attention_impl=impl).eval()
    model.setup_cache(BATCH, 64)
    prompt_len = 20
    with torch.no_grad():
        prefill = measured_flops(lambda: model(tokens(args, prompt_len), last_only=True))
        assert prefill_flops(args, prompt_len).total == pytest.approx(prefill, rel=0.01)
        for start in (prompt_len, 40, 63):
            step = measured_flops(lambda: model(tokens(args, 1), start_pos=start))  # noqa: B023 (called here)
            assert decode_flops(args, start + 1).total == pytest.approx(step, rel=0.01)
