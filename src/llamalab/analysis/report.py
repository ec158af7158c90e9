"""One model's costs at one operating point, as a plain dict: what `llamalab analyze` prints or dumps as JSON."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llamalab.analysis.flops import Flops, decode_flops, forward_flops, prefill_flops, training_flops
from llamalab.analysis.hardware import Accelerator, mbu, mfu
from llamalab.analysis.memory import (
    WEIGHT_DTYPES,
    cache_dtype,
    compute_dtype,
    inference_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    training_memory,
    weight_bytes,
)
from llamalab.analysis.params import count_parameters
from llamalab.config import ModelArgs


@dataclass(frozen=True)
class Workload:
    """How a model is run: sequences per step and weight dtype; for training the precision, activation
    checkpointing, and the tensor / fully-sharded data parallel layout."""

    batch: int = 1
    dtype: str = "bf16"
    train: bool = False
    precision: str = "mixed"
    checkpointing: bool = False
    tp: int = 1
    dp: int = 1

    def bytes_per_gpu(self, args: ModelArgs, seq_len: int) -> float:
        """Training memory of one rank when training, else its weights and KV cache."""
        if self.train:
            return training_memory(args, self.batch, seq_len, self.precision, self.checkpointing, self.tp,
                                   self.dp).total
        return inference_bytes(args, self.batch, seq_len, self.dtype, self.tp)


def _per_token(flops: Flops, tokens: int = 1) -> dict[str, float]:
    return {"matmul": flops.matmul / tokens, "attention": flops.attention / tokens, "total": flops.total / tokens}


def cost_report(
    args: ModelArgs,
    seq_len: int,
    work: Workload = Workload(),
    accelerator: Accelerator | None = None,
    tokens_per_second: float | None = None,
) -> dict[str, Any]:
    """Parameters, FLOPs and memory at `seq_len` (the prompt, the decode context and the training length).

    Inference memory is per tensor-parallel rank; when training, the training memory of one rank too.
    With an accelerator, the speed limits its peaks allow, and MFU / bandwidth utilisation of a
    measured `tokens_per_second` (the throughput of all tp × dp accelerators together).
    """
    batch, dtype, tp, dp = work.batch, work.dtype, work.tp, work.dp
    params = count_parameters(args)
    kv_dtype = cache_dtype(dtype)
    report: dict[str, Any] = {
        "config": {**args.to_dict(), "head_dim": args.head_dim, "ffn_hidden_dim": args.ffn_hidden_dim},
        "setting": {"seq_len": seq_len, **asdict(work)},
        "parameters": {**asdict(params), "total": params.total},
        "flops_per_token": {
            "forward": _per_token(forward_flops(args, seq_len), seq_len),
            "training": _per_token(training_flops(args, seq_len), seq_len),
        },
        "prefill_flops": _per_token(prefill_flops(args, seq_len)),
        "decode_step_flops": _per_token(decode_flops(args, seq_len)),
        "weight_bytes": {name: weight_bytes(args, name) for name in WEIGHT_DTYPES},
        "kv_cache": {
            "dtype": kv_dtype,
            "bytes_per_token": kv_cache_bytes(args, 1, 1, kv_dtype),
            "bytes": kv_cache_bytes(args, batch, seq_len, kv_dtype),
            # the same model with one key/value head per query head
            "mha_bytes": kv_cache_bytes(args.replace(n_kv_heads=None), batch, seq_len, kv_dtype),
        },
        "inference_bytes_per_rank": inference_bytes(args, batch, seq_len, dtype, tp),
    }
    if work.train:
        memory = training_memory(args, batch, seq_len, work.precision, work.checkpointing, tp, dp)
        report["training"] = {
            **asdict(memory),
            "activations_per_layer": layer_activation_bytes(args, batch * seq_len, compute_dtype(work.precision), tp),
            "total": memory.total,
        }
    if accelerator is not None:
        peak_tp, peak_all = accelerator.peak_flops * tp, accelerator.peak_flops * tp * dp
        report["accelerator"] = {
            **asdict(accelerator),
            "prefill_seconds_min": batch * prefill_flops(args, seq_len).total / peak_tp,
            "decode_tokens_per_second_max": batch * accelerator.memory_bandwidth
            / inference_bytes(args, batch, seq_len, dtype, tp),
            "training_tokens_per_second_max": peak_all * seq_len / training_flops(args, seq_len).total,
            "memory_needed": work.bytes_per_gpu(args, seq_len),
        }
        if tokens_per_second is not None:
            report["utilisation"] = {
                "tokens_per_second": tokens_per_second,
                "mfu": mfu(tokens_per_second, args, seq_len, peak_all, training=work.train),
            }
            if not work.train:  # decoding reads every weight and the KV cache once per step
                report["utilisation"]["mbu"] = mbu(tokens_per_second, args, seq_len,
                                                   accelerator.memory_bandwidth * tp, batch, dtype)
    return report
