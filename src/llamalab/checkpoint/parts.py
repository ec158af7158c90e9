"""Reading only part of each weight (one tensor-parallel rank's) from a Meta, HF or native checkpoint.

A part is (dim, index, parts): the index-th of `parts` equal slices of the full weight along dim, or
None for the whole weight. Files are memory-mapped, so only the bytes of the parts are read, and a
Meta checkpoint of N shards serves any tensor-parallel size.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llamalab.checkpoint import detect_format, hf, meta, native, read, resolve_model
from llamalab.checkpoint.keys import rename
from llamalab.checkpoint.weights import StateDict, load_tensors
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError
from llamalab.files import read_json
from llamalab.parts import Part


def read_args(path: str | Path) -> ModelArgs:
    """The ModelArgs of a checkpoint, reading no weights for the folder formats."""
    path = resolve_model(path)
    fmt = detect_format(path)
    folder = path if path.is_dir() else path.parent
    if fmt == "meta":
        shard0 = load_tensors(meta.shard_files(folder)[0])
        return meta.args_from_params(read_json(folder / "params.json", CheckpointError), shard0, folder / "params.json")
    if fmt == "hf":
        return hf.args_from_hf_config(read_json(folder / "config.json", CheckpointError))
    if fmt == "native":
        return native.read(folder)[0]
    return read(path)[0]


def read_parts(path: str | Path, parts: dict[str, Part | None]) -> StateDict:
    """The requested part of each named (Meta-named) weight of the checkpoint at `path`."""
    try:
        return _read_parts(resolve_model(path), parts)
    except KeyError as e:
        raise CheckpointError(f"{path}: no tensor {e.args[0]!r} in the checkpoint") from None


def _read_parts(path: Path, parts: dict[str, Part | None]) -> StateDict:
    fmt = detect_format(path)
    folder = path if path.is_dir() else path.parent
    if fmt == "meta":
        shards = [load_tensors(f) for f in meta.shard_files(folder)]
        return {name: _meta_part([s[name] for s in shards], meta.parallel_dim(name, folder), part)
                for name, part in parts.items()}
    if fmt == "hf":
        args = read_args(folder)
        hf_state = {}
        for file in hf._weight_files(folder):
            hf_state.update(load_tensors(file))
        return {name: _hf_part(hf_state[rename(name, hf.HF_KEYS)], name, part, args.head_dim)
                for name, part in parts.items()}
    state = native.read(folder)[1] if fmt == "native" else read(path)[1]
    return {name: _part(state[name], part) for name, part in parts.items()}


def _part(tensor: torch.Tensor, part: Part | None) -> torch.Tensor:
    return tensor if part is None else meta.rank_slice([tensor], *part)


def _meta_part(pieces: list[torch.Tensor], split_dim: int | None, part: Part | None) -> torch.Tensor:
    """A part of the weight Meta split into `pieces` along split_dim, touching only the pieces it needs."""
    if part is None or split_dim is None:
        return _part(meta.rank_slice(pieces, split_dim, 0, 1), part)
    if part.dim == split_dim:
        return meta.rank_slice(pieces, *part)
    return torch.cat([_part(piece, part) for piece in pieces], dim=split_dim)


def _hf_part(tensor: torch.Tensor, name: str, part: Part | None, head_dim: int) -> torch.Tensor:
    """A part of a HF weight under Meta's layout: q/k rows of whole heads are permuted back to interleaved RoPE."""
    tensor = _part(tensor, part)
    if name.endswith(("attention.wq.weight", "attention.wk.weight")):
        tensor = hf.half_split_to_interleaved(tensor, tensor.shape[0] // head_dim)
    return tensor
