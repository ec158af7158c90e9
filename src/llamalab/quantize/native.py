"""The C kernels of cpu_kernels.c (float32 activations times int4 / int8 codes), built once per machine and cached.

The shared library is compiled with the system's C compiler on first use (about a second) into
`$LLAMALAB_KERNEL_DIR` (default `~/.cache/llamalab/kernels`), named by a hash of the source, the flags and
the CPU's features, and loaded through ctypes. Without a compiler `kernels()` is None and the layers keep
their PyTorch path. `kernel_quantized_linears(model)` gives the layers that have no PyTorch kernel for float32
activations (GGUF's Q4_0 / Q4_1 / Q8_0 kept exactly) the kernels' forward for few-row products (decoding), so
that a step reads the codes once instead of dequantizing every weight.
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
from llamalab.quantize.int4 import Int4Linear
from llamalab.quantize.int8 import Int8Linear

SOURCES = tuple(Path(__file__).with_name(name) for name in ("cpu_kernels.c", "cpu_decode.c"))  # + cpu_rows.h
HEADER = Path(__file__).with_name("cpu_rows.h")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-lm")
BLOCK = 32  # inputs the kernels read at a time (BLOCK in cpu_kernels.c): group sizes must be multiples of it
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
    library.int4_linear.argtypes = [_P, _I64, _P, _P, _P, _P, _I64, _I64, _I64]
    library.int8_linear.argtypes = [_P, _I64, _P, _P, _P, _I64, _I64, _I64]
    return library


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                group_size: int) -> torch.Tensor:
    """x (..., in) float32 @ the int4 weight (packed uint8 (out, in/2), float32 scales/zeros (out, in/group))ᵀ."""
    x2d = x.reshape(-1, x.shape[-1]).contiguous()  # (rows, in)
    out = torch.empty(x2d.shape[0], packed.shape[0])  # (rows, out)
    failed = kernels().int4_linear(x2d.data_ptr(), x2d.shape[0], packed.data_ptr(), scales.data_ptr(),
                                   zeros.data_ptr(), out.data_ptr(), packed.shape[0], x2d.shape[1], group_size)
    if failed:
        raise MemoryError("int4_linear could not allocate its activation buffers")
    return out.view(*x.shape[:-1], packed.shape[0])


def int8_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """x (..., in) float32 @ the int8 weight (codes int8 (out, in), float32 scales (out, in/group))ᵀ."""
    x2d = x.reshape(-1, x.shape[-1]).contiguous()  # (rows, in)
    out = torch.empty(x2d.shape[0], codes.shape[0])  # (rows, out)
    kernels().int8_linear(x2d.data_ptr(), x2d.shape[0], codes.data_ptr(), scales.data_ptr(), out.data_ptr(),
                          codes.shape[0], x2d.shape[1], group_size)
    return out.view(*x.shape[:-1], codes.shape[0])


class KernelInt4Linear(Int4Linear):
    """An Int4Linear whose float32 products of up to MAX_ROWS rows run in the C kernel (exact weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_applies(self, x):
            return int4_linear(x, self.weight, self.scales, self.zeros, self.group_size)
        return super().forward(x)


class KernelInt8Linear(Int8Linear):
    """A group-wise Int8Linear (Q8_0) whose float32 products of up to MAX_ROWS rows run in the C kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_applies(self, x):
            if self.kernel_scales.dtype != torch.float32 or self.kernel_scales.shape != self.scales.shape:
                self.kernel_scales = self.scales.float()  # (out, in/group): float16 → float32 is exact
            return int8_linear(x, self.weight, self.kernel_scales, self.group_size)
        return super().forward(x)


@torch.no_grad()
def kernel_quantized_linears(model: nn.Module) -> int:
    """Give every CPU Int4Linear without a PyTorch kernel, and every group-wise Int8Linear, the C kernels' forward
    (in place: the same module objects, so a head tied to an Int8Embedding stays tied); return how many changed.
    Nothing changes where the kernels cannot be built."""
    candidates = [module for module in model.modules() if _has_no_pytorch_kernel(module)]
    if not candidates or kernels() is None:  # the library is built only for a model that needs it
        return 0
    for module in candidates:
        if isinstance(module, Int8Linear):
            module.kernel_scales = module.scales.float()  # (out, in/group): float16 → float32 is exact
        module.__class__ = KernelInt8Linear if isinstance(module, Int8Linear) else KernelInt4Linear
    return len(candidates)


def _has_no_pytorch_kernel(module: nn.Module) -> bool:
    """A CPU group-wise Int8Linear, or an Int4Linear without PyTorch's kernel, whose groups the C kernels read."""
    if type(module) not in (Int4Linear, Int8Linear) or module.weight.device.type != "cpu":
        return False
    if module.group_size is None or module.group_size % BLOCK or module.in_features % BLOCK:
        return False  # per-channel int8 has PyTorch's kernel; the C kernels read whole blocks of BLOCK inputs
    return type(module) is Int8Linear or module.kernel_weight.numel() == 0


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
