"""`llamalab eval MODEL --data TEXT`: perplexity by sliding windows; nats/token, bits/byte, tokens/s; `--json`."""
from __future__ import annotations

import json
from pathlib import Path

from llamalab.cli.common import add_model_arguments, load_model


def add_parser(subparsers):
    p = subparsers.add_parser(
        "eval", help="perplexity of a model on text (sliding window)",
        description="Score every token of the text once with windows of --context tokens placed --stride tokens "
                    "apart (each token sees up to context - stride tokens before it; the first window scores all "
                    "of its tokens). Prints nats/token, perplexity, bits per byte of UTF-8 text and tokens/s.",
    )
    add_model_arguments(p)
    p.add_argument("--data", type=Path, required=True, metavar="PATH",
                   help="a text file, a .jsonl file (its \"text\" fields), a folder of them, "
                        "or a `llamalab data prepare` folder")
    p.add_argument("--split", choices=("val", "train"), default="val", help="split of a prepared folder (default: val)")
    p.add_argument("--context", type=int, metavar="N", help="tokens per window (default: the model's max_seq_len)")
    p.add_argument("--stride", type=int, metavar="N", help="tokens between window starts (default: context / 2)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="windows per forward pass (default: 1)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="score only the first N tokens of the text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object with the numbers")
    return p


def run(args) -> int:
    from llamalab.train.evaluate import evaluate_text

    loaded = load_model(args)
    result, text = evaluate_text(loaded.model, loaded.tokenizer, args.data, args.context, args.stride, args.batch_size,
                                 args.split, args.max_tokens, progress=not args.no_progress)
    report = {**result.as_dict(), "documents": text.documents, "data": str(args.data)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"perplexity {result.perplexity:.4f}: {result.nats_per_token:.4f} nats/token, "
          f"{result.bits_per_byte:.4f} bits/byte")
    print(f"{result.tokens:,} tokens scored ({result.bytes:,} bytes, {text.documents:,} documents), "
          f"context {result.context}, stride {result.stride}: {result.tokens_per_s:.1f} tokens/s")
    return 0
