"""`llamalab inspect MODEL --prompt TEXT --out DIR`: pictures of the model at work (logit lens, attention, RoPE,
activations, KV-cache cost) in DIR/index.html, checked against the model's own computation; `--json`."""
from __future__ import annotations

import json
from pathlib import Path

from llamalab.cli.common import add_model_arguments, load_model
from llamalab.cli.generate import prompt_ids
from llamalab.errors import ConfigError

MAX_PROMPT = 256  # beyond this the attention maps are too fine to read


def add_parser(subparsers):
    p = subparsers.add_parser(
        "inspect", help="see inside a model: logit lens, attention maps, RoPE, activations, cost (PNG + HTML)",
        description="Run the prompt through the model with hooks recording every layer, and write pictures of "
                    "what they saw, with index.html to view them, into --out.",
    )
    add_model_arguments(p)
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text to look at the model reading")
    prompt.add_argument("--prompt-ids", metavar="IDS", help="token ids instead, e.g. 1,450,4996")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the PNGs and index.html")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="tokens kept per logit-lens cell (default: 5)")
    p.add_argument("--decode-tokens", type=int, default=32, metavar="N",
                   help="greedy decode steps for the KV-cache and timing plot (default: 32; 0: none)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    return p


def run(args) -> int:
    from llamalab.analysis.inspect import inspect_model
    from llamalab.analysis.inspect_report import to_json, write_report

    if args.top_k < 1 or args.decode_tokens < 0:
        raise ConfigError("--top-k must be at least 1 and --decode-tokens at least 0")
    loaded = load_model(args)
    model, tokenizer = loaded.model, loaded.tokenizer
    tokens = prompt_ids(args.prompt, args.prompt_ids, tokenizer, model.args.vocab_size)
    if len(tokens) > min(MAX_PROMPT, model.args.max_seq_len):
        raise ConfigError(f"the prompt has {len(tokens)} tokens; inspect draws prompts of up to "
                          f"{min(MAX_PROMPT, model.args.max_seq_len)} tokens")
    result = inspect_model(model, tokens, args.top_k, args.decode_tokens)
    label = (lambda t: tokenizer.decode([t])) if tokenizer is not None else str
    title = Path(args.model).name if args.model else f"{args.preset} (random weights)"
    page = write_report(result, args.out, label, title)
    if args.json:
        print(json.dumps({**to_json(result, label), "page": str(page)}))
        return 0
    final = [label(int(t)) for t in result.chosen]
    print(f"{len(tokens)} tokens, {model.args.n_layers} layers; the model's next token after the prompt: {final[-1]!r}")
    for name, value in result.checks.items():
        print(f"  check {name.replace('_', ' ')}: {value:.3g}")
    print(f"open {page}")
    return 0
