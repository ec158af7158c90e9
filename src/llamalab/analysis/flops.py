"""Model FLOPs of forward, training, prefill and decode passes: weight matmuls plus attention.

Conventions (those of PaLM's MFU and of `torch.utils.flop_counter`): a multiply-add is 2 FLOPs;
only matrix products are counted (norms, RoPE, SiLU and softmax are elementwise and under 1%);
attention counts the full query × key rectangle the kernels compute, not the causal half; the
embedding is a lookup. Training is forward + backward = 3 × forward (no recomputation counted).
"""
from __future__ import annotations

from dataclasses import dataclass

from llamalab.analysis.params import linear_shapes
from llamalab.config import ModelArgs


@dataclass(frozen=True)
class Flops:
    """FLOPs of a pass, split into weight matmuls (∝ tokens) and attention (∝ tokens × positions attended)."""

    matmul: int
    attention: int

    @property
    def total(self) -> int:
        return self.matmul + self.attention

    def __mul__(self, factor: int) -> Flops:
        return Flops(self.matmul * factor, self.attention * factor)

    __rmul__ = __mul__


def forward_flops(args: ModelArgs, seq_len: int, past_len: int = 0, logits: int | None = None) -> Flops:
    """One sequence's forward pass over `seq_len` new tokens that attend `past_len` cached ones too.

    `logits` is how many positions get vocab logits (default: all `seq_len`; generation needs 1).
    """
    logits = seq_len if logits is None else logits
    block_weights = sum(n_in * n_out for n_in, n_out in linear_shapes(args)[:-1])
    matmul = 2 * seq_len * block_weights + 2 * logits * args.dim * args.vocab_size
    # q·kᵀ and probs·v: 2 FLOPs × head_dim for every (query, key) pair of every head, twice
    attention = 4 * args.n_layers * args.n_heads * args.head_dim * seq_len * (past_len + seq_len)
    return Flops(matmul, attention)


def training_flops(args: ModelArgs, seq_len: int) -> Flops:
    """Forward + backward of one training sequence: the backward pass costs twice the forward."""
    return 3 * forward_flops(args, seq_len)


def prefill_flops(args: ModelArgs, prompt_len: int) -> Flops:
    """Reading a prompt into an empty KV cache, logits for its last position only."""
    return forward_flops(args, prompt_len, logits=1)


def decode_flops(args: ModelArgs, context_len: int) -> Flops:
    """One decode step: a new token attending `context_len` positions (itself and the cached ones)."""
    return forward_flops(args, 1, past_len=context_len - 1)


def flops_per_token(args: ModelArgs, seq_len: int, training: bool = False) -> float:
    """Average FLOPs per token of a sequence of `seq_len` tokens (6·N + 12·L·dim·seq_len when training)."""
    flops = training_flops(args, seq_len) if training else forward_flops(args, seq_len)
    return flops.total / seq_len
