"""`llamalab train`: train a Llama from scratch or fine-tune a saved one (fully or with LoRA), on one
process or several under torchrun (DDP or FSDP2); settings from flags and/or a TOML / YAML file."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import typing
from pathlib import Path

from llamalab.config import ModelArgs
from llamalab.train.config import TrainConfig, merge_settings, read_config_file

if typing.TYPE_CHECKING:  # torch is imported when training starts, not for `llamalab --help`
    import torch

MODEL_FLAG_TYPES = (int, float, bool)  # ModelArgs fields settable by flag (rope_scaling only in a config file)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "train", help="train a model on prepared token data (from scratch, or fine-tune with --init-from)",
        description="Train on a folder written by `llamalab data prepare`. Settings come from the defaults, "
                    "then --config FILE, then the flags. Under `torchrun --nproc-per-node N` the global batch "
                    "is split over the processes (DDP, FSDP2 with --parallel fsdp, or FSDP2 x TP with --tp).",
    )
    p.add_argument("--config", metavar="FILE", help="TOML, YAML or JSON file of settings (flags override it)")
    group = p.add_argument_group("training")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model":
            default = _default(f)
            shown = "" if default in (None, "") else f" (default: {default})"
            _add_flag(group, f.name, hints[f.name], f.metadata["help"] + shown, f.metadata["choices"])
    group = p.add_argument_group("model", "ModelArgs fields for a new model, over the preset's")
    hints = typing.get_type_hints(ModelArgs)
    for f in dataclasses.fields(ModelArgs):
        if _scalar(hints[f.name]) in MODEL_FLAG_TYPES:
            _add_flag(group, f.name, hints[f.name], None)
    return p


def _scalar(hint) -> type:
    """int for `int` and `int | None`, list for `list[str]`, ..."""
    if typing.get_origin(hint) is list:
        return list
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _add_flag(group, name: str, hint, help: str | None, choices=None) -> None:
    """--name-with-dashes: --x/--no-x for a bool, several values for a list; default None = not given."""
    flag, kind = "--" + name.replace("_", "-"), _scalar(hint)
    if kind is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
    elif kind is list:
        group.add_argument(flag, nargs="+", default=None, metavar="NAME", help=help)
    else:
        group.add_argument(flag, type=kind, default=None, choices=choices, metavar=None if choices else name.upper(),
                           help=help)


def config_from_args(args) -> TrainConfig:
    """Defaults, then the --config file, then the flags given."""
    settings = read_config_file(args.config) if args.config else {}
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    names += [f.name for f in dataclasses.fields(ModelArgs)]
    return merge_settings(settings, {name: getattr(args, name, None) for name in names})


def run(args) -> int:
    cfg = config_from_args(args)
    summary = train(cfg)
    if summary is None:  # not rank 0
        return 0
    if summary["interrupted"]:
        print(f"stopped at step {summary['step']}; checkpoint saved in {Path(cfg.out_dir) / 'checkpoints'}. "
              "Continue with the same command and --resume")
        return 130
    print(f"validation loss {summary['val_loss']:.3f} at step {summary['step']}; loss curve: {summary['plot']}")
    if summary["sample"] is not None:
        print(f"sample:\n{summary['sample']}")
    if summary["model"].name == "adapters":
        print(f"LoRA adapters saved in {summary['model']} (train with --merge for a standalone model)")
    else:
        print(f"model saved in {summary['model']}; try: llamalab generate {summary['model']} --prompt \"...\"")
    return 0


def _precision(dtype: str) -> str:
    return "float32" if dtype == "float32" else f"{dtype} autocast, float32 weights"


def train(cfg: TrainConfig) -> dict | None:
    """Set the process up, train, save the model and write a sample; rank 0 returns the run's summary.

    The summary holds the step, losses, the loss-curve PNG, the saved model folder and the sample text.
    """
    import torch.distributed as dist

    from llamalab.train.run import save_results  # heavy (distributed, FSDP): only when training starts
    from llamalab.train.trainer import build_trainer

    device = start_process(cfg)
    try:
        main = not dist.is_initialized() or dist.get_rank() == 0
        trainer = build_trainer(cfg, device)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        n_trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        if main:
            print(f"model: {n_params / 1e6:.2f} M parameters ({n_trained / 1e6:.2f} M trained), "
                  f"{trainer.global_batch} x {cfg.seq_len} tokens a step, {cfg.max_steps} steps on {device}"
                  + (f" x {trainer.world} processes ({_layout(cfg, trainer.world)})" if trainer.world > 1 else "")
                  + f"; {_precision(trainer.dtype)}")
        with stop_on_ctrl_c(trainer, announce=main):
            summary = trainer.fit()
        if not summary["interrupted"]:
            save_results(trainer, cfg, summary)
        return summary if main else None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _layout(cfg: TrainConfig, world: int) -> str:
    """How the processes split the work: ddp, fsdp, or fsdp D x tp T."""
    return f"fsdp {world // cfg.tp} x tp {cfg.tp}" if cfg.tp > 1 else cfg.parallel


def start_process(cfg: TrainConfig) -> torch.device:
    """llamalab.train.run.setup_process (torchrun group, device, seed), and TF32 matmuls on CUDA (a global flag)."""
    import torch

    from llamalab.train.run import setup_process

    device = setup_process(cfg)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what `kill`, schedulers and containers send


@contextlib.contextmanager
def stop_on_ctrl_c(trainer, announce: bool = True):
    """The first Ctrl-C (or SIGTERM) asks the trainer to save and stop after its current step; a second aborts."""
    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        if announce:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: saving a checkpoint after this step (send it again to abort without saving)",
                  file=sys.stderr)
        trainer.request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
