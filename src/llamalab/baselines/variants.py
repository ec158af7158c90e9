"""Decoder-only Transformers between GPT and LLaMA: one `Variant` switch per architectural change LLaMA made.

A variant is the LLaMA model of `llamalab.model` with parts swapped: absolute positions instead of
RoPE (attention then rotates by angle 0), LayerNorm instead of RMSNorm, post- instead of pre-norm,
a GELU/ReLU MLP instead of SwiGLU, fewer key/value heads. `matched_args` widens or narrows the
feed-forward so that every variant has the reference's parameter count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llamalab.baselines.layers import MLP, sinusoidal_positions
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.model import RMSNorm, Transformer, TransformerBlock

CHOICES = {
    "positions": ("rope", "sinusoidal", "learned", "none"),
    "norm": ("rmsnorm", "layernorm"),
    "norm_position": ("pre", "post"),
    "ffn": ("swiglu", "gelu", "relu"),
    "attention": ("mha", "gqa", "mqa"),
}
GQA_GROUP = 4  # query heads per key/value head in the "gqa" variant


@dataclass(frozen=True)
class Variant:
    """Architectural switches; the defaults are LLaMA's (Llama 2 7B attention: one KV head per query head)."""

    positions: str = "rope"
    norm: str = "rmsnorm"
    norm_position: str = "pre"
    ffn: str = "swiglu"
    attention: str = "mha"

    def __post_init__(self):
        for field, allowed in CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ConfigError(f"variant {field}={getattr(self, field)!r} is not one of {', '.join(allowed)}")

    def kv_heads(self, n_heads: int) -> int:
        """Key/value heads: all (MHA), one per GQA_GROUP query heads (GQA), or one (MQA)."""
        if self.attention == "gqa" and (n_heads % GQA_GROUP or n_heads == GQA_GROUP):
            raise ConfigError(f"the gqa variant needs n_heads a multiple of {GQA_GROUP} above it, got {n_heads}")
        return {"mha": n_heads, "gqa": n_heads // GQA_GROUP, "mqa": 1}[self.attention]


NAMED_VARIANTS = {
    "llama": Variant(),
    "gpt2": Variant(positions="learned", norm="layernorm", ffn="gelu"),
    "vaswani": Variant(positions="sinusoidal", norm="layernorm", norm_position="post", ffn="relu"),
}


def parse_variant(spec: str) -> Variant:
    """A variant by name (llama, gpt2, vaswani) or as LLaMA with changes, e.g. "ffn=gelu,norm=layernorm"."""
    if spec in NAMED_VARIANTS:
        return NAMED_VARIANTS[spec]
    changes = dict(item.partition("=")[::2] for item in spec.split(","))
    unknown = sorted(k for k in changes if k not in CHOICES)
    if "=" not in spec or unknown:
        raise ConfigError(f"variant {spec!r}: use a name ({', '.join(NAMED_VARIANTS)}) or key=value pairs "
                          f"separated by commas with keys {', '.join(CHOICES)}")
    return Variant(**changes)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return RMSNorm(dim, eps) if kind == "rmsnorm" else nn.LayerNorm(dim, eps=eps)


class VariantBlock(TransformerBlock):
    """LLaMA's block with the variant's norm, feed-forward and norm position."""

    def __init__(self, layer_id: int, args: ModelArgs, variant: Variant, attention_impl: str = "sdpa"):
        super().__init__(layer_id, args, attention_impl)
        if variant.ffn != "swiglu":
            self.feed_forward = MLP(args.dim, args.ffn_hidden_dim, variant.ffn, bias=False, dropout=args.dropout)
        self.attention_norm = make_norm(variant.norm, args.dim, args.norm_eps)
        self.ffn_norm = make_norm(variant.norm, args.dim, args.norm_eps)
        self.post_norm = variant.norm_position == "post"

    def forward(self, x, cos, sin, where=None):
        if not self.post_norm:
            return super().forward(x, cos, sin, where)
        h = self.attention_norm(x + self.attention(x, cos, sin, where))
        return self.ffn_norm(h + self.feed_forward(h))


class VariantTransformer(Transformer):
    """LLaMA's `Transformer` (same API, KV cache included) built from `VariantBlock`s and the variant's positions."""

    def __init__(self, args: ModelArgs, variant: Variant, attention_impl: str = "sdpa"):
        self.variant = variant  # read by init_rope while Transformer.__init__ runs
        super().__init__(args, attention_impl)
        # the LLaMA blocks Transformer.__init__ built give way to the variant's
        self.layers = nn.ModuleList(VariantBlock(i, args, variant, attention_impl) for i in range(args.n_layers))
        # post-norm blocks end normalised already; the original Transformer has no final norm
        pre_norm = variant.norm_position == "pre"
        self.norm = make_norm(variant.norm, args.dim, args.norm_eps) if pre_norm else nn.Identity()
        if variant.positions == "learned":
            self.pos_embeddings = nn.Embedding(args.max_seq_len, args.dim)
        elif variant.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(args.max_seq_len, args.dim), persistent=False)
        self.init_weights()

    def init_rope(self, device=None, positions: int | None = None) -> None:
        """RoPE's cos/sin tables; for the other position schemes the rotation by angle 0 (q and k unchanged)."""
        super().init_rope(device, positions)
        if self.variant.positions != "rope":
            self.rope_cos, self.rope_sin = torch.ones_like(self.rope_cos), torch.zeros_like(self.rope_sin)

    def hidden(self, tokens, where):
        cos, sin = self._rope(where.positions)  # (1 or bsz, seqlen, head_dim/2)
        h = self.tok_embeddings(tokens)  # (bsz, seqlen, dim)
        if self.variant.positions == "learned":
            h = h + self.pos_embeddings(where.positions)
        elif self.variant.positions == "sinusoidal":  # as in the paper: embeddings times √dim, plus the table
            h = h * math.sqrt(self.args.dim) + self.pos_table[where.positions].to(h.dtype)
        h = self.dropout(h)
        for layer in self.layers:
            h = layer(h, cos, sin, where)
        return self.norm(h)


def variant_parameters(args: ModelArgs, variant: Variant) -> int:
    """Parameters of the variant built on the meta device (tied weights counted once)."""
    with torch.device("meta"):
        return sum(p.numel() for p in VariantTransformer(args, variant).parameters())


def matched_args(base: ModelArgs, variant: Variant, multiple_of: int = 8) -> ModelArgs:
    """`base` with the variant's key/value heads and the feed-forward width (a multiple of `multiple_of`) whose
    parameter count is nearest the LLaMA reference's (`base` with all heads, SwiGLU of `base.ffn_hidden_dim`)."""
    target = variant_parameters(base.replace(n_kv_heads=None), Variant())
    args = base.replace(n_kv_heads=variant.kv_heads(base.n_heads), hidden_dim=base.ffn_hidden_dim)
    per_hidden_unit = base.n_layers * base.dim * (3 if variant.ffn == "swiglu" else 2)  # weights per FFN unit
    hidden = args.hidden_dim + (target - variant_parameters(args, variant)) / per_hidden_unit
    hidden = max(multiple_of, multiple_of * round(hidden / multiple_of))
    return args.replace(hidden_dim=hidden)
