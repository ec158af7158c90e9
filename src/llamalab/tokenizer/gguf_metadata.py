"""The key/value metadata of a GGUF file, read without its tensors.

gguf's GGUFReader maps every string of a 49k-token vocabulary to its own numpy view (seconds per file);
here the header is parsed in one pass over the file's first megabytes: numbers with struct / numpy, strings
sliced. Layout (gguf-py's GGUFValueType numbering): magic, version, tensor count, key/value count, then
per key a length-prefixed name, a value type and the value (arrays: item type, count, items).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType as T

from llamalab.errors import TokenizerError

SCALARS = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
           T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d"}
_LENGTH = struct.Struct("<Q")
FIRST_READ = 16 << 20  # bytes: the metadata of a Llama 3 vocabulary (128k tokens, 280k merges) is ~8 MB


def is_gguf(path: str | Path) -> bool:
    """Whether the file starts with GGUF's magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """Every metadata key of a GGUF file → its value (str, int, float, bool, or a list of them)."""
    return _read(Path(path), None)


def has_gguf_key(path: str | Path, key: str) -> bool:
    """Whether the GGUF file's metadata holds `key` (read up to that key only: no vocabulary parsed before it)."""
    return key in _read(Path(path), key)


def _read(path: Path, stop_at: str | None) -> dict[str, Any]:
    size = FIRST_READ
    try:
        with open(path, "rb") as f:
            while True:  # the metadata precedes the tensors: read more of the file until it is all in
                f.seek(0)
                head = f.read(size)
                try:
                    return _parse(head, path, stop_at)
                except _NeedMore:
                    if len(head) < size:
                        raise TokenizerError(f"{path}: truncated GGUF metadata") from None
                    size *= 4
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the GGUF metadata ({e.strerror})") from None


class _NeedMore(Exception):
    """The metadata runs past the bytes read so far."""


def _parse(buf: bytes, path: Path, stop_at: str | None = None) -> dict[str, Any]:
    """The metadata up to the end, or up to the key `stop_at` (then holding that key, its value left unread: None)."""
    if buf[:4] != b"GGUF":
        raise TokenizerError(f"{path}: not a GGUF file (no GGUF magic)")
    reader = _Reader(buf, 4)
    try:
        version, _n_tensors, n_kv = reader.scalar("<I"), reader.scalar("<Q"), reader.scalar("<Q")
        if version not in (2, 3):
            raise ValueError(f"version {version} (big-endian or too old); llamalab reads versions 2 and 3")
        metadata = {}
        for _ in range(n_kv):
            key = reader.string()
            if key == stop_at:
                metadata[key] = None
                break
            metadata[key] = reader.value(reader.scalar("<I"))
        return metadata
    except struct.error:
        raise _NeedMore from None
    except ValueError as e:
        raise TokenizerError(f"{path}: corrupt GGUF metadata: {e}") from None


class _Reader:
    """A cursor over the metadata bytes."""

    def __init__(self, buf: bytes, offset: int):
        self.buf, self.offset = buf, offset

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        return self.strings(1)[0]

    def strings(self, count: int) -> list[str]:
        """`count` length-prefixed strings (a vocabulary's 50k-250k pieces: the loop kept tight)."""
        buf, offset, length_at, out = self.buf, self.offset, _LENGTH.unpack_from, []
        append = out.append
        for _ in range(count):
            (length,) = length_at(buf, offset)
            offset += 8
            append(buf[offset:offset + length].decode("utf-8", errors="replace"))
            offset += length
        if offset > len(buf):
            raise struct.error("a string runs past the bytes read")
        self.offset = offset
        return out

    def value(self, kind: int):
        if kind == T.STRING:
            return self.string()
        if kind == T.ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item == T.STRING:
                return self.strings(count)
            if item in SCALARS:  # numbers in one numpy read
                dtype = np.dtype(SCALARS[item])
                if self.offset + dtype.itemsize * count > len(self.buf):
                    raise struct.error("an array runs past the bytes read")
                values = np.frombuffer(self.buf, dtype, count, self.offset)
                self.offset += dtype.itemsize * count
                return values.tolist()
            return [self.value(item) for _ in range(count)]
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        raise ValueError(f"unknown GGUF value type {kind}")
