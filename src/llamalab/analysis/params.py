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


def block_matrices(args: ModelArgs) -> dict[str, list[tuple[int, int]]]:
    """(in_features, out_features) of one block's weight matrices, by component."""
    dim, kv_dim, hidden = args.dim, args.kv_heads * args.head_dim, args.ffn_hidden_dim
    return {
        "attention": [(dim, dim), (dim, kv_dim), (dim, kv_dim), (dim, dim)],  # wq, wk, wv, wo
        "feed_forward": [(dim, hidden), (hidden, dim), (dim, hidden)],  # w1, w2, w3
    }


def linear_shapes(args: ModelArgs) -> list[tuple[int, int]]:
    """(in_features, out_features) of every matrix a forward pass multiplies by: each block's, then the
    output head (listed even when it is tied to the embedding)."""
    block = [shape for shapes in block_matrices(args).values() for shape in shapes]
    return block * args.n_layers + [(args.dim, args.vocab_size)]


def count_parameters(args: ModelArgs) -> ParamCount:
    """Every parameter of `Transformer(args)`, each shared tensor counted once."""
    per_block = {part: sum(n_in * n_out for n_in, n_out in shapes) for part, shapes in block_matrices(args).items()}
    embedding = args.vocab_size * args.dim
    return ParamCount(
        embedding=embedding,
        attention=args.n_layers * per_block["attention"],
        feed_forward=args.n_layers * per_block["feed_forward"],
        norms=(2 * args.n_layers + 1) * args.dim,
        output=0 if args.tie_embeddings else embedding,
    )
