"""Cost accounting: parameters, FLOPs, memory (weights, KV cache, training), MFU and bandwidth utilisation."""
from llamalab.analysis.flops import Flops, decode_flops, flops_per_token, forward_flops, prefill_flops, training_flops
from llamalab.analysis.hardware import ACCELERATORS, Accelerator, accelerator_for_device, get_accelerator, mbu, mfu
from llamalab.analysis.memory import (
    DTYPE_BYTES,
    PRECISIONS,
    WEIGHT_DTYPES,
    TrainingMemory,
    activation_bytes,
    cache_dtype,
    compute_dtype,
    head_activation_bytes,
    inference_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    logits_gradient_bytes,
    training_memory,
    weight_bytes,
)
from llamalab.analysis.params import ParamCount, block_matrices, count_parameters, linear_shapes

__all__ = [
    "ACCELERATORS", "Accelerator", "DTYPE_BYTES", "Flops", "PRECISIONS", "ParamCount", "TrainingMemory",
    "WEIGHT_DTYPES", "accelerator_for_device", "activation_bytes", "block_matrices", "cache_dtype",
    "compute_dtype", "count_parameters", "decode_flops", "flops_per_token", "forward_flops", "get_accelerator",
    "head_activation_bytes", "inference_bytes", "kv_cache_bytes", "layer_activation_bytes", "linear_shapes",
    "logits_gradient_bytes", "mbu", "mfu", "prefill_flops", "training_flops", "training_memory", "weight_bytes",
]
