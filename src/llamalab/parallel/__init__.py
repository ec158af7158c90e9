"""Model parallelism with torch.distributed, applied to a built model from outside it.

- `mesh`: the torchrun process group and the 2-D (dp_shard, tp) device mesh; `is_main_process`.
- `sizes`: `check_tp_size`, the TP sizes a model splits into (from its ModelArgs alone).
- `tensor_parallel`: `apply_tp`, the Megatron plan by module name, optional sequence parallelism.
- `fsdp`: `apply_fsdp`, FSDP2 `fully_shard` with one unit per block; `apply_fsdp_tp`, FSDP2 x TP for training.
- `loading`: `load_tp_model`, a checkpoint straight into a tensor-parallel model, each rank reading its part.

The names are importable from here; each module is imported when first used, because DTensor
(tensor_parallel, fsdp, loading) takes about 2 s to import and most commands never need it.
"""
import importlib

_MODULE_OF = {
    "init_distributed": "mesh", "make_mesh": "mesh", "is_main_process": "mesh", "shared_seed": "mesh",
    "check_tp_size": "sizes",
    "apply_tp": "tensor_parallel", "block_plan": "tensor_parallel", "model_plan": "tensor_parallel",
    "replicate_kv_heads": "tensor_parallel",
    "apply_fsdp": "fsdp", "apply_fsdp_tp": "fsdp",
    "load_local_shards": "loading", "load_tp_model": "loading", "local_parts": "loading",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
