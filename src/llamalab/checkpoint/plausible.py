"""Checks of a header's sizes against what the file really holds, made before anything is sized by the header.

A 40 KB file whose header says 20,000 layers must be refused in microseconds, not after building a
20,000-layer model (minutes, gigabytes); these checks use arithmetic and tensor names only.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError

_LAYER = re.compile(r"layers\.(\d+)\.")


def parameter_count(args: ModelArgs) -> int:
    """Weights of a model of `args` (the tied head counted once), by arithmetic: no model is built."""
    hd, hidden = args.head_dim, args.ffn_hidden_dim
    attention = args.dim * hd * (2 * args.n_heads + 2 * args.kv_heads)  # wq, wo; wk, wv
    layer = attention + 3 * args.dim * hidden + 2 * args.dim  # w1, w2, w3; two norms
    head = 0 if args.tie_embeddings else args.vocab_size * args.dim
    return args.vocab_size * args.dim + args.n_layers * layer + args.dim + head


def check_layers_present(args: ModelArgs, names: Iterable[str], source: str | Path) -> None:
    """Raise CheckpointError unless the tensors (Meta names) hold exactly layers 0 .. n_layers-1."""
    present = {int(m.group(1)) for name in names if (m := _LAYER.match(name))}
    if present != set(range(args.n_layers)):
        found = f"layers 0..{max(present)}" if present == set(range(len(present))) and present else \
            f"{len(present)} layer(s)"
        raise CheckpointError(f"{source}: the config says n_layers={args.n_layers} but the file holds tensors of "
                              f"{found}; the config or the file is wrong")


def check_fits_file(args: ModelArgs, file_bytes: int, bytes_per_weight: float, extra_bytes: int,
                    source: str | Path) -> None:
    """Raise CheckpointError when a file of `file_bytes` cannot hold the weights its header describes."""
    needed = int(parameter_count(args) * bytes_per_weight) + extra_bytes
    if needed > file_bytes:
        raise CheckpointError(f"{source}: its header describes {parameter_count(args):,} weights "
                              f"(at least {needed:,} bytes) but the file has {file_bytes:,}; "
                              "the header is corrupt or the file truncated")
