"""The part of a weight one tensor-parallel rank holds: what `parallel` asks for and `checkpoint` reads."""
from __future__ import annotations

from typing import NamedTuple


class Part(NamedTuple):
    """The index-th of `count` equal slices of a full weight along `dim` (None where a rank holds all of it)."""

    dim: int
    index: int
    count: int
