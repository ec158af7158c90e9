"""Hugging Face model ids (`org/name`) resolved offline to the snapshot folder in the local Hugging Face cache.

The cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`, laid out as
`models--org--name/refs/main` (a commit hash) and `models--org--name/snapshots/<hash>/` (the files).
`huggingface_hub` reads it (`local_files_only`: nothing is downloaded); a model that is not there is an error
that says how to download it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from llamalab.errors import CheckpointError

MODEL_ID = re.compile(r"[\w.-]+/[\w.-]+(/[^\\]+)?")  # org/name, or org/name/file inside the repository


def hub_cache() -> Path:
    """The folder of the Hugging Face hub cache, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "huggingface" / "hub"


def resolve_model(source: str | os.PathLike) -> Path:
    """The local path of a checkpoint: the path itself when it exists, else the cached snapshot of a hub id.

    `org/name` gives the snapshot folder, or its one .gguf file when it holds GGUF files and no config.json;
    `org/name/file.gguf` names a file in the snapshot.
    """
    path = Path(source)
    text = str(source)
    if path.exists() or not MODEL_ID.fullmatch(text) or text.startswith("."):
        return path
    org, name, *rest = text.split("/")
    snapshot = _cached_snapshot(f"{org}/{name}", text)
    if rest:
        inside = snapshot.joinpath(*rest)
        if not inside.exists():
            raise CheckpointError(f"{text}: the cached snapshot of {org}/{name} ({snapshot}) has no {'/'.join(rest)}")
        return inside
    return _model_in(snapshot, text)


def _cached_snapshot(repo_id: str, given: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        raise CheckpointError(
            f"{given}: no such file or folder, and no Hugging Face model {repo_id} in the local cache {cache}; "
            f"download it first (`hf download {repo_id}`), set HF_HUB_CACHE or HF_HOME to the cache that holds "
            "it, or give a local path") from None


def _model_in(snapshot: Path, given: str) -> Path:
    """The snapshot folder when it is a checkpoint folder, else its single .gguf file."""
    if (snapshot / "config.json").is_file() or (snapshot / "params.json").is_file():
        return snapshot
    ggufs = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf"))
    if len(ggufs) == 1:
        return snapshot / ggufs[0]
    if ggufs:
        raise CheckpointError(f"{given} holds {len(ggufs)} GGUF files ({', '.join(ggufs[:6])}); "
                              f"name one: {given}/{ggufs[0]}")
    raise CheckpointError(f"{given}: the cached snapshot {snapshot} holds no config.json, params.json or .gguf file; "
                          "download the model's weights and config")
