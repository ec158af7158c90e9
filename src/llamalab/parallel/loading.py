"""Loading a checkpoint straight into a tensor-parallel model: each rank reads only its own part of each weight.

A part is (dim, index, parts): the index-th of `parts` equal slices of the full weight along dim, or
None for the whole weight. The checkpoint side (`llamalab.checkpoint.parts.read_parts`) turns a dict of
them into tensors; it is passed in, so that this package stays free of file formats.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError
from llamalab.model import Transformer
from llamalab.parallel.sizes import check_tp_size
from llamalab.parallel.tensor_parallel import apply_tp
from llamalab.parts import Part

PartReader = Callable[[dict[str, Part | None]], dict[str, torch.Tensor]]


def local_parts(model: Transformer) -> dict[str, Part | None]:
    """The part of each checkpoint weight that this rank of a tensor-parallel `model` holds."""
    args, parts = model.args, {}
    for name, param in model.state_dict(keep_vars=True).items():
        if name == "output.weight" and args.tie_embeddings:
            continue  # it is tok_embeddings.weight
        shard = isinstance(param, DTensor) and next((p for p in param.placements if isinstance(p, Shard)), None)
        if not shard:
            parts[name] = None
            continue
        index, count = param.device_mesh.get_local_rank(), param.device_mesh.size()
        if name.endswith(("attention.wk.weight", "attention.wv.weight")) and count > args.kv_heads:
            copies = count // args.kv_heads  # replicated key/value heads: rank r holds head r // copies
            index, count = index // copies, args.kv_heads
        parts[name] = Part(shard.dim, index, count)
    return parts


@torch.no_grad()
def load_local_shards(model: Transformer, tensors: dict[str, torch.Tensor]) -> None:
    """Copy each rank's part of every weight (as listed by `local_parts`) into the split `model`."""
    for name, param in model.state_dict(keep_vars=True).items():
        if name == "output.weight" and model.args.tie_embeddings:
            continue
        if name not in tensors:
            raise CheckpointError(f"the checkpoint holds no {name}")
        local = param.to_local() if isinstance(param, DTensor) else param
        if local.shape != tensors[name].shape:
            raise CheckpointError(f"{name}: this rank's part has shape {tuple(tensors[name].shape)}, "
                                  f"the model expects {tuple(local.shape)}; the checkpoint disagrees with its config")
        local.copy_(tensors[name])


def load_tp_model(args: ModelArgs, tp_mesh: DeviceMesh, read_parts: PartReader, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None) -> Transformer:
    """An inference model split over `tp_mesh` whose weights come from `read_parts` (only this rank's parts).

    The TP size is checked against `args` before anything is read; dtype None keeps the checkpoint's.
    """
    check_tp_size(args, tp_mesh.size())
    with torch.device("meta"):
        model = Transformer(args).eval()
    apply_tp(model, tp_mesh)
    tensors = read_parts(local_parts(model))  # memory-mapped: the bytes are read by the copy below
    dtype = dtype or tensors["tok_embeddings.weight"].dtype
    model.to(dtype=dtype).to_empty(device=device)
    model.init_rope(torch.device(device))
    load_local_shards(model, tensors)
    return model
