"""Causal self-attention with grouped-query heads (MHA / GQA / MQA), RoPE and a static KV cache.

`reference_attention` is the seeds' matmul → mask → softmax → matmul, kept for reading and for
tests; `sdpa_attention` is the fast path through `torch.nn.functional.scaled_dot_product_attention`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llamalab.config import ModelArgs
from llamalab.model.rope import apply_rope


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Share each key/value head with n_rep consecutive query heads: (b, n_kv, s, hd) -> (b, n_kv*n_rep, s, hd)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def reference_attention(q, k, v, mask=None, causal=False, dropout_p=0.0):
    """softmax(q kᵀ / √d + mask) v, written out. q (b, h, s, d); k, v (b, h_kv, t, d); mask bool (., ., s, t)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (b, h, t, d)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (b, h, s, t)
    if causal:
        s, t = scores.shape[-2:]
        mask = torch.ones(s, t, dtype=torch.bool, device=q.device).tril(diagonal=t - s)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(F.softmax(scores, dim=-1), p=dropout_p)
    return (probs @ v.float()).type_as(q)  # (b, h, s, d)


def sdpa_attention(q, k, v, mask=None, causal=False, dropout_p=0.0):
    """The same as `reference_attention`, through PyTorch's fused kernels (flash / memory-efficient / math)."""
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p, enable_gqa=gqa
    )


ATTENTION_IMPLS = {"sdpa": sdpa_attention, "reference": reference_attention}


class KVCache(nn.Module):
    """Preallocated keys and values of the past positions, (batch, n_kv_heads, max_seq_len, head_dim)."""

    def __init__(self, batch_size: int, max_seq_len: int, n_kv_heads: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, positions: torch.Tensor | int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (bsz, n_kv_heads, seqlen, head_dim) at their positions; return the cache's keys and values.

        An int `positions` (shared start of every row) returns only the filled prefix; a (bsz, seqlen)
        tensor of per-row positions returns the whole static cache (the caller masks what is unwritten).
        """
        bsz, _, seqlen, _ = k.shape
        if isinstance(positions, int):
            end = positions + seqlen
            self.k[:bsz, :, positions:end] = k
            self.v[:bsz, :, positions:end] = v
            return self.k[:bsz, :, :end], self.v[:bsz, :, :end]
        index = positions[:, None, :, None].expand_as(k)  # (bsz, n_kv_heads, seqlen, head_dim)
        self.k[:bsz].scatter_(2, index, k)
        self.v[:bsz].scatter_(2, index, v)
        return self.k[:bsz], self.v[:bsz]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, impl: str = "sdpa"):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.dropout_p = args.dropout
        self.resid_dropout = nn.Dropout(args.dropout)
        self.attend = ATTENTION_IMPLS[impl]
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, start_pos: int | torch.Tensor | None = None, mask=None):
        """x (bsz, seqlen, dim). start_pos None: plain causal attention (training, no cache);
        an int or a (bsz, seqlen) position tensor: write to the KV cache and attend over it with `mask`."""
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (bsz, heads, seqlen, head_dim)

        causal = False
        if start_pos is None:
            causal = True
        else:
            k, v = self.cache.update(start_pos, k, v)  # (bsz, n_kv_heads, kv_len, head_dim)
            causal = mask is None and isinstance(start_pos, int) and start_pos == 0 and seqlen > 1

        dropout_p = self.dropout_p if self.training else 0.0
        out = self.attend(q, k, v, mask=mask, causal=causal, dropout_p=dropout_p)  # (bsz, n_heads, seqlen, hd)
        out = out.transpose(1, 2).reshape(bsz, seqlen, self.n_heads * self.head_dim)
        return self.resid_dropout(self.wo(out))
