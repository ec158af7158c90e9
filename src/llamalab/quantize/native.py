"""The C kernels of cpu_kernels.c (float32 activations times GGUF's Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K /
Q6_K blocks), built once per machine and cached.

The shared library is compiled with the system's C compiler on first use (about a second) into
`$LLAMALAB_KERNEL_DIR` (default `~/.cache/llamalab/kernels`), named by a hash of the source, the flags and
the CPU's features, and loaded through ctypes. Without a compiler `kernels()` is None and the layers keep
their PyTorch path. `kernel_quantized_linears(model)` gives the layers holding GGUF's blocks (blocks.BlockLinear,
which has no PyTorch kernel) the kernels' forward for few-row float32 products (decoding), so that a step reads the
blocks once, where they lie, instead of dequantizing every weight.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path

import torch
from torch import nn

from llamalab.files import atomic_output
from llamalab.quantize.blocks import GGML_TYPE_IDS, BlockLinear

SOURCES = tuple(Path(__file__).with_name(name) for name in ("cpu_kernels.c", "cpu_decode.c"))  # + cpu_rows.h
HEADER = Path(__file__).with_name("cpu_rows.h")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-lm")
MAX_ROWS = 32  # activation rows up to which the kernels beat dequantizing blocks of the weight for a float32 GEMM
_P, _I64 = ctypes.c_void_p, ctypes.c_int64


def kernel_dir() -> Path:
    """Where built kernels are kept (LLAMALAB_KERNEL_DIR, else ~/.cache/llamalab/kernels)."""
    return Path(os.environ.get("LLAMALAB_KERNEL_DIR") or Path.home() / ".cache" / "llamalab" / "kernels")


@cache
def kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, built first if this machine has none yet; None where it cannot be built."""
    if sys.platform != "linux" or os.environ.get("LLAMALAB_NO_KERNELS"):
        return None
    try:
        library = ctypes.CDLL(str(_built_library()))
    except (OSError, subprocess.CalledProcessError) as e:
        warnings.warn(f"llamalab's CPU kernels could not be built ({e}); quantized layers use PyTorch", stacklevel=2)
        return None
    library.block_linear.argtypes = [_P, _I64, _P, _I64, _P, _I64, _I64]
    library.block_values.argtypes = [_P, _I64, _I64, _I64, _P]
    return library


def block_linear(x: torch.Tensor, layer: BlockLinear) -> torch.Tensor:
    """x (..., in) float32 @ the weight of `layer`'s blocks (read where they lie)ᵀ."""
    x2d = x.reshape(-1, x.shape[-1]).contiguous()  # (rows, in)
    out = torch.empty(x2d.shape[0], layer.out_features)  # (rows, out)
    failed = kernels().block_linear(x2d.data_ptr(), x2d.shape[0], layer.blocks.data_ptr(), GGML_TYPE_IDS[layer.kind],
                                    out.data_ptr(), layer.out_features, layer.in_features)
    if failed:
        raise MemoryError("block_linear could not allocate its block sums")
    return out.view(*x.shape[:-1], layer.out_features)


def block_values(layer: BlockLinear, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """The float32 weight rows start:stop (out, in) of `layer`'s blocks, dequantized in C (the values gguf gives)."""
    blocks = layer.blocks[start:stop]  # (rows, bytes per row)
    out = torch.empty(blocks.shape[0], layer.in_features)
    kernels().block_values(blocks.data_ptr(), GGML_TYPE_IDS[layer.kind], blocks.shape[0], layer.in_features,
                           out.data_ptr())
    return out


class KernelBlockLinear(BlockLinear):
    """A BlockLinear whose float32 products of up to MAX_ROWS rows run in the C kernel, and whose weight is
    dequantized in C for the others (exact weights either way)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_applies(self, x):
            return block_linear(x, self)
        return super().forward(x)

    def dequantize(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return super().dequantize(start, stop)
        return block_values(self, start, stop)


@torch.no_grad()
def kernel_quantized_linears(model: nn.Module) -> int:
    """Give every CPU BlockLinear the C kernels' forward (in place: the same module objects, so a head tied to a
    BlockEmbedding stays tied); return how many changed. Nothing changes where the kernels cannot be built."""
    candidates = [m for m in model.modules() if type(m) is BlockLinear and m.blocks.device.type == "cpu"]
    if not candidates or kernels() is None:  # the library is built only for a model that needs it
        return 0
    for module in candidates:
        module.__class__ = KernelBlockLinear
    return len(candidates)


def _kernel_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """A float32 CPU product of few rows, outside autograd and compilation (cheapest checks first: once a layer)."""
    if x.dtype != torch.float32 or not x.is_cpu or x.numel() > MAX_ROWS * x.shape[-1]:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or module.training):
        return False
    return not torch.compiler.is_compiling()


def _built_library() -> Path:
    """The path of the library for these sources, flags and CPU, compiling it (to a temporary name) when missing."""
    source = b"".join(path.read_bytes() for path in (*SOURCES, HEADER))
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_features().encode()).hexdigest()[:16]
    library = kernel_dir() / f"llamalab_cpu_kernels_{key}.so"
    if library.exists():
        return library
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc / gcc) found")
    with atomic_output(library) as tmp:
        subprocess.run([compiler, *map(str, SOURCES), *FLAGS, "-o", str(tmp)], check=True, capture_output=True)
    return library


def _cpu_features() -> str:
    """The CPU's model and flags (the library is built with -march=native)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return "".join(sorted({line for line in lines if line.startswith(("flags", "model name"))}))
