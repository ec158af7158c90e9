"""The training loop: gradient accumulation, clipping, AdamW with warmup + cosine, validation, samples,
checkpoints with exact resume; on one process or several (DDP, FSDP2 or FSDP2 x TP under torchrun)."""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor.parallel import loss_parallel
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from llamalab import checkpoint
from llamalab.analysis import accelerator_for_device, mfu
from llamalab.checkpoint import find_tokenizer
from llamalab.checkpoint.peft import ADAPTER_CONFIG, save_adapters
from llamalab.data.chat import ChatBatches, ChatData, is_chat_file
from llamalab.errors import CheckpointError, ConfigError, DataError
from llamalab.generate.decode import generate
from llamalab.generate.sampling import SamplingParams
from llamalab.model.head_loss import IGNORE_INDEX
from llamalab.model.lora import merge_lora
from llamalab.tokenizer import encode_dialog, load_tokenizer
from llamalab.train.batches import Batches, TokenData, window_batch, windows
from llamalab.train.build import build_model, prepare_model, unwrap
from llamalab.train.config import TrainConfig
from llamalab.train.metrics import MetricsLog, plot_loss, read_metrics
from llamalab.train.optim import build_optimizer, build_scheduler
from llamalab.train.sharded import (
    PendingSnapshot,
    load_sharded,
    read_run_state,
    save_sharded,
    sharded_steps,
    snapshot_path,
)
from llamalab.train.snapshots import load_newest_checkpoint, restore, save_checkpoint, saved_steps

AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_trainer(cfg: TrainConfig, device: torch.device) -> Trainer:
    """Data, model, its preparation (LoRA, checkpointing, DDP / FSDP2, compile) and AdamW, as the config asks.

    To change the model on the way (another parallel plan, say), call these steps yourself.
    """
    if not cfg.data:
        raise ConfigError("no training data given: pass --data DIR, a folder written by `llamalab data prepare`, "
                          "or a chat / instruction .jsonl file with --init-from MODEL")
    data = chat_data(cfg) if is_chat_file(cfg.data) else TokenData(cfg.data)
    model = build_model(cfg, data.vocab_size, device)
    module = prepare_model(model, cfg, device)
    optimizer = build_optimizer(module, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    return Trainer(cfg, module, optimizer, data, device)


def chat_data(cfg: TrainConfig) -> ChatData:
    """The chat / instruction file of `--data`, rendered with the chat template of the model it fine-tunes."""
    tokenizer = find_tokenizer(cfg.init_from) if cfg.init_from else None
    if tokenizer is None:
        raise ConfigError(f"{cfg.data} is chat data: it fine-tunes a model with a tokenizer and chat template; "
                          "pass --init-from MODEL (a folder or file with its tokenizer beside it)")
    return ChatData(cfg.data, tokenizer, cfg.seq_len, val_path=cfg.val_data or None)


class Trainer:
    """Trains a prepared module (see `build.prepare_model`) with its optimizer on prepared token data."""

    def __init__(self, cfg: TrainConfig, module: nn.Module, optimizer: torch.optim.Optimizer,
                 data: TokenData | ChatData, device: torch.device):
        self.cfg, self.module, self.optimizer, self.data, self.device = cfg, module, optimizer, data, device
        self.model = unwrap(module)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.is_main = self.rank == 0
        self.dp_rank, self.dp_world = self.rank // cfg.tp, self.world // cfg.tp  # the tp ranks of a group share data
        self.scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.lr, cfg.min_lr)
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.dp_world
        if isinstance(data, ChatData):
            self.batches = ChatBatches(data, self.global_batch, cfg.seed, self.dp_rank, self.dp_world)
        else:
            self.batches = Batches(data.tokens("train"), cfg.seq_len, self.global_batch, cfg.seed, self.dp_rank,
                                   self.dp_world)
        if not isinstance(data, ChatData) and windows(data.tokens("val"), cfg.seq_len) < 1:
            raise DataError(f"the validation split of {data.folder} holds {len(data.tokens('val'))} tokens, fewer "
                            f"than one sequence of {cfg.seq_len}; prepare with a larger --val-fraction or more text")
        self.dtype = resolve_dtype(cfg.dtype, device)
        self.autocast_dtype = AUTOCAST[self.dtype]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == "float16")
        self.out_dir = Path(cfg.out_dir)
        self.checkpoints = self.out_dir / "checkpoints"
        self.step = 0
        self.step_tokens = 0  # token positions of the last step (all processes)
        self.pending_save: PendingSnapshot | None = None  # a checkpoint still being written (async_checkpoints)
        self.save_group = None  # the gloo group the background writer's collectives use
        if cfg.async_checkpoints:
            self.save_group = dist.new_group(backend="gloo") if dist.is_initialized() else True
        self.stop_requested = False
        self.peak_flops = _peak_flops(device)

    # -- one step ----------------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self) -> torch.Tensor:
        """One optimizer step over a global batch; returns this process's mean loss (a 0-d tensor, no sync)."""
        self.module.train()
        inputs, targets = self.batches.next()  # (batch_size * grad_accum, seq_len) each (chat data: the padded length)
        self.step_tokens = inputs.numel() * self.dp_world  # positions computed this step by all the processes
        total = torch.zeros((), device=self.device)
        micro_batches = zip(inputs.chunk(self.cfg.grad_accum), targets.chunk(self.cfg.grad_accum))
        for i, (x, y) in enumerate(micro_batches):
            with self._gradient_sync(last=i == self.cfg.grad_accum - 1), self._split_loss():
                with self._autocast():
                    loss = self._loss(self.module, x, y) / self.cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return total

    def _loss(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of a causal pass over x (bsz, seqlen) against y, as a plain 0-d tensor (under --tp
        it comes as a DTensor). From `module(x, targets=y)`, not `Transformer.loss`: DDP and FSDP see a forward."""
        loss = module(x.to(self.device), targets=y.to(self.device))
        return loss.full_tensor() if self.cfg.tp > 1 else loss

    def _split_loss(self):
        """Under --tp the logits stay split by vocabulary: the loss and its backward run inside `loss_parallel`."""
        return loss_parallel() if self.cfg.tp > 1 else contextlib.nullcontext()

    def _gradient_sync(self, last: bool):
        """Reduce gradients across processes only on the last micro-batch of a step."""
        if isinstance(self.module, DistributedDataParallel) and not last:
            return self.module.no_sync()
        if hasattr(self.module, "set_requires_gradient_sync"):  # FSDP2
            self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # -- validation and samples --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the first eval_batches micro-batches of the val split (shared among processes)."""
        self.module.eval()
        chat = isinstance(self.data, ChatData)
        n = len(self.data.splits["val"]) if chat else windows(self.data.tokens("val"), self.cfg.seq_len)
        n = min(n, self.cfg.eval_batches * self.cfg.batch_size)
        batches = [range(i, min(i + self.cfg.batch_size, n)) for i in range(0, n, self.cfg.batch_size)]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (sum of token losses, tokens)
        for rows in batches[self.dp_rank::self.dp_world]:
            if chat:
                x, y = self.data.batch("val", rows)
            else:
                x, y = window_batch(self.data.tokens("val"), list(rows), self.cfg.seq_len)
            with self._autocast(), self._split_loss():
                loss = self._loss(self.model, x, y)
            counted = int((y != IGNORE_INDEX).sum())  # the loss is the mean over the counted targets
            total += torch.tensor([loss.item() * counted, counted], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(total)  # each tp group's sums tp times over: the ratio is the same
        return (total[0] / total[1]).item()

    def sample(self, prompt: str | None = None, max_new_tokens: int | None = None,
               temperature: float = 0.6) -> str | None:
        """Text the model continues `prompt` with (every process runs it: FSDP needs them all; the seed is fixed).

        None under --tp: sequence parallelism splits the sequence, which one-token decode steps cannot.
        """
        if self.cfg.tp > 1:
            return None
        tokenizer = load_tokenizer(self.data.tokenizer_path)
        prompt = self.cfg.sample_prompt if prompt is None else prompt
        if isinstance(self.data, ChatData):  # the prompt as a user message, in the chat template
            ids = encode_dialog(tokenizer, [{"role": "user", "content": prompt}])
        else:
            ids = tokenizer.encode(prompt, bos=tokenizer.bos_id is not None)
        self.module.eval()
        max_new = min(max_new_tokens or self.cfg.sample_tokens, self.model.args.max_seq_len - len(ids))
        try:
            with self._autocast():
                [done] = generate(self.model, [ids], max_new, stop_ids=tokenizer.stop_ids,
                                  sampling=SamplingParams(temperature=temperature, top_p=0.9, seed=self.cfg.seed))
        finally:
            self.model.clear_cache()
        return tokenizer.decode(ids + done.tokens)

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        extra = {"scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "data": self.batches.state_dict(), "config": self.cfg.to_dict(),
                 "model_args": self.model.args.to_dict()}
        if self.cfg.sharded_checkpoints:
            self.finish_saving()
            saved = save_sharded(self.checkpoints, self.step, self.module, self.optimizer, extra, self.cfg.keep_last,
                                 background=self.save_group)
            if isinstance(saved, PendingSnapshot):
                self.pending_save, saved = saved, None
            return saved
        return save_checkpoint(self.checkpoints, self.step, self.module, self.optimizer, extra, self.cfg.keep_last)

    def finish_saving(self) -> None:
        """Wait for a checkpoint being written in the background, and put it in place."""
        if self.pending_save is not None:
            pending, self.pending_save = self.pending_save, None
            pending.wait()

    def resume(self) -> bool:
        """Continue from the newest checkpoint in out_dir/checkpoints; False when there is none.

        A sharded checkpoint resumes at any process count and layout; a whole-file one at the same process count.
        """
        sharded = sharded_steps(self.checkpoints)
        if sharded:
            path = snapshot_path(self.checkpoints, sharded[-1])
            self._check_shape(read_run_state(path))
            state = load_sharded(path, self.module, self.optimizer)
        else:
            state = load_newest_checkpoint(self.checkpoints, self._say)
            if state is None:
                return False
            self._check_shape(state)
            try:
                restore(state, self.module, self.optimizer)
            except (RuntimeError, KeyError, ValueError) as e:
                raise CheckpointError(f"cannot resume from {self.checkpoints}: {e}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.batches.load_state_dict(state["data"])
        self.step = state["step"]
        return True

    def _check_shape(self, state: dict) -> None:
        if state["model_args"] != self.model.args.to_dict():
            raise CheckpointError(f"the checkpoints in {self.checkpoints} are of another model shape; "
                                  "resume with the settings of that run or choose another --out-dir")

    # -- the run -----------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to max_steps (or until `request_stop`), validating, sampling and saving on the way.

        Returns a summary: the last step, train and validation loss, whether it was interrupted.
        """
        cfg = self.cfg
        resumed = self.resume() if cfg.resume else False
        if not resumed and (saved_steps(self.checkpoints) or sharded_steps(self.checkpoints)):
            raise ConfigError(f"{self.checkpoints} holds checkpoints of an earlier run; continue it with --resume "
                              "or choose another --out-dir")
        log = MetricsLog(self.out_dir / "metrics.jsonl", self.step, self.out_dir / "tensorboard"
                         if cfg.tensorboard else None) if self.is_main else None
        tokens_per_step = self.global_batch * cfg.seq_len
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", disable=not (cfg.progress and self.is_main),
                   dynamic_ncols=True, desc="training")
        summary = {"resumed_from": self.step if resumed else None, "interrupted": False}
        train_seconds, tokens_timed, loss = 0.0, 0, math.nan
        try:
            if cfg.eval_every and self.step == 0:  # where the curve starts: about ln(vocab_size)
                record = self._validate(summary)
                if log is not None:
                    log.write(record)
            while self.step < cfg.max_steps:
                start = time.perf_counter()
                loss_t = self.train_step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                train_seconds += time.perf_counter() - start
                tokens_timed += self.step_tokens
                bar.update()
                record = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    loss = self._global_mean(loss_t)
                    tokens_per_s = tokens_timed / train_seconds
                    record = {"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                              "tokens": self.step * tokens_per_step, "tokens_per_s": tokens_per_s}
                    postfix = {"loss": f"{loss:.3f}", "lr": f"{record['lr']:.2e}", "tok/s": f"{tokens_per_s:,.0f}"}
                    if self.peak_flops:
                        record["mfu"] = mfu(tokens_per_s / self.world, self.model.args, cfg.seq_len, self.peak_flops)
                        postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
                    bar.set_postfix(postfix, refresh=False)
                    train_seconds, tokens_timed = 0.0, 0
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps:
                    record.update(self._validate(summary))
                if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.max_steps:
                    text = self.sample()
                    self._say(f"--- sample at step {self.step} ---\n{text}\n---")
                if log is not None and record:
                    log.write(record)
                stop = self._stop_everywhere()
                if stop or (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.max_steps:
                    self.save_checkpoint()
                if stop:
                    summary["interrupted"] = True
                    break
        finally:
            self.finish_saving()
            bar.close()
            if log is not None:
                log.close()
        summary.update({"step": self.step, "loss": loss})
        if "val_loss" not in summary and not summary["interrupted"]:  # resumed a run that had already ended
            summary["val_loss"] = self.evaluate()
        if self.is_main:
            summary["plot"] = str(plot_loss(read_metrics(self.out_dir / "metrics.jsonl"),
                                            self.out_dir / "loss.png", title=f"{self.out_dir.name}"))
        return summary

    def _validate(self, summary: dict) -> dict:
        """Evaluate, announce, note in the summary and return the record {step, val_loss, val_ppl}."""
        val = self.evaluate()
        summary["val_loss"] = val
        record = {"step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50))}
        self._say(f"step {self.step}: validation loss {val:.3f} (perplexity {record['val_ppl']:.1f})")
        return record

    def _say(self, text: str) -> None:
        """Print above the progress bar, from rank 0 only."""
        if self.is_main:
            tqdm.write(text)

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and return after the current step (a Ctrl-C handler calls this)."""
        self.stop_requested = True

    def _stop_everywhere(self) -> bool:
        """True when any process was asked to stop, so that all of them stop at the same step."""
        if self.world == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _global_mean(self, value: torch.Tensor) -> float:
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return value.item()

    # -- the result --------------------------------------------------------------------------------
    def save_model(self, folder: str | Path) -> Path | None:
        """Write the trained model (native format, with its tokenizer) or, for LoRA without merge, the adapters alone.

        Every process calls it (FSDP gathers the weights); rank 0 writes and returns the folder. A model
        or adapters this llamalab saved there before are replaced only once the new ones are complete.
        """
        state = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        cfg, args, folder = self.cfg, self.model.args, Path(folder)
        new = folder.with_name(folder.name + ".new")
        shutil.rmtree(new, ignore_errors=True)  # left by a crash during an earlier save
        if cfg.lora_rank and not cfg.merge:
            save_adapters(state, new, args, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, base_model=cfg.init_from)
        else:
            if cfg.lora_rank:
                state = merge_lora(state, cfg.lora_rank, cfg.lora_alpha)
            if args.tie_embeddings:
                state.pop("output.weight", None)
            checkpoint.write(state, args.replace(dropout=0.0), new, "native", tokenizer=self.data.tokenizer_path)
        return _replace_folder(new, folder)


def _replace_folder(new: Path, folder: Path) -> Path:
    """Rename `new` to `folder`; an earlier llamalab output there is removed, anything else is an error."""
    if folder.exists():
        ours = any((folder / name).is_file() for name in ("llamalab.json", ADAPTER_CONFIG))
        if not ours and any(folder.iterdir()):
            shutil.rmtree(new)
            raise CheckpointError(f"{folder} exists and is not a llamalab model; move it away or choose another "
                                  "--out-dir")
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        new.rename(folder)
        shutil.rmtree(old)
    else:
        new.rename(folder)
    return folder


def resolve_dtype(name: str, device: torch.device) -> str:
    """The autocast dtype a config's `dtype` means on this device: "auto" is bfloat16 where matmuls run natively in
    bfloat16 (CUDA with bf16 support; CPUs with AVX512-BF16 or AMX), else float32 (emulated bf16 is slower)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return "bfloat16" if native else "float32"


def _peak_flops(device: torch.device) -> float | None:
    """The accelerator's datasheet peak FLOP/s, for MFU; None where unknown (CPUs)."""
    if device.type != "cuda":
        return None
    accelerator = accelerator_for_device(torch.cuda.get_device_name(device))
    return accelerator.peak_flops if accelerator else None
