"""What every model-taking command shares: the model arguments, loading (model, tokenizer), sampling flags."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from llamalab.config import PRESETS, ModelArgs
from llamalab.errors import ConfigError, TokenizerError

if TYPE_CHECKING:  # the heavy modules (torch ~1 s) are imported where a command runs, not for `--help`
    from llamalab.generate.decode import Step
    from llamalab.generate.sampling import SamplingParams
    from llamalab.model import Transformer
    from llamalab.tokenizer import Tokenizer

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes
QUANTIZATIONS = ("int8", "int4")  # llamalab.quantize.SCHEMES, named here so that the parser needs no torch


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL | --preset NAME --random-init, and how to run it: device, dtype, quantization, compile, seed."""
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="checkpoint folder or file (meta, hf, native folder; .gguf; llama2.c .bin)")
    parser.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                        help=f"with --random-init, a published shape instead of MODEL: {', '.join(PRESETS)}")
    parser.add_argument("--random-init", action="store_true", help="random weights (tests and benchmarks)")
    parser.add_argument("--tokenizer", help="tokenizer file or folder (default: the one beside MODEL)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")
    parser.add_argument("--dtype", choices=DTYPES, help="weights' dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="weight-only quantization of the linear layers")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow to start)")
    parser.add_argument("--seed", type=int, help="seed of the random weights and of sampling")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    """The sampler flags of `generate` and `chat` (defaults: Meta's temperature 0.6, top-p 0.9)."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling: keep this much probability")
    parser.add_argument("--top-k", type=int, help="keep the k most likely tokens")
    parser.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p × the most likely one")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")


def default_device() -> str:
    """cuda when there is a GPU, else cpu: the default of --device."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    from llamalab.generate.sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repetition_penalty=args.repetition_penalty, seed=args.seed)


def load_model(args: argparse.Namespace) -> tuple[Transformer, Tokenizer | None]:
    """The model the arguments name, ready for inference, and its tokenizer (None when there is none)."""
    import torch

    from llamalab.checkpoint import load
    from llamalab.cli.parallel import load_tensor_parallel
    from llamalab.model import Transformer

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or default_device()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    if getattr(args, "tp", 1) > 1:  # under torchrun: the model split over the ranks, see cli/parallel.py
        return load_tensor_parallel(args, dtype).requires_grad_(False), _tokenizer(args)
    if args.preset or args.random_init:
        if args.model or not (args.preset and args.random_init):
            raise ConfigError("use either MODEL (a checkpoint) or --preset NAME --random-init, not both")
        if args.seed is not None:
            torch.manual_seed(args.seed)
        with device:
            model = Transformer(ModelArgs.from_preset(args.preset)).to(dtype).eval()
    elif args.model:
        model = load(args.model, device=device, dtype=dtype)
    else:
        raise ConfigError("give MODEL (a checkpoint folder or file), or --preset NAME --random-init")
    return prepare_for_inference(model, args.quantize, args.compile), _tokenizer(args)


def prepare_for_inference(model: Transformer, quantize: str | None = None, compile: bool = False) -> Transformer:
    """No gradients, the optional weight-only quantization, and on CPU the decode fast path (see generate/fast.py)."""
    from llamalab.generate.fast import column_major_weights, matvec_linears
    from llamalab.quantize import quantize_model

    model.eval().requires_grad_(False)
    if quantize:
        quantize_model(model, quantize)
    if model.tok_embeddings.weight.device.type == "cpu":
        matvec_linears(model) if compile else column_major_weights(model)
    return model


def decode_step(model: Transformer, args: argparse.Namespace, batch_size: int = 1, cache_len: int | None = None) -> Step:
    """The decode step the arguments ask for: eager, or with --compile compiled now on a KV cache of
    (batch_size, cache_len) allocated once, so that the generations that reuse it never wait for compilation."""
    from llamalab.generate.compiled import compile_decode_step
    from llamalab.generate.decode import Generation, eager_step
    from llamalab.generate.sampling import SamplingParams

    if not args.compile:
        return eager_step(model)
    print("compiling the decode step ...", file=sys.stderr, flush=True)
    step = compile_decode_step(model)
    model.setup_cache(batch_size, min(cache_len or model.args.max_seq_len, model.args.max_seq_len))
    list(Generation(model, [[0]] * batch_size, 2, SamplingParams(temperature=0), step=step))
    return step


def _tokenizer(args: argparse.Namespace) -> Tokenizer | None:
    from llamalab.checkpoint import find_tokenizer
    from llamalab.tokenizer import load_tokenizer

    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    path = find_tokenizer(args.model) if args.model else None
    return load_tokenizer(path) if path else None


def require_tokenizer(tokenizer: Tokenizer | None, what: str) -> Tokenizer:
    """The tokenizer, or an error saying how to get one."""
    if tokenizer is None:
        raise TokenizerError(f"{what} needs a tokenizer and none was found beside the model; pass --tokenizer PATH")
    return tokenizer
