"""The CLI starts fast: building the parser imports none of the heavy modules, and the names it offers
as choices (kept in cli/ so that the parser needs no torch) are the ones the library accepts."""
import subprocess
import sys

import torch

from llamalab import checkpoint, quantize
from llamalab.checkpoint import weights
from llamalab.cli import common, convert, serve
from llamalab.serve import server

HEAVY = ["torch", "torch.distributed.tensor", "fastapi", "uvicorn", "matplotlib"]  # torch alone takes ~1 s


def test_building_the_parser_imports_no_heavy_module():
    code = ("import sys; from llamalab.cli.main import build_parser; build_parser(); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == []


def test_choices_match_the_library():
    assert common.QUANTIZATIONS == quantize.SCHEMES
    assert all(isinstance(getattr(torch, name), torch.dtype) for name in common.DTYPES)
    assert list(convert.FORMATS) == list(checkpoint.FORMATS)
    assert list(convert.DTYPES) == list(weights.DTYPES)
    assert serve.DEFAULT_MAX_SEQ_LEN == server.DEFAULT_MAX_SEQ_LEN
