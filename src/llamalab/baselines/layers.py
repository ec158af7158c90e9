"""Pieces of the pre-LLaMA Transformers: sinusoidal positions and the two-matrix MLP feed-forward."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def sinusoidal_positions(max_seq_len: int, dim: int, device=None) -> torch.Tensor:
    """Vaswani et al.'s table (max_seq_len, dim): PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(same)."""
    positions = torch.arange(max_seq_len, dtype=torch.float32, device=device)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    angles = torch.outer(positions, inv_freq)  # (max_seq_len, dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (max_seq_len, dim)


class MLP(nn.Module):
    """Position-wise feed-forward w2(act(w1 x)) of the original Transformer (ReLU) and GPT (GELU)."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "relu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=bias)  # up
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias)  # down (residual projection)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(self.activation(self.w1(x))))
