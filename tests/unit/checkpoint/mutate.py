"""Rewrite small valid checkpoint files with a changed header: the inputs of the hostile-file tests and the fuzz
suite."""
import json
import struct
from pathlib import Path

import gguf


def rewrite_gguf(src: Path, dst: Path, changes: dict, blocks: dict | None = None) -> Path:
    """Copy a GGUF (unquantized tensors) with metadata keys set to new values: {key: (value, GGUFValueType)}, and
    tensors replaced by quantized blocks: {GGUF tensor name: (uint8 (rows, bytes per row), GGMLQuantizationType)}."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=reader.get_field("general.architecture").contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in changes:
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for key, (value, vtype) in changes.items():
        if value is not None:
            writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        if blocks and t.name in blocks:
            raw, kind = blocks[t.name]
            writer.add_tensor(t.name, raw, raw_shape=raw.shape, raw_dtype=kind)
        else:
            writer.add_tensor(t.name, t.data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def rewrite_json(folder: Path, name: str, changes: dict) -> None:
    """Set (or, with value ..., delete) keys of a JSON file in a checkpoint folder."""
    path = folder / name
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


LLAMA2C_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")


def rewrite_llama2c_header(path: Path, **fields: int) -> None:
    """Change fields of a legacy (version 0) llama2.c header in place."""
    data = bytearray(path.read_bytes())
    values = list(struct.unpack_from("<7i", data))
    for name, value in fields.items():
        values[LLAMA2C_FIELDS.index(name)] = value
    struct.pack_into("<7i", data, 0, *values)
    path.write_bytes(bytes(data))
