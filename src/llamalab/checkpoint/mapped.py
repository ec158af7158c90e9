"""Memory-mapped weights: giving the resident pages of a tensor back once its values were copied elsewhere.

Checkpoints load as maps of their files, so a weight re-laid out or cast at load time exists twice in memory
until the process ends: the copy, and the pages of the file it was read from (they count in the process's RSS while
the map lives, and safetensors keeps one map per file). `release_pages(tensor)` asks the kernel to reclaim the pages
wholly inside the tensor's bytes (madvise MADV_PAGEOUT, Linux 5.4+): a page of the file is dropped and read again
only if the old tensor is read again, so no value is ever lost; anything else (anonymous memory without swap, other
systems) stays as it was.
"""
from __future__ import annotations

import ctypes
import mmap
import sys
from functools import cache

import torch

MADV_PAGEOUT = 21


def release_pages(tensor: torch.Tensor) -> None:
    """Let the kernel reclaim the pages wholly inside a CPU tensor's bytes (its values stay readable)."""
    madvise = _libc("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))
    if madvise is None or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + _span(tensor)
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        madvise(first, last - first, MADV_PAGEOUT)  # an error (an old kernel: EINVAL) leaves the pages resident


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing): memory that loading
    used and freed (parsing a GGUF vocabulary into a tokenizer: ~13 MB) otherwise stays in the process's RSS."""
    trim = _libc("malloc_trim", (ctypes.c_size_t,))  # None where the C library has none (musl)
    if trim is not None:
        trim(0)


def _span(tensor: torch.Tensor) -> int:
    """Bytes from a tensor's first element to the end of its last."""
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return (last + 1) * tensor.element_size()


@cache
def _libc(name: str, argtypes: tuple):
    """The C library's function `name` (argtypes, returning int; errno kept), or None off Linux or where it has none."""
    if sys.platform != "linux":
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = list(argtypes), ctypes.c_int
    return function
