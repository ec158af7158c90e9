"""The original encoder–decoder Transformer (Vaswani et al., 2017): post-norm layers, ReLU MLP, sinusoidal positions.

The baseline LLaMA is measured against. Attention is the same `sdpa_attention` LLaMA uses, here
with biases, cross-attention and explicit padding / causal masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llamalab.baselines.layers import MLP, sinusoidal_positions
from llamalab.errors import ConfigError
from llamalab.model import sdpa_attention


@dataclass
class Seq2SeqArgs:
    """Sizes of the encoder–decoder; the defaults are the paper's base model."""

    src_vocab_size: int
    tgt_vocab_size: int
    dim: int = 512  # d_model
    n_layers: int = 6  # encoder layers and, as many, decoder layers
    n_heads: int = 8
    ffn_dim: int = 2048  # d_ff
    dropout: float = 0.1
    max_seq_len: int = 512
    pad_id: int = 0  # padding token of both vocabularies

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ConfigError(f"Seq2SeqArgs.dim={self.dim} is not divisible by n_heads={self.n_heads}; "
                              "choose n_heads that divides dim")
        if self.dim % 2:
            raise ConfigError(f"Seq2SeqArgs.dim={self.dim} must be even for the sinusoidal positions")


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(bsz, 1, 1, seqlen) bool, True at the keys that are real tokens."""
    return (tokens != pad_id)[:, None, None, :]


def causal_mask(seqlen: int, device=None) -> torch.Tensor:
    """(1, 1, seqlen, seqlen) bool, True where a query may see a key: itself and earlier positions."""
    return torch.ones(seqlen, seqlen, dtype=torch.bool, device=device).tril()[None, None]


class MultiHeadAttention(nn.Module):
    """Attention of queries from x to keys and values from `memory` (x itself for self-attention)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout_p = dropout

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (bsz, s, dim), memory (bsz, t, dim), mask bool broadcastable to (bsz, n_heads, s, t)."""
        bsz, s, dim = x.shape
        t = memory.shape[1]
        q = self.q_proj(x).view(bsz, s, self.n_heads, self.head_dim).transpose(1, 2)  # (bsz, n_heads, s, head_dim)
        k = self.k_proj(memory).view(bsz, t, self.n_heads, self.head_dim).transpose(1, 2)  # (bsz, n_heads, t, hd)
        v = self.v_proj(memory).view(bsz, t, self.n_heads, self.head_dim).transpose(1, 2)  # (bsz, n_heads, t, hd)
        out = sdpa_attention(q, k, v, mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(bsz, s, dim))  # (bsz, s, dim)


class EncoderLayer(nn.Module):
    """Post-norm: x = norm(x + self_attention(x)); x = norm(x + mlp(x))."""

    def __init__(self, args: Seq2SeqArgs):
        super().__init__()
        self.self_attention = MultiHeadAttention(args.dim, args.n_heads, args.dropout)
        self.feed_forward = MLP(args.dim, args.ffn_dim, "relu")
        self.attention_norm = nn.LayerNorm(args.dim)
        self.ffn_norm = nn.LayerNorm(args.dim)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.self_attention(x, x, src_mask)))
        return self.ffn_norm(x + self.dropout(self.feed_forward(x)))


class DecoderLayer(nn.Module):
    """Post-norm: masked self-attention, then attention to the encoder's output, then the MLP."""

    def __init__(self, args: Seq2SeqArgs):
        super().__init__()
        self.self_attention = MultiHeadAttention(args.dim, args.n_heads, args.dropout)
        self.cross_attention = MultiHeadAttention(args.dim, args.n_heads, args.dropout)
        self.feed_forward = MLP(args.dim, args.ffn_dim, "relu")
        self.attention_norm = nn.LayerNorm(args.dim)
        self.cross_attention_norm = nn.LayerNorm(args.dim)
        self.ffn_norm = nn.LayerNorm(args.dim)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, y, memory, tgt_mask, src_mask):
        y = self.attention_norm(y + self.dropout(self.self_attention(y, y, tgt_mask)))
        y = self.cross_attention_norm(y + self.dropout(self.cross_attention(y, memory, src_mask)))
        return self.ffn_norm(y + self.dropout(self.feed_forward(y)))


class Seq2SeqTransformer(nn.Module):
    """Encoder–decoder: logits (bsz, tgt_len, tgt_vocab) of the next target token given source and target so far."""

    def __init__(self, args: Seq2SeqArgs):
        super().__init__()
        self.args = args
        self.src_embeddings = nn.Embedding(args.src_vocab_size, args.dim)
        self.tgt_embeddings = nn.Embedding(args.tgt_vocab_size, args.dim)
        self.register_buffer("positions", sinusoidal_positions(args.max_seq_len, args.dim), persistent=False)
        self.dropout = nn.Dropout(args.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(args) for _ in range(args.n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(args) for _ in range(args.n_layers))
        self.output = nn.Linear(args.dim, args.tgt_vocab_size)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Xavier-uniform matrices, zero biases, embeddings N(0, 1/dim): times √dim, the size of the positions."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.args.dim ** -0.5)

    def embed(self, embeddings: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings scaled by √dim plus the sinusoidal positions: (bsz, seqlen, dim)."""
        if tokens.shape[1] > self.args.max_seq_len:
            raise ConfigError(f"sequence of {tokens.shape[1]} tokens exceeds max_seq_len={self.args.max_seq_len}")
        h = embeddings(tokens) * math.sqrt(self.args.dim) + self.positions[: tokens.shape[1]]
        return self.dropout(h)

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """Encoder output (bsz, src_len, dim) for source tokens (bsz, src_len)."""
        h, mask = self.embed(self.src_embeddings, src), padding_mask(src, self.args.pad_id)
        for layer in self.encoder:
            h = layer(h, mask)
        return h

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Logits (bsz, tgt_len, tgt_vocab) for target tokens (bsz, tgt_len) attending to the encoded source."""
        pad = self.args.pad_id
        tgt_mask = causal_mask(tgt.shape[1], tgt.device) & padding_mask(tgt, pad)  # (bsz, 1, tgt_len, tgt_len)
        src_mask = padding_mask(src, pad)  # (bsz, 1, 1, src_len)
        h = self.embed(self.tgt_embeddings, tgt)
        for layer in self.decoder:
            h = layer(h, memory, tgt_mask, src_mask)
        return self.output(h)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt, self.encode(src), src)

    def loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of predicting tgt_out from tgt_in (teacher forcing); padding targets are skipped."""
        logits = self(src, tgt_in)  # (bsz, tgt_len, tgt_vocab)
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=self.args.pad_id)

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> torch.Tensor:
        """Most likely target (bsz, <= max_len) token by token, starting at BOS; rows that ended are padded."""
        memory = self.encode(src)
        out = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_len - 1):
            next_token = self.decode(out, memory, src)[:, -1].argmax(-1)  # (bsz,)
            next_token = next_token.masked_fill(done, self.args.pad_id)
            out = torch.cat([out, next_token[:, None]], dim=1)  # (bsz, len + 1)
            done |= next_token == eos_id
            if done.all():
                break
        return out
