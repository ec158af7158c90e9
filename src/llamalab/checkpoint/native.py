"""llamalab's own format: a folder with model.safetensors (Meta's tensor names) and llamalab.json (the ModelArgs)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from llamalab.checkpoint.vocab import copy_tokenizer_files
from llamalab.checkpoint.weights import StateDict, load_tensors, progress_bar
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError, ConfigError
from llamalab.files import read_json, write_json

CONFIG_FILE = "llamalab.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def read(folder: Path) -> tuple[ModelArgs, StateDict]:
    config = read_json(folder / CONFIG_FILE, CheckpointError)
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder / CONFIG_FILE}: format_version {config.get('format_version')!r}; "
                              f"this llamalab reads {FORMAT_VERSION}")
    try:
        args = ModelArgs.from_dict(config["model_args"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: no valid model_args ({e})") from None
    return args, load_tensors(folder / WEIGHTS_FILE)


def write(folder: Path, state: StateDict, args: ModelArgs, dtype: torch.dtype | None = None,
          tokenizer: Path | None = None, show_progress: bool = False) -> None:
    with progress_bar(len(state), show_progress, f"writing {WEIGHTS_FILE}") as bar:
        tensors = {}
        for name, tensor in state.items():
            tensors[name] = tensor.to(dtype or tensor.dtype).contiguous()
            bar.update()
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    write_json(folder / CONFIG_FILE, {"format_version": FORMAT_VERSION, "model_args": args.to_dict()})
    if tokenizer is not None:
        copy_tokenizer_files(tokenizer, folder)
