"""Tensor names as data: a name's layer index abstracted to "{i}", and renaming through tables of such templates."""
from __future__ import annotations

import re

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def template(key: str) -> tuple[str, str | None]:
    """'layers.3.attention.wq.weight' -> ('layers.{i}.attention.wq.weight', '3'); (key, None) without a layer."""
    m = _LAYER_INDEX.search(key)
    if m is None:
        return key, None
    return f"{key[:m.start()]}.{{i}}.{key[m.end():]}", m.group(1)


def rename(key: str, table: dict[str, str]) -> str | None:
    """The name `table` maps `key` to, its layer index kept; None when the table has no entry for it."""
    pattern, index = template(key)
    target = table.get(pattern)
    return None if target is None else target.format(i=index)


def inverse(table: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}
