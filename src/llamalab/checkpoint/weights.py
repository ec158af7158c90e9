"""What every format shares: the canonical (Meta-named) state dict of a model, its expected shapes, dtypes, progress."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from llamalab.checkpoint.mapped import release_pages
from llamalab.checkpoint.plausible import check_layers_present
from llamalab.checkpoint.quantized import QuantizedWeight, install_quantized
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError
from llamalab.model import Transformer

StateDict = dict[str, torch.Tensor]

# --dtype names; "q8_0" is the 8-bit block quantisation of GGUF and llama2.c version 2, q4_*/q5_* GGUF's
# (via gguf.quants).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "q8_0": "q8_0",
          "q4_0": "q4_0", "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1"}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """A torch dtype, a GGUF block type name ("q8_0", "q4_1", ...) or None (keep the weights' dtype)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def expected_shapes(args: ModelArgs, model: Transformer | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight a checkpoint of `args` holds (no output.weight when tied)."""
    if model is None:
        with torch.device("meta"):
            model = Transformer(args)
    return {k: tuple(v.shape) for k, v in model_state_dict(model).items()}


def model_state_dict(model: Transformer) -> StateDict:
    """The model's weights under Meta's names; a tied output head is left out (it is tok_embeddings)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        del state["output.weight"]
    return state


def check_state_dict(state: StateDict, args: ModelArgs, source: str | Path, model: Transformer | None = None) -> None:
    """Raise CheckpointError naming `source` when the tensor names or shapes disagree with the config (or `model`)."""
    check_layers_present(args, state, source)  # before a model of the header's size is built
    expected = expected_shapes(args, model)
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise CheckpointError(f"{source}: unknown tensor name(s) {_few(unknown)} for a LLaMA model of this config")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {_few(missing)}; the checkpoint is incomplete")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(state[name].shape)} but the config "
                f"(dim={args.dim}, n_heads={args.n_heads}, n_kv_heads={args.kv_heads}, "
                f"hidden={args.ffn_hidden_dim}, vocab_size={args.vocab_size}) needs {shape}"
            )


def build_model(args: ModelArgs, state: StateDict, device="cpu", dtype: torch.dtype | None = None,
                source: str | Path = "the weights") -> Transformer:
    """A Transformer built on the meta device whose parameters ARE the given tensors (moved/cast only if asked).

    QuantizedWeight values (GGUF kept quantized) become layers holding the file's blocks, computing in `dtype`.
    """
    check_layers_present(args, state, source)  # before a model of the header's size is built
    model = meta_model(args)
    check_state_dict(state, args, source, model)
    dtype = dtype or state["tok_embeddings.weight"].dtype
    quantized = {k: v for k, v in state.items() if isinstance(v, QuantizedWeight)}
    state = {k: _moved(v, device, dtype) for k, v in state.items() if k not in quantized}  # no copy when there
    state |= install_quantized(model, quantized, device, dtype)
    tied = args.tie_embeddings and "output" not in _swapped(model)
    if tied:
        state["output.weight"] = state["tok_embeddings.weight"]
    result = model.load_state_dict(state, assign=True, strict=not quantized)
    swapped = _swapped(model)
    if result.unexpected_keys or any(k.rpartition(".")[0] not in swapped for k in result.missing_keys):
        raise CheckpointError(f"{source}: the weights do not fill the model ({_few(result.missing_keys)} missing)")
    if tied:
        model.output.weight = model.tok_embeddings.weight  # assign=True gave each module its own Parameter
    model.init_rope(torch.device(device))
    return model.eval()


def _moved(tensor: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    """The tensor on device in dtype; when that made a copy, the file pages it was read from are given back (one
    tensor at a time: a checkpoint cast at load never lies in memory twice over)."""
    moved = tensor.to(device=device, dtype=dtype)
    if moved.data_ptr() != tensor.data_ptr():
        release_pages(tensor)
    return moved


class _NoInit(TorchFunctionMode):
    """torch.nn.init's functions do nothing (on the meta device they would run PyTorch's Python reference kernels,
    whose first use imports dynamo: about a second and 50 MB of every process that loads a checkpoint)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INIT_FUNCTIONS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


_INIT_FUNCTIONS = {getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")}


def meta_model(args: ModelArgs) -> Transformer:
    """A Transformer of `args` on the meta device (shapes only, no initialization run), to receive real weights."""
    with torch.device("meta"), _NoInit():
        return Transformer(args)


def _swapped(model: Transformer) -> set[str]:
    """Names of the modules install_quantized put in (their buffers are not in the state dict)."""
    return {name for name, module in model.named_modules(remove_duplicate=False)
            if type(module).__module__.startswith("llamalab.quantize")}


def load_tensors(path: Path) -> StateDict:
    """Memory-mapped tensors of a .safetensors file or a torch.save'd dict (.pth / .bin), never running code."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:
                return {name: f.get_tensor(name) for name in f.keys()}
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable weights file, truncated or corrupt ({_first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    return state


def progress_bar(total: int, enabled: bool, desc: str) -> tqdm:
    """A tqdm bar over `total` tensors on stderr (silent when not enabled); use as a context manager."""
    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, leave=False)


def _first_line(e: Exception) -> str:
    """The first sentence of a library's error message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]


def _few(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
