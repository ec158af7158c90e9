"""--tp for the model-taking commands: the model split over the processes of torchrun (see llamalab.load_model)."""
from __future__ import annotations

import argparse


def add_tp_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tp", type=int, default=1, metavar="N",
                        help="tensor-parallel size: split the model over the N processes of "
                             "`torchrun --nproc-per-node N -m llamalab ...` (default 1)")
