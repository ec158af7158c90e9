"""FSDP2 (`fully_shard`) over the data-parallel ranks: each block's weights, gradients and optimizer
state are split dp_shard ways and gathered just in time for its forward and backward."""
from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from llamalab.model import Transformer
from llamalab.parallel.tensor_parallel import apply_tp


def apply_fsdp(model: Transformer, dp_mesh: DeviceMesh, param_dtype: torch.dtype | None = None) -> Transformer:
    """Shard `model` (already tensor-parallel or not) in place over the 1-D `dp_mesh`, one unit per block.

    `param_dtype` (e.g. torch.bfloat16) casts the gathered weights for compute; gradients are reduced in fp32.
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mesh=dp_mesh, mp_policy=policy)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy)  # embedding, final norm and head
    register_fsdp_forward_method(model, "loss")  # `loss` bypasses forward(): gather the root's weights for it too
    return model


def apply_fsdp_tp(
    model: Transformer, mesh: DeviceMesh, param_dtype: torch.dtype | None = None, loss_parallel: bool = False
) -> Transformer:
    """The training layout on a (dp_shard, tp) mesh: tensor parallelism with sequence parallelism inside each
    tp group, then FSDP2 across them (each only where its size is above 1).

    Call it before LoRA adapters or activation-checkpoint wrappers rename the modules the TP plan names.
    Data is split over the dp_shard ranks only: the tp ranks of a group train on the same batch.
    `loss_parallel`: the logits stay split by vocabulary (see `apply_tp`).
    """
    if mesh["tp"].size() > 1:
        apply_tp(model, mesh["tp"], sequence_parallel=True, loss_parallel=loss_parallel)
    if mesh["dp_shard"].size() > 1:
        apply_fsdp(model, mesh["dp_shard"], param_dtype)
    return model
