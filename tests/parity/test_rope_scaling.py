"""Llama 3.1 RoPE scaling equals transformers' `llama3` rope init, on configurations whose blend band is populated
(a band with no frequency in it let a swapped `smooth` / `1 - smooth` pass every parity test)."""
import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from llamalab.config import RopeScaling
from llamalab.model import rope_frequencies

CASES = {  # (head_dim, theta, scaling): Llama 3.1 8B's own, Llama 3.2's factor 32, and a small test shape
    "llama3.1": (128, 500000.0, RopeScaling(8.0, 1.0, 4.0, 8192)),
    "llama3.2": (64, 500000.0, RopeScaling(32.0, 1.0, 4.0, 8192)),
    "small": (32, 500000.0, RopeScaling(8.0, 1.0, 4.0, 2048)),
}


def transformers_frequencies(head_dim: int, theta: float, s: RopeScaling) -> torch.Tensor:
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_theta=theta,
                         max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                                       "high_freq_factor": s.high_freq_factor,
                                       "original_max_position_embeddings": s.original_max_position_embeddings})
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    assert attention_scaling == 1.0
    return inv_freq


@pytest.mark.parametrize("name", list(CASES))
def test_scaled_frequencies_equal_transformers_llama3_init(name):
    head_dim, theta, scaling = CASES[name]
    unscaled = rope_frequencies(head_dim, theta)
    wavelength = 2 * math.pi / unscaled.double()
    band = (wavelength > scaling.original_max_position_embeddings / scaling.high_freq_factor) & (
        wavelength < scaling.original_max_position_embeddings / scaling.low_freq_factor)
    assert band.sum() >= 2, "the configuration must put frequencies in the blend band"
    expected = transformers_frequencies(head_dim, theta, scaling)
    ours = rope_frequencies(head_dim, theta, scaling)
    # equal up to float32 rounding (transformers computes in float32, we in float64 then round)
    torch.testing.assert_close(ours, expected, rtol=3e-7, atol=0)
    in_band = ours[band] / unscaled[band]
    assert ((in_band > 1 / scaling.factor) & (in_band < 1)).all()  # blended: neither kept nor divided
