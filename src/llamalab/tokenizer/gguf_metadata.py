"""The header of a GGUF file, its key/value metadata and its tensor directory, read without its tensors.

One reader for the tokenizer (the vocabulary is metadata) and for the weights (checkpoint/gguf_header.py adds
the directory's checks). gguf's GGUFReader maps every string of a vocabulary to its own numpy view (SmolLM2's 49k
tokens and merges: ~8 s, ~160 MB); here the memory-mapped header is parsed in one pass: numbers with struct /
numpy, strings sliced. Layout (gguf-py's numbering): magic, version, tensor count, key/value count; per key a
length-prefixed name, a GGUFValueType and the value (arrays: item type, count, items); per tensor a name, n_dims,
dims (innermost first), a GGMLQuantizationType and an offset into the data, which starts at the next multiple of
general.alignment (default 32).
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType as T

from llamalab.errors import TokenizerError

MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
SCALARS = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
           T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d"}
_LENGTH = struct.Struct("<Q")


class GGUFHeaderError(ValueError):
    """A file that is not GGUF, or whose header is corrupt or cut short (each caller raises its own error type)."""


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]  # key -> str, int, float, bool or a list of them (None: an array not read)
    tensors: list[tuple[str, tuple[int, ...], int, int]]  # name, shape (outermost first), GGML type id, data offset
    data_start: int  # where the tensors' data begins in the file (0 when read up to a key only)
    file_size: int


def is_gguf(path: str | Path) -> bool:
    """Whether the file starts with GGUF's magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """Every metadata key of a GGUF file → its value (str, int, float, bool, or a list of them)."""
    return _metadata(Path(path), None)


def has_gguf_key(path: str | Path, key: str) -> bool:
    """Whether the GGUF file's metadata holds `key` (read up to that key only: no vocabulary parsed before it)."""
    return key in _metadata(Path(path), key)


def _metadata(path: Path, stop_at: str | None) -> dict[str, Any]:
    try:
        return read_gguf_header(path, arrays=True, stop_at=stop_at).metadata
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the GGUF metadata ({e.strerror or e})") from None
    except GGUFHeaderError as e:
        raise TokenizerError(f"{path}: {e}") from None


def read_gguf_header(path: str | Path, arrays: bool = True, stop_at: str | None = None) -> GGUFHeader:
    """The metadata (with its arrays, or None in their place) and the tensor directory of a GGUF file; with
    `stop_at`, the metadata up to that key only (the key present, its value None) and no directory. Raises OSError
    for a file that cannot be read, GGUFHeaderError for one that is not a whole GGUF header."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFHeaderError("not a GGUF file (no GGUF magic)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Reader(buf, 4), arrays, stop_at)


def _parse(reader: _Reader, arrays: bool, stop_at: str | None) -> GGUFHeader:
    size = len(reader.buf)
    try:
        version, n_tensors, n_kv = reader.scalar("<I"), reader.scalar("<Q"), reader.scalar("<Q")
        if version not in (2, 3):
            raise GGUFHeaderError(f"GGUF version {version} (big-endian or too old); llamalab reads versions 2 and 3")
        reader.check_count(n_kv, 12)  # a key is at least a length, a type and a value
        metadata = {}
        for _ in range(n_kv):
            key = reader.string()
            if key == stop_at:
                metadata[key] = None
                return GGUFHeader(metadata, [], 0, size)
            metadata[key] = reader.value(reader.scalar("<I"), arrays)
        if stop_at is not None:
            return GGUFHeader(metadata, [], 0, size)
        reader.check_count(n_tensors, 24)
        tensors = []
        for _ in range(n_tensors):
            name = reader.string()
            n_dims = reader.scalar("<I")
            if n_dims > MAX_DIMS:
                raise GGUFHeaderError(f"tensor {name} has {n_dims} dimensions (GGUF allows {MAX_DIMS})")
            dims = [reader.scalar("<Q") for _ in range(n_dims)]
            type_id, offset = reader.scalar("<I"), reader.scalar("<Q")
            tensors.append((name, tuple(reversed(dims)), type_id, offset))
    except (struct.error, OverflowError):  # OverflowError: a corrupt length sends the cursor past any offset
        raise GGUFHeaderError("truncated GGUF header (it runs past the end of the file)") from None
    alignment = metadata.get("general.alignment") or 32
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1:
        raise GGUFHeaderError(f"general.alignment {alignment!r} is not a positive whole number")
    return GGUFHeader(metadata, tensors, -(-reader.offset // alignment) * alignment, size)


class _Reader:
    """A cursor over the header's bytes."""

    def __init__(self, buf, offset: int):
        self.buf, self.offset = buf, offset

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def check_count(self, count: int, min_bytes: int) -> None:
        """A count of items that the rest of the file cannot hold is a corrupt header, not a long loop."""
        if count * min_bytes > len(self.buf) - self.offset:
            raise GGUFHeaderError(f"a count of {count:,} items runs past the end of the file; the file is corrupt")

    def string(self) -> str:
        return self.strings(1)[0]

    def strings(self, count: int) -> list[str]:
        """`count` length-prefixed strings (a vocabulary's 50k-250k pieces: the loop kept tight)."""
        buf, offset, length_at, out = self.buf, self.offset, _LENGTH.unpack_from, []
        append = out.append
        for _ in range(count):
            (length,) = length_at(buf, offset)
            offset += 8
            if offset + length > len(buf):
                raise struct.error("a string runs past the end")
            append(buf[offset:offset + length].decode("utf-8", errors="replace"))
            offset += length
        self.offset = offset
        return out

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            length = self.scalar("<Q")
            self.offset += length

    def value(self, kind: int, arrays: bool = True):
        if kind == T.STRING:
            return self.string()
        if kind == T.ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            self.check_count(count, struct.calcsize(SCALARS[item]) if item in SCALARS else 8)
            if item in SCALARS:  # numbers in one numpy read
                dtype = np.dtype(SCALARS[item])
                values = np.frombuffer(self.buf, dtype, count, self.offset).tolist() if arrays else None
                self.offset += dtype.itemsize * count
                return values
            if item == T.STRING and not arrays:
                self.skip_strings(count)
                return None
            if item == T.STRING:
                return self.strings(count)
            values = [self.value(item, arrays) for _ in range(count)]
            return values if arrays else None
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        raise GGUFHeaderError(f"unknown GGUF value type {kind}; the file is corrupt")
