"""The header of a GGUF file (scalar metadata and the tensor directory), parsed without gguf's GGUFReader.

GGUFReader makes a numpy view of every string of a vocabulary (on SmolLM2's 49k tokens and merges: ~8 s and
~160 MB), which loading weights does not need. Layout (gguf-py's constants): magic, version, tensor count,
key/value count; per key a length-prefixed name, a GGUFValueType and the value (arrays: item type, count,
items); per tensor a name, n_dims, dims (innermost first), a GGMLQuantizationType and an offset into the data,
which starts at the next multiple of general.alignment (default 32).
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from gguf import GGMLQuantizationType as GGML
from gguf import GGUFValueType as T

from llamalab.errors import CheckpointError

MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
SCALARS = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
           T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d"}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor directory; offset is from the start of the file."""

    name: str
    shape: tuple[int, ...]  # numpy order, outermost first: (rows, cols) for a matrix
    tensor_type: GGML
    offset: int

    @property
    def n_bytes(self) -> int:
        block, type_bytes = gguf.GGML_QUANT_SIZES[self.tensor_type]
        return self.n_elements // block * type_bytes

    @property
    def n_elements(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count

    @property
    def row_bytes_shape(self) -> tuple[int, ...]:
        """The shape of the raw bytes as gguf.quants.dequantize takes them: (..., bytes per row)."""
        block, type_bytes = gguf.GGML_QUANT_SIZES[self.tensor_type]
        return (*self.shape[:-1], self.shape[-1] // block * type_bytes)


def read_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """Scalar and string metadata (arrays are left out: None) and the tensor directory of a GGUF file."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, path, len(buf))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def _parse(buf, path: Path, size: int) -> tuple[dict[str, Any], list[TensorInfo]]:
    cursor = _Cursor(buf)
    try:
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        cursor.offset = 4
        version, n_tensors, n_kv = cursor.scalar("<I"), cursor.scalar("<Q"), cursor.scalar("<Q")
        if version not in (2, 3):
            raise ValueError(f"version {version}; llamalab reads GGUF versions 2 and 3")
        cursor.check_count(n_kv, 12)  # a key is at least a length, a type and a value
        metadata = {}
        for _ in range(n_kv):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.scalar("<I"))
        cursor.check_count(n_tensors, 24)
        entries = []
        for _ in range(n_tensors):
            name = cursor.string()
            n_dims = cursor.scalar("<I")
            if n_dims > MAX_DIMS:
                raise ValueError(f"tensor {name} has {n_dims} dimensions (GGUF allows {MAX_DIMS})")
            dims = [cursor.scalar("<Q") for _ in range(n_dims)]
            type_id, offset = cursor.scalar("<I"), cursor.scalar("<Q")
            entries.append((name, tuple(reversed(dims)), type_id, offset))
    except (struct.error, OverflowError):  # OverflowError: a corrupt length sends the cursor past any offset
        raise CheckpointError(f"{path}: truncated GGUF header") from None
    alignment = metadata.get("general.alignment") or 32
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1:
        raise CheckpointError(f"{path}: general.alignment {alignment!r} is not a positive whole number")
    data_start = -(-cursor.offset // alignment) * alignment
    tensors = []
    for name, shape, type_id, offset in entries:
        try:
            tensor_type = GGML(type_id)
        except ValueError:
            raise CheckpointError(f"{path}: tensor {name} has GGML type {type_id}, which llamalab cannot read; "
                                  "re-quantize the model with a common type (e.g. Q8_0, Q4_K_M)") from None
        info = TensorInfo(name, shape, tensor_type, data_start + offset)
        if shape and shape[-1] % gguf.GGML_QUANT_SIZES[tensor_type][0]:
            raise CheckpointError(f"{path}: tensor {name} has rows of {shape[-1]}, not whole {tensor_type.name} blocks")
        if info.offset + info.n_bytes > size:
            raise CheckpointError(f"{path}: tensor {name} runs past the end of the file; the file is truncated")
        tensors.append(info)
    return metadata, tensors


class _Cursor:
    """Reads little-endian values from a buffer, moving forward."""

    def __init__(self, buf):
        self.buf, self.offset = buf, 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def check_count(self, count: int, min_bytes: int) -> None:
        """A count of items that the rest of the buffer cannot hold is a corrupt header, not a long loop."""
        if count * min_bytes > len(self.buf) - self.offset:
            raise ValueError(f"a count of {count:,} items runs past the end of the file")

    def string(self) -> str:
        length = self.scalar("<Q")
        end = self.offset + length
        if end > len(self.buf):
            raise struct.error("a string runs past the end")
        text = bytes(self.buf[self.offset:end]).decode("utf-8", errors="replace")
        self.offset = end
        return text

    def value(self, kind: int):
        if kind == T.STRING:
            return self.string()
        if kind == T.ARRAY:  # skipped: weights need none of them (the vocabulary is the tokenizer's)
            item, count = self.scalar("<I"), self.scalar("<Q")
            self.check_count(count, struct.calcsize(SCALARS[item]) if item in SCALARS else 8)
            if item in SCALARS:
                self.offset += struct.calcsize(SCALARS[item]) * count
            elif item == T.STRING:
                for _ in range(count):
                    length = self.scalar("<Q")  # read before the offset moves past it
                    self.offset += length
            else:
                for _ in range(count):
                    self.value(item)
            return None
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        raise ValueError(f"unknown GGUF value type {kind}")
