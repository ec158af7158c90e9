"""Exact parameter counts of a LLaMA model, per component, from its ModelArgs alone."""
from __future__ import annotations

from dataclasses import dataclass

from llamalab.config import ModelArgs


@dataclass(frozen=True)
class ParamCount:
    """Parameters per component; `output` is 0 when the head is tied to the embedding."""

    embedding: int
    attention: int  # wq, wk, wv, wo of every layer
    feed_forward: int  # w1, w2, w3 of every layer
    norms: int  # attention_norm and ffn_norm of every layer, and the final norm
    output: int

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.feed_forward + self.norms + self.output


def attention_params(args: ModelArgs) -> int:
    """Weights of one attention layer: wq and wo (dim × n_heads·hd), wk and wv (dim × n_kv_heads·hd)."""
    return 2 * args.dim * args.n_heads * args.head_dim + 2 * args.dim * args.kv_heads * args.head_dim


def feed_forward_params(args: ModelArgs) -> int:
    """Weights of one SwiGLU layer: w1, w3 (dim → hidden) and w2 (hidden → dim)."""
    return 3 * args.dim * args.ffn_hidden_dim


def count_parameters(args: ModelArgs) -> ParamCount:
    """Every parameter of `Transformer(args)`, each shared tensor counted once."""
    embedding = args.vocab_size * args.dim
    return ParamCount(
        embedding=embedding,
        attention=args.n_layers * attention_params(args),
        feed_forward=args.n_layers * feed_forward_params(args),
        norms=(2 * args.n_layers + 1) * args.dim,
        output=0 if args.tie_embeddings else embedding,
    )
