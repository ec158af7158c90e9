"""What every model-taking command shares: the model and sampling flags, mapped to llamalab.load_model."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from llamalab.cli import arguments
from llamalab.config import PRESETS
from llamalab.errors import ConfigError, TokenizerError

if TYPE_CHECKING:  # the heavy modules (torch ~1 s) are imported where a command runs, not for `--help`
    from llamalab.generate.decode import Step
    from llamalab.generate.sampling import SamplingParams
    from llamalab.inference import LoadedModel
    from llamalab.tokenizer import Tokenizer

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes
QUANTIZATIONS = ("int8", "int4")  # llamalab.quantize.SCHEMES, named here so that the parser needs no torch
SAMPLING_DEFAULTS = {"temperature": 0.6, "top_p": 0.9, "top_k": None, "min_p": 0.0}  # Meta's, without a model's own


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
    parser.add_argument("--lora", metavar="ADAPTER",
                        help="LoRA adapter folder (PEFT format) applied to MODEL's weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow to start)")
    parser.add_argument("--compile-cache", metavar="DIR",
                        help="folder of --compile's caches, reused by later runs (default: $LLAMALAB_COMPILE_CACHE "
                             "or ~/.cache/llamalab/compile)")
    parser.add_argument("--seed", type=arguments.seed, help="seed of the random weights and of sampling")
    parser.add_argument("--threads", type=arguments.thread_count,
                        help="CPU threads for torch (default: torch's choice)")


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    """The sampler flags of `generate` and `chat` (defaults: the model's recommended ones from its
    generation_config.json / GGUF, else Meta's temperature 0.6, top-p 0.9)."""
    parser.add_argument("--max-new-tokens", type=arguments.positive_int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: the model's, else 0.6)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: keep this much probability (default: 0.9)")
    parser.add_argument("--top-k", type=arguments.non_negative_int, help="keep the k most likely tokens")
    parser.add_argument("--min-p", type=float, help="drop tokens below min-p × the most likely one (default: 0)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens")
    parser.add_argument("--presence-penalty", type=float, default=0.0,
                        help="OpenAI's: subtract this from every token already generated ([-2, 2])")
    parser.add_argument("--frequency-penalty", type=float, default=0.0,
                        help="OpenAI's: subtract this times each token's count in the generated text ([-2, 2])")
    parser.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS",
                        help="add BIAS ([-100, 100]) to token ID's logit (repeatable; -100 bans, 100 forces)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")


def sampling_params(args: argparse.Namespace, seed: int | None, recommended: dict | None = None) -> SamplingParams:
    """The sampler flags; those not given come from `recommended` (the tokenizer's sampling_defaults), else
    SAMPLING_DEFAULTS. `seed` is the loaded model's (under --tp the one every rank shares)."""
    from llamalab.generate.sampling import SamplingParams

    given = {name: getattr(args, name) for name in SAMPLING_DEFAULTS if getattr(args, name) is not None}
    chosen = {**SAMPLING_DEFAULTS, **(recommended or {}), **given}
    return SamplingParams(temperature=chosen["temperature"], top_k=chosen["top_k"], top_p=chosen["top_p"],
                          min_p=chosen["min_p"],
                          repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                          frequency_penalty=args.frequency_penalty, logit_bias=parse_logit_bias(args.logit_bias),
                          seed=seed)


def parse_logit_bias(entries: list[str]) -> dict[int, float]:
    """--logit-bias ID=BIAS entries as {id: bias}."""
    biases = {}
    for entry in entries:
        token, sep, bias = entry.partition("=")
        try:
            biases[int(token)] = float(bias)
        except ValueError:
            raise ConfigError(f"--logit-bias takes ID=BIAS (e.g. 42=-100), got {entry!r}") from None
        if not sep:
            raise ConfigError(f"--logit-bias takes ID=BIAS (e.g. 42=-100), got {entry!r}")
    return biases


def load_model(args: argparse.Namespace) -> LoadedModel:
    """llamalab.load_model with the arguments of add_model_arguments (and --tp where the command has it)."""
    from llamalab.generate.compile_cache import default_compile_cache
    from llamalab.inference import load_model

    if args.preset or args.random_init:
        if args.model or not (args.preset and args.random_init):
            raise ConfigError("use either MODEL (a checkpoint) or --preset NAME --random-init, not both")
    elif not args.model:
        raise ConfigError("give MODEL (a checkpoint folder or file), or --preset NAME --random-init")
    compile_cache = (args.compile_cache or default_compile_cache()) if args.compile else None
    return load_model(args.model or args.preset, device=args.device, dtype=args.dtype, tp=getattr(args, "tp", 1),
                      quantize=args.quantize, compile=args.compile, tokenizer=args.tokenizer, seed=args.seed,
                      threads=args.threads, random_init=args.random_init, lora=args.lora, compile_cache=compile_cache)


def decode_step(loaded: LoadedModel, batch_size: int = 1, cache_len: int | None = None) -> Step:
    """The loaded model's decode step, saying so when --compile makes the user wait for compilation."""
    if loaded.compiled:
        print("compiling the decode step ...", file=sys.stderr, flush=True)
    return loaded.decode_step(batch_size, cache_len)


def require_tokenizer(tokenizer: Tokenizer | None, what: str) -> Tokenizer:
    """The tokenizer, or an error saying how to get one."""
    if tokenizer is None:
        raise TokenizerError(f"{what} needs a tokenizer and none was found beside the model; pass --tokenizer PATH")
    return tokenizer
