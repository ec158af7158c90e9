"""`llamalab demo`: the whole pipeline in a few minutes on a laptop CPU, with no download.

Writes the embedded corpus of simple stories, trains a small SentencePiece vocabulary on it,
tokenizes it, trains a small Llama from scratch, saves it, and prints a story the model wrote.
"""
from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

from llamalab.errors import ConfigError
from llamalab.train.config import TrainConfig

VOCAB_SIZE = 1024
# About a million parameters: big enough to write clean sentences, small enough for two CPU cores.
MODEL = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=32, tie_embeddings=True)
TRAINING = dict(seq_len=256, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=50, weight_decay=0.1,
                eval_every=100, eval_batches=8, log_every=10, save_every=0, keep_last=1,
                sample_prompt="Once upon a time", sample_tokens=250)


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="train a small story-telling Llama from scratch in a few minutes (CPU)")
    p.add_argument("--out", type=Path, default=Path("llamalab-demo"), metavar="DIR",
                   help="folder for the corpus, data, checkpoints and the model (default: llamalab-demo)")
    p.add_argument("--stories", type=int, default=20000, metavar="N", help="stories in the corpus (default: 20000)")
    p.add_argument("--minutes", type=float, default=3.5, metavar="M",
                   help="training time to aim for: the number of steps is set from the speed measured here "
                        "(default: 3.5)")
    p.add_argument("--steps", type=int, metavar="N", help="train exactly N steps instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus, the weights and the sample")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    from llamalab.data import prepare, train_tokenizer, write_stories
    from llamalab.train.run import steps_that_fit, train  # torch: only when the demo runs

    if args.stories < 100 or (args.steps is not None and args.steps < 1) or args.minutes <= 0:
        raise ConfigError("the demo needs --stories 100 or more, --steps 1 or more and --minutes above 0")
    start = time.perf_counter()
    out: Path = args.out
    print(f"llamalab demo: a small Llama trained from scratch on this machine, in {out}/\n")

    t = time.perf_counter()
    corpus = write_stories(out / "stories.jsonl", args.stories, args.seed)
    print(f"[1/4] wrote {args.stories:,} short stories to {corpus} ({time.perf_counter() - t:.1f} s)")

    t = time.perf_counter()
    tokenizer = train_tokenizer([corpus], VOCAB_SIZE, out / "data" / "tokenizer.model")
    print(f"[2/4] trained a {VOCAB_SIZE}-token SentencePiece vocabulary: {tokenizer} ({time.perf_counter() - t:.1f} s)")

    t = time.perf_counter()
    meta = prepare([corpus], tokenizer, out / "data", val_fraction=0.02, progress=False)
    splits = meta["splits"]
    print(f"[3/4] tokenized them: {splits['train']['tokens']:,} training and {splits['val']['tokens']:,} "
          f"validation tokens ({time.perf_counter() - t:.1f} s)")

    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the demo always trains afresh
    cfg = TrainConfig(data=str(out / "data"), out_dir=str(out), model=MODEL, max_steps=args.steps or 1,
                      seed=args.seed, progress=not args.no_progress, **TRAINING)
    if args.steps is None:
        cfg.max_steps = steps_that_fit(cfg, 60 * args.minutes, at_least=300, at_most=3000)
        print(f"[4/4] training for about {args.minutes:g} minutes: {cfg.max_steps} steps at the speed measured here")
    else:
        print(f"[4/4] training for {cfg.max_steps} steps")
    print(f"      (dim {MODEL['dim']}, {MODEL['n_layers']} layers, {MODEL['n_heads']} heads, context {cfg.seq_len}); "
          "the validation loss falls from about 7 to below 1 as it learns to write\n")
    summary = train(cfg, stop_on_signals=True, allow_tf32=True)
    if summary["interrupted"]:
        print(f"\nStopped at step {summary['step']}. Run `llamalab demo` again to start over.")
        return 130

    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    model = summary["model"]
    print(f"\nA story the model wrote (prompt: {cfg.sample_prompt!r}):\n")
    for paragraph in summary["sample"].splitlines():
        print(textwrap.fill(paragraph, width=100, initial_indent="  ", subsequent_indent="  "))
    print(f"\nDone in {minutes} min {seconds} s. Final validation loss {summary['val_loss']:.3f}.")
    print(f"The model is saved in {model}/ (weights, config and tokenizer); its loss curve is {summary['plot']}.")
    print("Try it:")
    print(f"  llamalab generate {model} --prompt \"One day, a little cat\"")
    print(f"  llamalab chat {model}")
    return 0
