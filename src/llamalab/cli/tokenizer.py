"""`llamalab tokenizer train|encode`: train a SentencePiece tokenizer; show how a tokenizer splits text."""
from __future__ import annotations

import json
from pathlib import Path

from llamalab.errors import TokenizerError


def add_parser(subparsers):
    p = subparsers.add_parser("tokenizer", help="train a tokenizer or encode text with one")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train a Llama-2-style SentencePiece BPE tokenizer on text files")
    train.add_argument("files", nargs="+", type=Path, metavar="FILES",
                       help="UTF-8 text files, one sentence or paragraph a line")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N", help="number of tokens, e.g. 32000")
    train.add_argument("--out", type=Path, default=Path("tokenizer.model"), metavar="PATH",
                       help="where to write the model (default: tokenizer.model)")
    train.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")

    encode = actions.add_parser("encode", help="print the ids and pieces of a text")
    encode.add_argument("tokenizer", type=Path, metavar="TOKENIZER", help="tokenizer file, model folder or .gguf model")
    encode.add_argument("text", metavar="TEXT")
    encode.add_argument("--no-bos", action="store_true", help="do not prepend the BOS id (default: as the tokenizer's "
                        "add_bos_token says)")
    encode.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args) -> int:
    if args.action == "train":
        return train(args)
    return encode(args)


def train(args) -> int:
    from llamalab.tokenizer import SentencePieceTokenizer, train_sentencepiece

    for path in args.files:
        if not path.is_file():
            raise TokenizerError(f"training file {path} does not exist")
    if args.vocab_size <= 0:
        raise TokenizerError(f"--vocab-size must be positive, got {args.vocab_size}")
    out = train_sentencepiece(args.files, args.vocab_size, args.out, model_type=args.model_type)
    tokenizer = SentencePieceTokenizer(out)
    print(f"wrote {out} ({tokenizer.vocab_size} tokens, {args.model_type}, byte fallback)")
    return 0


def encode(args) -> int:
    from llamalab.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    ids = tokenizer.encode(args.text, bos=False if args.no_bos else None)
    pieces = [tokenizer.id_to_piece(i) for i in ids]
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces, "tokenizer": type(tokenizer).__name__}, ensure_ascii=False))
    else:
        print(f"{len(ids)} tokens ({type(tokenizer).__name__})")
        for token_id, piece in zip(ids, pieces):
            print(f"{token_id:>8}  {piece!r}")
    return 0
