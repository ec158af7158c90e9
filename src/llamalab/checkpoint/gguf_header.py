"""The tensor directory of a GGUF file, checked: read by tokenizer/gguf_metadata.py's header reader (arrays skipped:
loading weights needs no vocabulary), each entry a TensorInfo whose type gguf knows and whose bytes lie in the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from gguf import GGMLQuantizationType as GGML

from llamalab.errors import CheckpointError
from llamalab.tokenizer.gguf_metadata import GGUFHeaderError, read_gguf_header


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
    """Scalar and string metadata (arrays are left out: None) and the tensor directory of a GGUF file, each tensor
    checked to be whole blocks of a type gguf knows and to lie inside the file."""
    try:
        header = read_gguf_header(path, arrays=False)  # the vocabulary is the tokenizer's
    except (OSError, GGUFHeaderError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None
    tensors = []
    for name, shape, type_id, offset in header.tensors:
        try:
            tensor_type = GGML(type_id)
        except ValueError:
            raise CheckpointError(f"{path}: tensor {name} has GGML type {type_id}, which llamalab cannot read; "
                                  "re-quantize the model with a common type (e.g. Q8_0, Q4_K_M)") from None
        info = TensorInfo(name, shape, tensor_type, header.data_start + offset)
        if shape and shape[-1] % gguf.GGML_QUANT_SIZES[tensor_type][0]:
            raise CheckpointError(f"{path}: tensor {name} has rows of {shape[-1]}, not whole {tensor_type.name} blocks")
        if info.offset + info.n_bytes > header.file_size:
            raise CheckpointError(f"{path}: tensor {name} runs past the end of the file; the file is truncated")
        tensors.append(info)
    return header.metadata, tensors
