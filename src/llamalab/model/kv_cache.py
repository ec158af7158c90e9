"""Where a batch's tokens go (`Placement`) and the KV cache that keeps the keys and values of past positions.

Every layer's attention owns a `LayerCache` (its storage, written in place); `KVCache` is the model-wide
handle its users get from `Transformer.kv_cache`: its size, its bytes, and moving or clearing one row,
so that no code outside `model/` touches the cache tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Placement:
    """Where the tokens (bsz, seqlen) of one forward pass sit and what each of them attends to.

    `kv_len` None means no cache: plain causal attention over the tokens themselves. Otherwise row i of
    the batch is cache row `first_row + i`, the keys and values are written at `positions`, and attention
    reads the first `kv_len` cache positions under `mask` (None: every one of them, or `causal`).
    """

    positions: torch.Tensor  # (1 or bsz, seqlen) position of every token, for RoPE and the cache writes
    start: int | None = 0  # the position shared by every row's first token; None when each row has its own
    first_row: int = 0
    kv_len: int | None = None
    mask: torch.Tensor | None = None  # bool (1 or bsz, 1, seqlen, kv_len): True where a query sees a key
    causal: bool = True


class LayerCache(nn.Module):
    """One layer's keys and values, preallocated: (batch_size, n_kv_heads, max_seq_len, head_dim) each."""

    def __init__(self, batch_size: int, max_seq_len: int, n_kv_heads: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, k: torch.Tensor, v: torch.Tensor, where: Placement) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (bsz, n_kv_heads, seqlen, head_dim) where `where` says; return the keys and values attention
        reads, (bsz, n_kv_heads, kv_len, head_dim) each."""
        bsz, _, seqlen, _ = k.shape
        rows = slice(where.first_row, where.first_row + bsz)
        if where.start is not None:  # one span for every row: a slice assignment
            span = slice(where.start, where.start + seqlen)
            self.k[rows, :, span] = k
            self.v[rows, :, span] = v
        else:
            index = where.positions[:, None, :, None].expand_as(k)  # (bsz, n_kv_heads, seqlen, head_dim)
            self.k[rows].scatter_(2, index, k)
            self.v[rows].scatter_(2, index, v)
        return self.k[rows, :, : where.kv_len], self.v[rows, :, : where.kv_len]


class KVCache:
    """The model's KV cache as its users see it: rows ("slots") of up to `max_seq_len` positions each."""

    def __init__(self, layers: list[LayerCache]):
        self.layers = layers

    @property
    def batch_size(self) -> int:
        return self.layers[0].k.shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.layers[0].k.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of every layer's keys and values."""
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)

    def bytes_per_token(self) -> int:
        """Bytes one cached position of one row takes, over every layer."""
        return self.nbytes // (self.batch_size * self.max_seq_len)

    @torch.no_grad()
    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row src into row dst, in every layer."""
        for layer in self.layers:
            layer.k[dst, :, :length] = layer.k[src, :, :length]
            layer.v[dst, :, :length] = layer.v[src, :, :length]

    @torch.no_grad()
    def clear_row(self, row: int) -> None:
        """Zero a row (a freed slot holds nothing of the request that used it)."""
        for layer in self.layers:
            layer.k[row].zero_()
            layer.v[row].zero_()
