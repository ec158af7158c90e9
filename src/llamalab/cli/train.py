"""`llamalab train`: train a Llama from scratch or fine-tune a saved one (fully or with LoRA), on one
process or several under torchrun (DDP or FSDP2); settings from flags and/or a TOML / YAML file, mapped to a
TrainConfig for `llamalab.train.run.train`."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from llamalab.config import ModelArgs
from llamalab.train.config import TrainConfig, merge_settings, read_config_file

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
    from llamalab.train.run import train  # torch, distributed, FSDP: only when training starts

    cfg = config_from_args(args)
    summary = train(cfg, stop_on_signals=True, allow_tf32=True)
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
