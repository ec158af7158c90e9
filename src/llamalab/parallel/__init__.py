"""Model parallelism with torch.distributed, applied to a built model from outside it.

Tensor parallelism (`apply_tp`), FSDP2 (`apply_fsdp`), both on a 2-D (dp_shard, tp) mesh (`make_mesh`),
and loading a checkpoint straight into a tensor-parallel model, each rank reading only its part.
"""
from llamalab.parallel.fsdp import apply_fsdp
from llamalab.parallel.loading import Part, load_local_shards, load_tp_model, local_parts
from llamalab.parallel.mesh import init_distributed, is_main_process, make_mesh
from llamalab.parallel.tensor_parallel import apply_tp, block_plan, check_tp_size, model_plan, replicate_kv_heads

__all__ = [
    "Part", "apply_fsdp", "apply_tp", "block_plan", "check_tp_size", "init_distributed", "is_main_process",
    "load_local_shards", "load_tp_model", "local_parts", "make_mesh", "model_plan", "replicate_kv_heads",
]
