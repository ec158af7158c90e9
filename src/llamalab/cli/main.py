"""`llamalab` entry point: parse the subcommand, run it, turn user errors into one line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import sys

from llamalab import __version__
from llamalab.errors import LlamalabError

# Each module `llamalab.cli.<name>` defines `add_parser(subparsers)` and `run(args) -> int | None`.
COMMANDS = ["info", "convert", "tokenizer", "analyze", "serve", "generate", "chat", "eval", "inspect", "bench", "data",
            "train", "demo", "ablate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamalab", description="LLaMA 2 / LLaMA 3 from first principles.")
    parser.add_argument("--version", action="version", version=f"llamalab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"llamalab.cli.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return args.run(args) or 0
    except LlamalabError as e:
        print(f"llamalab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llamalab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
