"""Checkpoints in every format people have: detect, load into a Transformer, save, convert.

Formats: "meta" (params.json + consolidated.NN.pth), "hf" (config.json + safetensors), "llama2c" (.bin),
"gguf" (llama.cpp), "native" (llamalab.json + model.safetensors). Loading builds the model on the meta
device and assigns the memory-mapped tensors (no second copy in RAM); nothing in a file is ever executed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llamalab.checkpoint import gguf_format, hf, llama2c, meta, native
from llamalab.checkpoint.hub import resolve_model
from llamalab.checkpoint.vocab import find_tokenizer
from llamalab.checkpoint.weights import StateDict, build_model, check_state_dict, model_state_dict, parse_dtype
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError
from llamalab.files import atomic_output
from llamalab.model import Transformer

FORMATS = {"meta": meta, "hf": hf, "llama2c": llama2c, "gguf": gguf_format, "native": native}
FOLDER_FORMATS = {"meta", "hf", "native"}  # the others are one file
SHARDED_FORMATS = {"meta", "hf"}
QUANTIZED_FORMATS = {"gguf", "llama2c"}  # accept dtype "q8_0"; gguf also q4_0, q4_1, q5_0, q5_1

__all__ = ["FORMATS", "convert", "detect_format", "find_tokenizer", "load", "read", "resolve_model", "save"]


def detect_format(path: str | Path) -> str:
    """The format of a checkpoint folder or file, from the files it holds or its magic number."""
    path = resolve_model(path)
    if path.is_dir():
        for marker, fmt in ((native.CONFIG_FILE, "native"), ("params.json", "meta"), ("config.json", "hf")):
            if (path / marker).is_file():
                return fmt
        if any(path.glob("consolidated.*.pth")):
            raise CheckpointError(f"{path}: params.json is missing beside consolidated.*.pth; copy it from the release")
        raise CheckpointError(f"{path}: no llamalab.json, params.json or config.json; not a checkpoint folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.suffix in (".safetensors", ".pth", ".json") or path.name.startswith("pytorch_model"):
        return detect_format(path.parent)  # a file of a folder format
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return "gguf"
    if path.suffix == ".gguf":
        raise CheckpointError(f"{path}: starts with {magic!r}, not the GGUF magic; the file is corrupt")
    if path.suffix == ".bin":
        return "llama2c"
    raise CheckpointError(f"{path}: unknown checkpoint file; give a folder, a .gguf or a llama2.c .bin")


def read(path: str | Path, max_seq_len: int | None = None) -> tuple[ModelArgs, StateDict]:
    """ModelArgs and Meta-named weights of any checkpoint, checked against each other (tensors memory-mapped)."""
    args, state = _read_unchecked(Path(path), max_seq_len)
    check_state_dict(state, args, path)
    return args, state


def load(path: str | Path, device="cpu", dtype: torch.dtype | None = None,
         max_seq_len: int | None = None, keep_quantized: bool = True) -> Transformer:
    """A Transformer with the weights of any checkpoint; dtype None keeps the file's (dequantized: float32).

    keep_quantized (GGUF): Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K matrices stay the file's blocks,
    read where they lie in the mapping (BlockLinear / BlockEmbedding, shared by a tied head), computing in `dtype`
    (float32: exact weights; Q4_0 / Q4_1 at bfloat16/float16: PyTorch's int4 kernels). False: every weight
    dequantized to `dtype`.
    """
    options = {"dtype": dtype, "keep_quantized": keep_quantized}
    args, state = _read_unchecked(Path(path), max_seq_len, options)
    return build_model(args, state, device, dtype, source=path)  # checks them against the model it builds


def _read_unchecked(path: Path, max_seq_len: int | None, gguf_options: dict | None = None
                    ) -> tuple[ModelArgs, StateDict]:
    path = resolve_model(path)  # a hub id: its snapshot in the local Hugging Face cache
    fmt = detect_format(path)
    options = (gguf_options or {}) if fmt == "gguf" else {}
    args, state = FORMATS[fmt].read(path if fmt not in FOLDER_FORMATS or path.is_dir() else path.parent, **options)
    return (args if max_seq_len is None else args.replace(max_seq_len=max_seq_len)), state


def save(model: Transformer, path: str | Path, format: str = "native", dtype: torch.dtype | str | None = None,
         shards: int = 1, tokenizer: str | Path | None = None, show_progress: bool = False, **options) -> Path:
    """Write the model in `format` at `path` (a folder, or a file for llama2c / gguf), atomically."""
    state = {k: v.cpu() for k, v in model_state_dict(model).items()}  # the writers work on CPU tensors
    return write(state, model.args, path, format, dtype, shards, tokenizer, show_progress, **options)


def convert(src: str | Path, dst: str | Path, format: str, dtype: torch.dtype | str | None = None, shards: int = 1,
            tokenizer: str | Path | None = None, show_progress: bool = False, lora: str | Path | None = None,
            **options) -> Path:
    """Rewrite a checkpoint in another format without building the model; the tokenizer beside it goes along.
    lora: a LoRA adapter folder (PEFT's format) merged into the weights on the way."""
    args, state = read(src)
    if lora is not None:
        from llamalab.checkpoint.peft import merge_adapter_state  # peft imports this package's modules

        state = merge_adapter_state(state, args, lora)
    tokenizer = tokenizer if tokenizer is not None else find_tokenizer(src)
    return write(state, args, dst, format, dtype, shards, tokenizer, show_progress, **options)


def write(state: StateDict, args: ModelArgs, path: str | Path, format: str, dtype: torch.dtype | str | None = None,
          shards: int = 1, tokenizer: str | Path | None = None, show_progress: bool = False, **options) -> Path:
    """Write Meta-named weights and their ModelArgs in `format`; see `save`."""
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    dtype = parse_dtype(dtype)
    if isinstance(dtype, str) and dtype != "q8_0" and format != "gguf":
        raise CheckpointError(f"dtype {dtype} is for gguf; {format} stores float weights")
    if dtype == "q8_0" and format not in QUANTIZED_FORMATS:
        raise CheckpointError(f"dtype q8_0 is for {' and '.join(sorted(QUANTIZED_FORMATS))}; "
                              f"{format} stores float weights")
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise CheckpointError(f"--shards {shards}: give a whole number of files, at least 1")
    if shards != 1:
        if format not in SHARDED_FORMATS:
            raise CheckpointError(f"--shards applies to {' and '.join(sorted(SHARDED_FORMATS))}, not {format}")
        options["shards"] = shards
    if tokenizer is not None:
        given, tokenizer = tokenizer, find_tokenizer(tokenizer) if Path(tokenizer).is_dir() else Path(tokenizer)
        if tokenizer is None or not tokenizer.is_file():
            raise CheckpointError(f"no tokenizer file at {given}")
        if format != "llama2c":
            options["tokenizer"] = tokenizer
    check_state_dict(state, args, "the weights to save")
    path = Path(path)
    with atomic_output(path, folder=format in FOLDER_FORMATS) as tmp:
        FORMATS[format].write(tmp, state, args, dtype=dtype, show_progress=show_progress, **options)
    if format == "llama2c" and tokenizer is not None:  # llama2.c reads its vocabulary from tokenizer.bin
        with atomic_output(path.with_name("tokenizer.bin")) as tmp:
            llama2c.write_tokenizer_bin(tokenizer, tmp)
    return path
