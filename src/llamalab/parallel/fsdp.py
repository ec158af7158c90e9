"""FSDP2 (`fully_shard`) over the data-parallel ranks: each block's weights, gradients and optimizer
state are split dp_shard ways and gathered just in time for its forward and backward."""
from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from llamalab.model import Transformer


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
