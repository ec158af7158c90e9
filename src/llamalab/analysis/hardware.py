"""Peak compute and memory bandwidth of known accelerators; MFU and memory-bandwidth utilisation."""
from __future__ import annotations

from dataclasses import dataclass

from llamalab.analysis.flops import flops_per_token
from llamalab.analysis.memory import inference_bytes
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError


@dataclass(frozen=True)
class Accelerator:
    """Vendor datasheet numbers: dense (no sparsity) bf16 tensor FLOP/s, memory bandwidth and size."""

    name: str
    peak_flops: float  # FLOP/s
    memory_bandwidth: float  # bytes/s
    memory_bytes: float
    device_names: tuple[str, ...]  # words of torch.cuda.get_device_name() that identify it, all required


ACCELERATORS = {
    a.name: a
    for a in [
        Accelerator("h100-sxm", 989.4e12, 3.35e12, 80e9, ("H100",)),
        Accelerator("h100-pcie", 756.5e12, 2.0e12, 80e9, ("H100", "PCIe")),
        Accelerator("h200", 989.4e12, 4.8e12, 141e9, ("H200",)),
        Accelerator("b200", 2250e12, 8.0e12, 180e9, ("B200",)),
        Accelerator("a100-80gb", 312e12, 2.039e12, 80e9, ("A100", "80GB")),
        Accelerator("a100-40gb", 312e12, 1.555e12, 40e9, ("A100",)),
        Accelerator("l40s", 362.05e12, 0.864e12, 48e9, ("L40S",)),
        Accelerator("l4", 121e12, 0.3e12, 24e9, ("L4",)),
        Accelerator("mi300x", 1307.4e12, 5.3e12, 192e9, ("MI300X",)),
        Accelerator("v100", 125e12, 0.9e12, 32e9, ("V100",)),  # fp16: no bf16 on Volta
    ]
}


def get_accelerator(name: str) -> Accelerator:
    """The table entry for a name such as 'h100-sxm'."""
    if name not in ACCELERATORS:
        raise ConfigError(
            f"unknown accelerator {name!r}; choose one of: {', '.join(ACCELERATORS)} "
            "(or give the peak FLOP/s and bandwidth yourself)"
        )
    return ACCELERATORS[name]


def accelerator_for_device(device_name: str) -> Accelerator | None:
    """The entry matching a device name like 'NVIDIA H100 80GB HBM3', the most specific match first."""
    words = set(device_name.upper().replace("-", " ").split())  # 'A100-SXM4-80GB' -> A100, SXM4, 80GB
    matches = [a for a in ACCELERATORS.values() if all(part.upper() in words for part in a.device_names)]
    return max(matches, key=lambda a: len(a.device_names), default=None)


def mfu(tokens_per_second: float, args: ModelArgs, seq_len: int, peak_flops: float, training: bool = True) -> float:
    """Model FLOPs utilisation: the model FLOPs the measured throughput implies, over the hardware peak."""
    return tokens_per_second * flops_per_token(args, seq_len, training) / peak_flops


def mbu(
    tokens_per_second: float,
    args: ModelArgs,
    context_len: int,
    peak_bandwidth: float,
    batch: int = 1,
    dtype: str = "bf16",
) -> float:
    """Model bandwidth utilisation of decoding: every step reads all weights and the batch's KV cache."""
    return tokens_per_second / batch * inference_bytes(args, batch, context_len, dtype) / peak_bandwidth
