"""Rotary position embedding (RoPE) in Meta's interleaved-pair layout, with Llama 3.1 frequency scaling.

Each pair of features (x[2i], x[2i+1]) of a query or key head is rotated by the angle
position * theta^(-2i/head_dim), so that q·k depends only on the distance between positions.
"""
from __future__ import annotations

import math

import torch

from llamalab.config import RopeScaling


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """The head_dim/2 rotation frequencies theta^(-2i/head_dim), Llama-3.1-scaled when asked."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is not None:
        freqs = llama31_scale_frequencies(freqs, scaling)
    return freqs.float()


def llama31_scale_frequencies(freqs: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1: slow (long-wavelength) frequencies divided by `factor`, fast ones kept, smooth between."""
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * freqs / s.factor + smooth * freqs
    return torch.where(
        wavelen < high_freq_wavelen, freqs, torch.where(wavelen > low_freq_wavelen, freqs / s.factor, blended)
    )


def rope_tables(
    head_dim: int, max_seq_len: int, theta: float, scaling: RopeScaling | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precomputed cos and sin of every (position, frequency) angle, each (max_seq_len, head_dim/2) float32."""
    freqs = rope_frequencies(head_dim, theta, scaling).to(device)
    positions = torch.arange(max_seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, freqs)  # (max_seq_len, head_dim/2)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (bsz, seqlen, n_heads, head_dim) by angles cos/sin (bsz or 1, seqlen, head_dim/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (bsz, seqlen, n_heads, head_dim/2, 2)
    x_even, x_odd = xf[..., 0], xf[..., 1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (bsz, seqlen, 1, head_dim/2)
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)  # (bsz, seqlen, n_heads, head_dim)
