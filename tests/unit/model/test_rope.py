import math

import torch

from llamalab.config import RopeScaling
from llamalab.model import apply_rope, rope_frequencies, rope_tables


def rope_complex(x, theta, positions):
    """Seed 002's form: pairs as complex numbers multiplied by e^{i·pos·freq} (torch.polar / view_as_complex)."""
    d = x.shape[-1]
    freqs = 1.0 / (theta ** (torch.arange(0, d, 2).double() / d))
    freqs_cis = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64),
                            torch.outer(positions.double(), freqs))  # (seqlen, d/2)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))  # (b, s, h, d/2)
    return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(-2).float()


def test_cos_sin_form_equals_complex_form():
    x = torch.randn(2, 7, 3, 16)
    cos, sin = rope_tables(16, 32, 10000.0)
    ours = apply_rope(x, cos[None, :7], sin[None, :7])
    assert torch.allclose(ours, rope_complex(x, 10000.0, torch.arange(7)), atol=1e-5)


def test_rotated_dot_product_depends_only_on_position_difference():
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    cos, sin = rope_tables(32, 256, 500000.0)

    def score(m, n):
        qm = apply_rope(q, cos[None, m:m + 1], sin[None, m:m + 1])
        kn = apply_rope(k, cos[None, n:n + 1], sin[None, n:n + 1])
        return (qm * kn).sum().item()

    assert math.isclose(score(5, 2), score(103, 100), rel_tol=1e-4, abs_tol=1e-4)
    assert math.isclose(score(200, 190), score(10, 0), rel_tol=1e-4, abs_tol=1e-4)
    assert not math.isclose(score(5, 2), score(5, 4), rel_tol=1e-3)


def test_rotation_preserves_norm():
    x = torch.randn(3, 9, 4, 64)
    cos, sin = rope_tables(64, 9, 10000.0)
    assert torch.allclose(apply_rope(x, cos[None], sin[None]).norm(dim=-1), x.norm(dim=-1), atol=1e-4)


def test_llama31_scaling_keeps_fast_and_divides_slow_frequencies():
    s = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    plain, scaled = rope_frequencies(128, 500000.0), rope_frequencies(128, 500000.0, s)
    wavelen = 2 * math.pi / plain
    fast, slow = wavelen < 8192 / 4, wavelen > 8192 / 1
    assert fast.any() and slow.any() and (~fast & ~slow).any()
    assert torch.equal(scaled[fast], plain[fast])
    assert torch.allclose(scaled[slow], plain[slow] / 8)
    middle = ~fast & ~slow
    assert ((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8)).all()
