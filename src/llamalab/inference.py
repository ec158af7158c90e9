"""The typed entry point for inference: a checkpoint path or a preset in, a ready model and its tokenizer out.

`load_model` does what `llamalab generate --tp N --quantize int8 --compile` does before generating:
format detection, tensor-parallel loading (each rank reading its part), one sampling seed across the
ranks, weight-only quantization, the CPU decode fast path, and the tokenizer beside the checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from llamalab.checkpoint import find_tokenizer, load, resolve_model
from llamalab.checkpoint.mapped import release_pages, trim_heap
from llamalab.checkpoint.parts import read_args, read_parts
from llamalab.checkpoint.peft import apply_adapters
from llamalab.config import PRESETS, ModelArgs
from llamalab.errors import ConfigError
from llamalab.generate.compile_cache import save_compile_cache, use_compile_cache
from llamalab.generate.compiled import compile_decode_step
from llamalab.generate.decode import Generation, Step, eager_step
from llamalab.generate.fast import column_major_weights, matvec_linears
from llamalab.generate.sampling import SamplingParams
from llamalab.model import Transformer
from llamalab.parallel.mesh import init_distributed, is_main_process, make_mesh, shared_seed
from llamalab.parallel.sizes import check_tp_size
from llamalab.quantize import quantize_model
from llamalab.quantize.native import kernel_quantized_linears, kernels
from llamalab.quantize.native_decode import huge_pages, native_step, supported
from llamalab.tokenizer import Tokenizer, load_tokenizer

Source = str | os.PathLike | ModelArgs  # a checkpoint folder or file, a preset name, or a shape (random weights)


@dataclass
class LoadedModel:
    """A model ready for inference, its tokenizer (None when there is none) and the seed to sample with."""

    model: Transformer
    tokenizer: Tokenizer | None
    seed: int | None  # under tp > 1 the same on every rank (rank 0 chose it when none was given)
    compiled: bool = False  # decode_step compiles the step
    tp: int = 1  # ranks the model is split over (torchrun processes)
    compile_backend: str = "inductor"  # torch.compile's backend and mode for decode_step
    compile_mode: str | None = None
    compile_cache: Path | None = None  # torch.compile's persistent caches (generate/compile_cache.py)

    @property
    def main_process(self) -> bool:
        """True on rank 0 (or unsplit): the process that prints, writes and serves."""
        return is_main_process()

    def decode_step(self, batch_size: int = 1, cache_len: int | None = None) -> Step:
        """The eager step, or (compiled) the step compiled now on a KV cache of (batch_size, cache_len) allocated
        once, so that the generations reusing that cache never wait for compilation."""
        return decode_step(self.model, self.compiled, batch_size, cache_len, self.compile_backend, self.compile_mode,
                           self.compile_cache)


def load_model(
    source: Source,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tp: int = 1,
    quantize: str | None = None,
    compile: bool = False,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    seed: int | None = None,
    threads: int | None = None,
    random_init: bool = False,
    lora: str | os.PathLike | None = None,
    attention: str = "sdpa",
    group_size: int | None = None,
    compile_backend: str = "inductor",
    compile_mode: str | None = None,
    keep_quantized: bool = True,
    compile_cache: str | os.PathLike | None = None,
) -> LoadedModel:
    """The model of a checkpoint (or, with random_init, of a preset name or ModelArgs), ready for inference.

    device None: cuda when there is one, else cpu. dtype None: bfloat16 on GPU, float32 on CPU.
    tp > 1: split over the ranks of `torchrun --nproc-per-node tp` (joins its process group).
    quantize: "int8" or "int4" weight-only. compile: `decode_step()` returns a torch.compile'd step.
    tokenizer None: the one beside the checkpoint. seed: of the random weights and of sampling.
    threads: CPU threads for torch (a process-wide setting).
    lora: a LoRA adapter folder (PEFT's format) folded into the weights before quantization.
    attention: "sdpa" (PyTorch's fused kernels) or "reference" (matmul, softmax, matmul).
    group_size: input weights per scale of int4 (default 128). compile_backend / compile_mode: torch.compile's.
    keep_quantized: a GGUF's Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K weights stay the file's blocks
    (False: dequantized to dtype).
    compile_cache: a folder for torch.compile's caches, reused by later processes (None: torch's default, in /tmp).
    """
    check_threads_and_seed(threads, seed)
    if group_size is not None and (quantize != "int4" or not isinstance(group_size, int) or group_size < 1):
        raise ConfigError(f"group_size applies to quantize='int4' and is a positive whole number; got {group_size!r} "
                          f"with quantize={quantize!r}")
    if compile:
        check_compile_options(compile_backend, compile_mode)
    compile_cache = use_compile_cache(compile_cache) if compile and compile_cache is not None else None
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if tp > 1:
        if lora:
            raise ConfigError("a LoRA adapter does not combine with tensor parallelism (tp > 1) yet; merge it first "
                              "with `llamalab convert MODEL OUT --lora ADAPTER` and load OUT")
        if quantize:
            raise ConfigError("quantization does not combine with tensor parallelism (tp > 1); drop one of them")
        model, seed = _load_tensor_parallel(source, random_init, tp, device, dtype, seed)
        model.requires_grad_(False)
        model.set_attention(attention)
    else:
        model = _load_one(source, random_init, device, dtype, seed, keep_quantized)
        model.set_attention(attention)
        if lora:
            apply_adapters(model, lora)
        prepare_for_inference(model, quantize, compile, group_size)
    loaded = LoadedModel(model, _tokenizer(tokenizer, None if random_init else source), seed, compile, tp,
                         compile_backend, compile_mode, compile_cache)
    trim_heap()  # what reading the checkpoint and the tokenizer freed leaves the process's RSS
    return loaded


def prepare_for_inference(model: Transformer, quantize: str | None = None, compile: bool = False,
                          group_size: int | None = None) -> Transformer:
    """No gradients, the optional weight-only quantization (int4: `group_size` weights per scale, default 128), and on
    CPU the decode fast paths: the C decode step (quantize/native_decode.py) where it covers the model, else
    generate/fast.py's layouts."""
    model.eval().requires_grad_(False)
    if quantize:
        quantize_model(model, quantize, **({"group_size": group_size} if group_size else {}))
    if model.device.type != "cpu":
        return model
    if compile:
        return matvec_linears(model)
    kernel_quantized_linears(model)  # GGUF's exact int4 / Q8_0 layers: C kernels instead of dequantizing
    if not (supported(model) and kernels() is not None):  # the C step reads row-major weights
        column_major_weights(model, release=release_pages)  # the mapped file's pages given back
    else:
        huge_pages(model)  # fewer TLB misses while the C step streams the weights
    return model


def decode_step(model: Transformer, compile: bool = False, batch_size: int = 1, cache_len: int | None = None,
                backend: str = "inductor", mode: str | None = None, compile_cache: Path | None = None) -> Step:
    """The C decode step on CPU where it covers the model, else the eager one; or the one compiled (torch.compile's
    `backend`, `mode`) and warmed up on a (batch_size, cache_len) KV cache; see LoadedModel. With `compile_cache`
    (a folder `use_compile_cache` set up) the compilation's cache entries are saved there as a portable file too."""
    if not compile:
        return native_step(model) or eager_step(model)
    step = compile_decode_step(model, mode=mode, backend=backend)
    model.setup_cache(batch_size, min(cache_len or model.args.max_seq_len, model.args.max_seq_len))
    list(Generation(model, [[0]] * batch_size, 2, SamplingParams(temperature=0), step=step))
    if compile_cache is not None:
        key = (model.args, model.dtype, model.device.type, batch_size, model.kv_cache.max_seq_len, backend, mode,
               type(model.layers[0].attention.wq).__name__, torch.__version__)
        save_compile_cache(compile_cache, repr(key))
    return step


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device named (None: cuda when there is one, else cpu); ConfigError for a name torch does not know or a
    device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
        torch.empty(0, device=resolved)  # raises for a device type this build or machine lacks (cuda without a GPU)
    except (RuntimeError, AssertionError, TypeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"device {device!r} is not usable here ({reason}); use cpu, or cuda / cuda:N on a GPU "
                          "machine") from None
    return resolved


def check_compile_options(backend: str, mode: str | None) -> None:
    """ConfigError for a torch.compile backend or mode this PyTorch does not know (before any weight is read)."""
    try:
        torch.compile(_nothing, backend=backend, mode=mode)
    except RuntimeError as e:  # dynamo's InvalidBackend is one
        raise ConfigError(f"torch.compile: {str(e).splitlines()[0]}") from None


def _nothing() -> None:
    """What check_compile_options compiles (torch.compile checks its options at once, compiles at the first call)."""


def check_threads_and_seed(threads: int | None, seed: int | None) -> None:
    """ConfigError for a thread count below 1 or a seed torch cannot take (outside [-2**63, 2**64 - 1])."""
    if threads is not None and (not isinstance(threads, int) or not 1 <= threads <= 4096):
        raise ConfigError(f"threads must be a whole number from 1 to 4096, got {threads!r}")
    if seed is not None and (not isinstance(seed, int) or not -(2**63) <= seed <= 2**64 - 1):
        raise ConfigError(f"seed must be a whole number in [-2**63, 2**64 - 1], got {seed!r}")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A torch dtype from a name ("bfloat16"), a dtype, or None (bfloat16 on GPU, float32 on CPU)."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return resolved


def model_args_of(source: Source) -> ModelArgs:
    """The shape a random_init model gets: a ModelArgs as given, or a preset's by name."""
    if isinstance(source, ModelArgs):
        return source
    if str(source) in PRESETS:
        return ModelArgs.from_preset(str(source))
    raise ConfigError(f"random_init takes a preset name or a ModelArgs, not {str(source)!r}; "
                      f"presets: {', '.join(PRESETS)}")


def _load_one(source: Source, random_init: bool, device: torch.device, dtype: torch.dtype,
              seed: int | None, keep_quantized: bool = True) -> Transformer:
    if random_init:
        args = model_args_of(source)
        if seed is not None:
            torch.manual_seed(seed)
        with device:
            return Transformer(args).to(dtype).eval()
    return load(_checkpoint_path(source), device=device, dtype=dtype, keep_quantized=keep_quantized)


def _checkpoint_path(source: Source) -> Path:
    """The path of a checkpoint, with a hint when a preset name (which has no weights) was given instead."""
    if isinstance(source, ModelArgs):
        raise ConfigError("a ModelArgs has no weights: pass random_init=True, or give a checkpoint path")
    path = Path(source)
    if str(source) in PRESETS and not path.exists():
        raise ConfigError(f"{source} is a preset (a shape, no weights): pass random_init=True "
                          "(--random-init), or give a checkpoint path")
    return path


def _load_tensor_parallel(source: Source, random_init: bool, tp: int, device: torch.device, dtype: torch.dtype,
                          seed: int | None) -> tuple[Transformer, int]:
    """The model split over the tp ranks of the torchrun group (each rank reading only its part) and the seed every
    rank samples with."""
    from llamalab.parallel.loading import load_tp_model  # DTensor takes 2 s to import: only when tp asks
    from llamalab.parallel.tensor_parallel import apply_tp

    path = None if random_init else _checkpoint_path(source)
    model_args = model_args_of(source) if random_init else read_args(path)
    check_tp_size(model_args, tp)  # before any weight is read or made
    device = init_distributed(device.type)
    tp_mesh = make_mesh(tp=tp, device_type=device.type)["tp"]
    seed = shared_seed(seed)
    if path is not None:
        return load_tp_model(model_args, tp_mesh, partial(read_parts, path), device, dtype), seed
    torch.manual_seed(seed)  # the weights of the same seed without tp
    with device:
        model = Transformer(model_args).to(dtype).eval()
    return apply_tp(model, tp_mesh), seed


def _tokenizer(given: str | os.PathLike | Tokenizer | None, checkpoint: Source | None) -> Tokenizer | None:
    if isinstance(given, Tokenizer):
        return given
    if given is not None:
        return load_tokenizer(resolve_model(given))  # a path, or a hub id in the local Hugging Face cache
    if checkpoint is None or isinstance(checkpoint, ModelArgs):
        return None
    path = find_tokenizer(checkpoint)
    return load_tokenizer(path) if path else None
