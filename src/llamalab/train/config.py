"""TrainConfig: every setting of a training run, from defaults, a TOML / YAML file, then command-line flags."""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from llamalab.config import ModelArgs
from llamalab.errors import ConfigError

AUTOCAST_DTYPES = ("auto", "float32", "bfloat16", "float16")
QLORA_BASES = ("", "keep", "int8", "int4")


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None):
    """A TrainConfig field with the one-line help (and the choices) its command-line flag shows."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """A training run. The model comes from `init_from` (fine-tuning), else `preset` with `model` fields on top."""

    # data and output
    data: str = setting("", "folder written by `llamalab data prepare`, or a chat / instruction .jsonl file "
                            "(`messages` or Alpaca `instruction`/`input`/`output`; loss on the answers only)")
    val_data: str = setting("", "chat .jsonl of validation dialogs (default: the last 5% of a chat --data file)")
    out_dir: str = setting("runs/llamalab", "where checkpoints, metrics.jsonl, loss.png and the model go")
    # model
    preset: str | None = setting(None, "a ModelArgs preset to start from (see `llamalab info`)")
    model: dict[str, Any] = setting({}, "ModelArgs fields over the preset's (flags --dim, --n-layers, ...)")
    init_from: str | None = setting(None, "a saved model to fine-tune (any format llamalab loads)")
    # batch: one optimizer step sees batch_size x grad_accum x processes sequences of seq_len tokens
    seq_len: int = setting(256, "tokens per training sequence")
    batch_size: int = setting(32, "sequences per micro-batch per process")
    grad_accum: int = setting(1, "micro-batches whose gradients are summed before each optimizer step")
    # optimizer and schedule
    max_steps: int = setting(1000, "optimizer steps of the run")
    lr: float = setting(1e-3, "peak learning rate, reached by linear warmup")
    min_lr: float = setting(1e-4, "learning rate the cosine decay ends at, at max_steps")
    warmup_steps: int = setting(100, "steps of linear warmup")
    weight_decay: float = setting(0.1, "AdamW weight decay of the 2-D weights (norm gains are not decayed)")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    grad_clip: float = setting(1.0, "largest global gradient norm (0: no clipping)")
    # numerics and speed
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = setting("auto", "autocast dtype (auto: bfloat16 where the device computes it natively, else float32; "
                                  "float16 adds a gradient scaler)", AUTOCAST_DTYPES)
    compile: bool = setting(False, "torch.compile the model")
    activation_checkpointing: bool = setting(False, "recompute each block in the backward pass to save memory")
    parallel: str = setting("ddp", "data parallelism under torchrun", ("ddp", "fsdp"))
    tp: int = setting(1, "tensor-parallel size under torchrun: FSDP2 x TP on a (processes/tp, tp) mesh")
    dp_shard: int = setting(0, "FSDP2 size under --tp; processes = dp_shard x tp (0: processes / tp)")
    # fine-tuning with LoRA (lora_rank 0: every weight trains)
    lora_rank: int = setting(0, "rank of LoRA adapters (0: full training)")
    lora_alpha: float = setting(16.0, "LoRA scale numerator: the update is alpha/rank * B A")
    lora_targets: list[str] = setting(["wq", "wv"], "projections that get adapters (wq wk wv wo w1 w2 w3 output)")
    merge: bool = setting(False, "fold the LoRA adapters into the saved model's weights")
    qlora: str = setting("", "QLoRA: LoRA over a frozen quantized base: int8 / int4 (the float weights quantized), or "
                             "keep (a GGUF's int8 / int4 weights as stored); empty: a float32 base", QLORA_BASES)
    # evaluation, samples, checkpoints, logs
    eval_every: int = setting(100, "steps between validation passes (0: only at the end)")
    eval_batches: int = setting(20, "micro-batches of validation data per pass")
    sample_every: int = setting(0, "steps between printed samples (0: only at the end)")
    sample_prompt: str = setting("Once upon a time", "prompt of the printed samples")
    sample_tokens: int = setting(200, "tokens per printed sample")
    save_every: int = setting(500, "steps between training checkpoints (0: only at the end)")
    keep_last: int = setting(2, "training checkpoints kept")
    sharded_checkpoints: bool = setting(False, "write training checkpoints with torch.distributed.checkpoint: each "
                                               "process its own shards, resumable at another process count")
    async_checkpoints: bool = setting(False, "write sharded checkpoints in the background while training goes on")
    log_every: int = setting(10, "steps between metrics.jsonl records")
    seed: int = setting(1337, "seed of the initial weights, data order and samples")
    resume: bool = setting(False, "continue from the newest checkpoint in out_dir")
    tensorboard: bool = setting(False, "also write TensorBoard events to out_dir/tensorboard")
    progress: bool = setting(True, "show a progress bar")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the setting and the fix when the run cannot work."""
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_batches", "sample_tokens", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "sample_every", "save_every", "keep_last", "lora_rank"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip", "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not -1e300 < value < 1e300:
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if not isinstance(self.seed, int) or not -(2**63) <= self.seed <= 2**64 - 1:
            raise ConfigError(
                f"seed must be a whole number in [-2**63, 2**64 - 1] (what torch takes), got {self.seed!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.dtype not in AUTOCAST_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.dtype!r}")
        if self.parallel not in ("ddp", "fsdp"):  # flags check choices; a config file may not
            raise ConfigError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.tp < 1 or self.dp_shard < 0:
            raise ConfigError(f"need tp >= 1 and dp_shard >= 0, got tp={self.tp}, dp_shard={self.dp_shard}")
        if self.tp > 1 and self.seq_len % self.tp:
            raise ConfigError(f"with --tp {self.tp} each rank holds seq_len/tp positions (sequence parallelism): "
                              f"choose a seq_len that {self.tp} divides, not {self.seq_len}")
        if self.tp > 1 and self.lora_rank:
            raise ConfigError("LoRA adapters are not split by tensor parallelism: drop --tp (use --parallel fsdp) "
                              "or train every weight")
        if self.tp > 1 and self.sample_every:
            raise ConfigError("samples are not drawn during a --tp run: set sample_every to 0 and try the saved "
                              "model with `llamalab generate`")
        if self.qlora not in QLORA_BASES:
            raise ConfigError(f"qlora must be one of keep, int8, int4 (or empty), got {self.qlora!r}")
        if self.qlora and (not self.lora_rank or self.merge or self.tp > 1):
            raise ConfigError("qlora trains LoRA adapters over frozen quantized weights: it needs --lora-rank, and "
                              "neither --merge (merge later: `llamalab convert MODEL OUT --lora ADAPTERS`) nor --tp")
        if self.async_checkpoints and not self.sharded_checkpoints:
            raise ConfigError("async_checkpoints writes sharded checkpoints in the background: "
                              "add --sharded-checkpoints")
        if self.merge and not self.lora_rank:
            raise ConfigError("merge folds LoRA adapters into the weights; it needs lora_rank > 0")
        unknown = sorted(set(self.model) - MODEL_FIELDS)
        if unknown:
            raise ConfigError(f"unknown model field(s) {unknown}; known: {sorted(MODEL_FIELDS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; see `llamalab train --help`")
        return cls(**data)


MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelArgs)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a .toml, .yaml/.yml or .json file, as a dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return data


def merge_settings(file_settings: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a file's settings and the flags given (None: not given; flags win over the file).

    Flags named after ModelArgs fields (dim, n_layers, dropout, ...) go into `model`.
    """
    settings = dict(file_settings)
    settings["model"] = dict(settings.get("model") or {})
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, value in flags.items():
        if value is None:
            continue
        if name in train_fields:
            settings[name] = value
        else:
            settings["model"][name] = value
    return TrainConfig.from_dict(settings)
