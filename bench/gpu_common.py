"""What the GPU benchmarks (gpu_decode.py, gpu_train.py) share: the device options, the peak MFU is taken
against, freeing the device between variants, and the output (a table, or JSON printed and saved)."""
from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable

import torch
import transformers

from llamalab.analysis import accelerator_for_device


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--peak-tflops", type=float, help="the peak MFU is taken against (default: the datasheet's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON object to this file")


def setup(options: argparse.Namespace) -> tuple[torch.device, str, float | None]:
    """(device, its name, peak FLOP/s for MFU or None): the datasheet's bf16 peak unless --peak-tflops is given."""
    if options.threads:
        torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    device = torch.device(options.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    accelerator = accelerator_for_device(name) if device.type == "cuda" else None
    peak_flops = options.peak_tflops * 1e12 if options.peak_tflops else accelerator and accelerator.peak_flops
    return device, name, peak_flops


def say(text: str) -> None:
    """Progress, on stderr (stdout holds the table or the JSON)."""
    print(text, file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free what the variants measured so far left behind: compiled code, CUDA graphs and cached device memory."""
    gc.collect()
    torch.compiler.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def emit(report: dict, options: argparse.Namespace, print_table: Callable[[dict], None]) -> None:
    """Save the report as JSON if asked, then print it as JSON or as a table."""
    if options.save:
        with open(options.save, "w") as f:
            json.dump(report, f, indent=1)
    if options.json:
        print(json.dumps(report))
    else:
        print_table(report)
