"""`llamalab generate MODEL --prompt TEXT`: continue a prompt, streaming the text; `--json` for one result object."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from llamalab.cli.common import (
    add_model_arguments,
    add_sampling_arguments,
    decode_step,
    load_model,
    require_tokenizer,
    sampling_params,
)
from llamalab.cli.parallel import add_tp_argument
from llamalab.errors import ConfigError

if TYPE_CHECKING:
    from llamalab.generate.decode import Completion, Generation


def add_parser(subparsers):
    p = subparsers.add_parser("generate", help="continue a prompt, streaming the generated text")
    add_model_arguments(p)
    add_tp_argument(p)
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text to continue (BOS added when the model's tokenizer adds one)")
    prompt.add_argument("--prompt-ids", metavar="IDS", help="token ids to continue instead, e.g. 1,450,4996")
    add_sampling_arguments(p)
    p.add_argument("--truncate", action="store_true", help="drop the oldest prompt tokens when the prompt is too long")
    p.add_argument("--draft", metavar="MODEL", help="a small model with the same tokenizer: speculative decoding")
    p.add_argument("--lookahead", type=int, default=4, help="tokens the draft proposes per step (with --draft)")
    p.add_argument("--json", action="store_true", help="print one JSON object: text, token ids, tokens/s, timings")
    return p


def run(args) -> int:
    from llamalab.generate.decode import Generation
    from llamalab.generate.speculative import SpeculativeGeneration
    from llamalab.generate.text import text_generation
    from llamalab.inference import load_model as load_draft

    loaded = load_model(args)
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = prompt_ids(args.prompt, args.prompt_ids, tokenizer, model.args.vocab_size)
    recommended = tokenizer.sampling_defaults if tokenizer else None
    sampling = sampling_params(args, loaded.seed, recommended)
    if args.draft:
        draft = load_draft(args.draft, device=model.device, dtype=model.dtype, tokenizer=tokenizer).model
        generation = SpeculativeGeneration(model, draft, [prompt], args.max_new_tokens, args.lookahead,
                                           sampling=sampling, stop_ids=tokenizer.stop_ids if tokenizer else (),
                                           truncate=args.truncate)
    elif tokenizer is not None:  # its stop ids, and no id past its vocabulary
        step = decode_step(loaded, cache_len=len(prompt) + args.max_new_tokens)
        generation = text_generation(model, tokenizer, [prompt], args.max_new_tokens, sampling, step=step,
                                     truncate=args.truncate)
    else:
        step = decode_step(loaded, cache_len=len(prompt) + args.max_new_tokens)
        generation = Generation(model, [prompt], args.max_new_tokens, sampling, step=step, truncate=args.truncate)
    printing = loaded.main_process  # with --tp every rank generates; rank 0 prints
    for delta in deltas(generation, tokenizer, args.stop):
        if printing and not args.json:
            print(delta, end="", flush=True)
    if not printing:
        return 0
    (completion,) = generation.completions
    report = result(completion, generation.timings, tokenizer is not None)
    if args.json:
        print(json.dumps(report))
    else:
        print()
        print(f"[{len(completion.tokens)} tokens, {report['tokens_per_s']:.1f} tokens/s, "
              f"prefill {report['timings']['prefill_s'] * 1000:.0f} ms, {completion.finish_reason}]", file=sys.stderr)
    return 0


def prompt_ids(text: str | None, ids: str | None, tokenizer, vocab_size: int) -> list[int]:
    """The prompt's token ids from --prompt (with BOS when the tokenizer adds one) or --prompt-ids (checked against
    the vocabulary)."""
    if text is not None:
        if not text.strip():
            raise ConfigError("the prompt is empty; give some text with --prompt")
        return require_tokenizer(tokenizer, "--prompt").encode(text)  # BOS as the tokenizer's add_bos_token says
    try:
        parsed = [int(i) for i in ids.replace(" ", "").split(",") if i]
    except ValueError:
        raise ConfigError(f"--prompt-ids must be integers separated by commas, got {ids!r}") from None
    if not parsed:
        raise ConfigError("--prompt-ids is empty; give at least one token id")
    bad = [i for i in parsed if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"token id(s) {bad[:5]} outside the model's vocabulary of {vocab_size}")
    return parsed


def deltas(generation: Generation, tokenizer, stop: list[str]) -> Iterator[str]:
    """Row 0's text deltas; without a tokenizer, its token ids as text."""
    from llamalab.generate.text import stream_text

    if tokenizer is not None:
        return (d[0] for d in stream_text(generation, tokenizer, stop))
    if stop:
        raise ConfigError("--stop needs a tokenizer (the model has none); pass --tokenizer PATH")
    return ("".join(f"{t} " for t in new[0]) for new in generation)


def result(completion: Completion, timings: dict[str, float], has_text: bool) -> dict:
    """The JSON report of one completion: text, ids, why it ended, tokens/s and timings."""
    decoded = max(len(completion.tokens) - 1, 0)  # the first new token comes out of the prefill
    prefill_s, decode_s = timings["prefill_s"], timings["decode_s"]
    return {
        "text": completion.text if has_text else None,
        "prompt_tokens": completion.prompt_tokens,
        "tokens": completion.tokens,
        "finish_reason": completion.finish_reason,
        "tokens_per_s": decoded / decode_s if decode_s > 0 else 0.0,
        "timings": {"prefill_s": prefill_s, "decode_s": decode_s,
                    "prefill_tokens_per_s": len(completion.prompt_tokens) / prefill_s if prefill_s > 0 else 0.0},
    }
