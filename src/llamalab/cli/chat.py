"""`llamalab chat MODEL`: a conversation in the terminal (or through a pipe), with history, /reset and /exit."""
from __future__ import annotations

import sys
import time

from llamalab.cli.common import (
    add_model_arguments,
    add_sampling_arguments,
    decode_step,
    load_model,
    require_tokenizer,
    sampling_params,
)
from llamalab.errors import ContextLengthError

COMPILED_CACHE_LEN = 4096  # KV cache positions a --compile'd chat allocates once (at most the context)
HELP = "/reset clears the history, /exit (or end of input) quits"


def add_parser(subparsers):
    p = subparsers.add_parser("chat", help="chat with a model: streaming answers, history, /reset, /exit")
    add_model_arguments(p)
    add_sampling_arguments(p, max_new_tokens=512)
    p.add_argument("--system", help="system prompt that starts (and survives /reset of) the conversation")
    return p


def run(args) -> int:
    loaded = load_model(args)
    model, tokenizer = loaded.model, require_tokenizer(loaded.tokenizer, "chat")
    step = decode_step(loaded, cache_len=COMPILED_CACHE_LEN)
    sampling = sampling_params(args, loaded.seed, tokenizer.sampling_defaults)
    interactive = sys.stdin.isatty()
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    if interactive:
        print(f"chatting with {args.model or args.preset}; {HELP}", file=sys.stderr)
    while (line := read_line(interactive)) is not None:
        line = line.strip()
        if line == "/exit":
            break
        if line == "/reset":
            history = list(system)
            print("[history cleared]", file=sys.stderr)
            continue
        if not line:
            continue
        if line.startswith("/"):
            print(f"[unknown command {line.split()[0]}; {HELP}]", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        try:
            answer = reply(model, tokenizer, history, args.max_new_tokens, sampling, step, args.stop)
        except ContextLengthError as e:
            history.pop()
            print(f"llamalab chat: error: {e}", file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": answer})
    return 0


def read_line(interactive: bool) -> str | None:
    """The next line the user typed (None at end of input)."""
    if not interactive:
        line = sys.stdin.readline()
        return line if line else None
    try:
        return input("> ")
    except EOFError:
        print(file=sys.stderr)
        return None


def reply(model, tokenizer, history: list[dict[str, str]], max_new_tokens: int, sampling, step, stop) -> str:
    """Stream the assistant's answer to the dialog, then a tokens/s line; return the answer's text."""
    from llamalab.generate.text import chat_generation, stream_text

    generation = chat_generation(model, tokenizer, history, max_new_tokens, sampling, step=step)
    start, answer = time.perf_counter(), ""
    try:
        for deltas in stream_text(generation, tokenizer, stop):
            print(deltas[0], end="", flush=True)
            answer += deltas[0]
    except KeyboardInterrupt:  # Ctrl-C ends the answer, not the conversation
        print(" [interrupted]", end="")
    print(flush=True)
    (completion,) = generation.completions
    seconds = time.perf_counter() - start
    print(f"[{len(completion.tokens)} tokens, {len(completion.tokens) / seconds:.1f} tokens/s]", file=sys.stderr)
    return answer
