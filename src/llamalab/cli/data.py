"""`llamalab data`: write the embedded story corpus; tokenize text into the token shards `llamalab train` reads."""
from __future__ import annotations

from pathlib import Path

from llamalab.errors import DataError


def add_parser(subparsers):
    p = subparsers.add_parser("data", help="prepare training data: tokenize text, or write the embedded story corpus")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    prep = actions.add_parser(
        "prepare", help="tokenize text files, folders or .jsonl into token shards",
        description="Tokenize the inputs (.txt/.md files: one document each; .jsonl: one document per line, "
                    "its \"text\" field; folders: the files in them) into uint16/uint32 token shards with a "
                    "train/validation split and meta.json. Give a --tokenizer, or --vocab-size to train a "
                    "SentencePiece vocabulary on the inputs first.",
    )
    prep.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="text files, .jsonl files or folders")
    prep.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the shards and meta.json")
    source = prep.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer", type=Path, metavar="PATH", help="tokenizer file or model folder")
    source.add_argument("--vocab-size", type=int, metavar="N",
                        help="train a SentencePiece BPE vocabulary of N tokens on the inputs (DIR/tokenizer.model)")
    prep.add_argument("--val-fraction", type=float, default=0.01, metavar="F",
                      help="share of the tokens held out for validation (default: 0.01)")
    prep.add_argument("--workers", type=int, default=None, metavar="N",
                      help="tokenizing processes (default: the CPU count, at most 8)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")

    stories = actions.add_parser("stories", help="write the embedded corpus of simple generated stories (.jsonl)")
    stories.add_argument("--out", type=Path, default=Path("stories.jsonl"), metavar="FILE",
                         help="where to write (default: stories.jsonl)")
    stories.add_argument("--count", type=int, default=20000, metavar="N", help="number of stories (default: 20000)")
    stories.add_argument("--seed", type=int, default=0, help="corpus seed: the same seed gives the same stories")
    return p


def run(args) -> int:
    from llamalab.data import prepare, train_tokenizer, write_stories

    if args.action == "stories":
        if args.count < 1:
            raise DataError(f"--count must be at least 1, got {args.count}")
        path = write_stories(args.out, args.count, args.seed)
        print(f"wrote {args.count:,} stories to {path}")
        return 0
    tokenizer = args.tokenizer
    if tokenizer is None:
        if args.vocab_size < 4:
            raise DataError(f"--vocab-size must be at least 4, got {args.vocab_size}")
        tokenizer = train_tokenizer(args.inputs, args.vocab_size, args.out / "tokenizer.model")
        print(f"trained a {args.vocab_size}-token SentencePiece vocabulary: {tokenizer}")
    meta = prepare(args.inputs, tokenizer, args.out, args.val_fraction, args.workers, not args.no_progress)
    splits = meta["splits"]
    print(f"{meta['documents']:,} documents -> {splits['train']['tokens']:,} train and {splits['val']['tokens']:,} "
          f"validation tokens ({meta['dtype']}, vocabulary {meta['vocab_size']:,}) in {args.out}")
    return 0
