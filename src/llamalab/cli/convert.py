"""`llamalab convert SRC DST --to FORMAT`: rewrite a checkpoint in another format, with a progress bar."""
from __future__ import annotations

from llamalab.errors import CheckpointError

# llamalab.checkpoint's FORMATS and DTYPES, named here so that the parser needs no torch
FORMATS = ("meta", "hf", "llama2c", "gguf", "native")
DTYPES = ("float32", "float16", "bfloat16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def add_parser(subparsers):
    p = subparsers.add_parser("convert", help="convert a checkpoint between meta, hf, llama2c, gguf and native")
    p.add_argument("src", help="checkpoint folder (meta, hf, native, a sharded training checkpoint `step_N/`) or file "
                               "(.gguf, llama2.c .bin)")
    p.add_argument("dst", help="output folder, or file for llama2c / gguf (written atomically)")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument("--dtype", choices=DTYPES,
                   help="cast the weights (q8_0: gguf, llama2c version 2; q4_0, q4_1, q5_0, q5_1: gguf); "
                        "default: keep them as stored")
    p.add_argument("--shards", type=int, default=1, help="number of files for meta (model-parallel ranks) and hf")
    p.add_argument("--tokenizer", help="tokenizer to ship along (default: the one beside SRC)")
    p.add_argument("--lora", metavar="ADAPTER", help="LoRA adapter folder (PEFT format) to merge into the weights")
    p.add_argument("--llama2c-version", type=int, choices=(0, 1, 2),
                   help="llama2.c layout: 0 legacy (run.c, default), 1 float32 with header, 2 q8_0 (runq.c)")
    return p


def run(args) -> int:
    from llamalab.checkpoint import convert, detect_format

    options = {}
    if args.llama2c_version is not None:
        if args.to != "llama2c":
            raise CheckpointError(f"--llama2c-version applies to --to llama2c, not {args.to}")
        options["version"] = args.llama2c_version
    from llamalab.train.sharded import convert_snapshot, is_sharded_snapshot

    sharded = is_sharded_snapshot(args.src)
    src_format = "sharded training checkpoint" if sharded else detect_format(args.src)
    rewrite = convert_snapshot if sharded else convert
    dst = rewrite(args.src, args.dst, args.to, dtype=args.dtype, shards=args.shards, tokenizer=args.tokenizer,
                  show_progress=True, lora=args.lora, **options)
    size = sum(f.stat().st_size for f in (dst.rglob("*") if dst.is_dir() else [dst]) if f.is_file())
    print(f"converted {args.src} ({src_format}) -> {dst} ({args.to}, {size / 2**20:.1f} MiB)")
    return 0

