import math
import resource
import signal

import pytest
import torch

from llamalab import checkpoint
from llamalab.checkpoint.peft import load_adapters
from llamalab.errors import CheckpointError, ConfigError, DataError
from llamalab.train.metrics import read_metrics
from llamalab.train.snapshots import saved_steps
from llamalab.train.trainer import build_trainer

CPU = torch.device("cpu")


def trainer_for(cfg):
    torch.manual_seed(cfg.seed)  # as the CLI seeds a process
    return build_trainer(cfg, CPU)


def losses(out_dir, key="loss"):
    return [r[key] for r in read_metrics(out_dir / "metrics.jsonl") if key in r]


def test_loss_starts_at_log_vocab_and_falls(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=40, eval_every=20, lr=2e-2)
    trainer = trainer_for(cfg)
    summary = trainer.fit()
    train = losses(tmp_path / "run")
    assert len(train) == 40 and train[0] == pytest.approx(math.log(320), abs=0.1)
    val = losses(tmp_path / "run", "val_loss")  # at steps 0, 20 and 40
    assert val[0] == pytest.approx(math.log(320), abs=0.1)  # an untrained model is uniform over the vocabulary
    assert len(val) == 3 and val[2] < val[1] < val[0] - 1.0
    assert summary["val_loss"] == val[2] < 4.0
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert trainer.sample("Once upon a time", 20).startswith("Once upon a time")


def test_gradient_accumulation_equals_one_large_batch(tiny_config, tmp_path):
    trainer_for(tiny_config(batch_size=8, grad_accum=1, max_steps=5)).fit()
    whole = losses(tmp_path / "run")
    trainer_for(tiny_config(batch_size=2, grad_accum=4, max_steps=5, out_dir=str(tmp_path / "accum"))).fit()
    assert losses(tmp_path / "accum") == pytest.approx(whole, rel=1e-5)
    assert whole[-1] < whole[0]


def test_activation_checkpointing_changes_no_number(tiny_config, tmp_path):
    trainer_for(tiny_config(max_steps=3)).fit()
    trainer_for(tiny_config(max_steps=3, activation_checkpointing=True, out_dir=str(tmp_path / "ckpt"))).fit()
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "run"), rel=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_autocast_trains(tiny_config, dtype):
    trainer = trainer_for(tiny_config(max_steps=8, dtype=dtype))
    trainer.fit()
    assert trainer.scaler.is_enabled() == (dtype == "float16")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay float32


def test_resume_continues_exactly_and_keeps_the_newest_checkpoints(tiny_config, tmp_path):
    overrides = dict(max_steps=9, save_every=3, keep_last=2, eval_every=3, model=dict(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16, tie_embeddings=True, dropout=0.1))
    trainer_for(tiny_config(**overrides)).fit()
    assert saved_steps(tmp_path / "run" / "checkpoints") == [6, 9]
    expected = read_metrics(tmp_path / "run" / "metrics.jsonl")

    first = trainer_for(tiny_config(**overrides, out_dir=str(tmp_path / "split")))
    train_step = first.train_step

    def step_then_ctrl_c():  # as if Ctrl-C came during step 5: the loop saves after it and returns
        loss = train_step()
        if first.step == 5:
            first.request_stop()
        return loss

    first.train_step = step_then_ctrl_c
    assert first.fit()["interrupted"]
    assert saved_steps(tmp_path / "split" / "checkpoints") == [3, 5]
    resumed = trainer_for(tiny_config(**overrides, out_dir=str(tmp_path / "split"), resume=True))
    summary = resumed.fit()
    assert summary["resumed_from"] == 5
    got = read_metrics(tmp_path / "split" / "metrics.jsonl")
    strip = lambda records: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]  # noqa: E731
    assert strip(got) == strip(expected)  # every loss bit for bit, dropout included


def test_a_new_run_refuses_to_mix_with_old_checkpoints(tiny_config):
    trainer_for(tiny_config(max_steps=2, save_every=1)).fit()
    with pytest.raises(ConfigError, match="--resume"):
        trainer_for(tiny_config(max_steps=2)).fit()


def test_disk_full_while_saving_leaves_the_previous_checkpoint(tiny_config, tmp_path):
    trainer = trainer_for(tiny_config(max_steps=4))
    trainer.train_step()
    first = trainer.save_checkpoint()
    size = first.stat().st_size
    trainer.train_step()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, limits[1]))
    try:
        with pytest.raises(CheckpointError, match="checkpoint of step 1 is intact"):
            trainer.save_checkpoint()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert [p.name for p in first.parent.iterdir()] == [first.name]
    assert first.stat().st_size == size
    trainer.cfg.resume = True
    assert trainer.resume() and trainer.step == 1


def test_the_saved_model_loads_and_computes_what_was_trained(tiny_config, tmp_path):
    trainer = trainer_for(tiny_config(max_steps=3))
    trainer.fit()
    folder = trainer.save_model(tmp_path / "run" / "model")
    loaded = checkpoint.load(folder)
    tokens = torch.randint(0, 320, (2, 16))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), trainer.model(tokens), rtol=0, atol=0)
    assert (folder / "tokenizer.model").is_file()
    assert trainer.save_model(folder) == folder  # saving again replaces the earlier model


def test_lora_fine_tuning_of_a_saved_model(tiny_config, tmp_path):
    base = trainer_for(tiny_config(max_steps=3))
    base.fit()
    base_folder = base.save_model(tmp_path / "base")
    tokens = torch.randint(0, 320, (2, 16))

    lora = trainer_for(tiny_config(init_from=str(base_folder), lora_rank=4, lora_targets=["wq", "wv", "w2"],
                                   max_steps=5, out_dir=str(tmp_path / "lora")))
    assert lora.evaluate() == pytest.approx(base.evaluate(), abs=1e-6)  # starts where the base model ended
    lora.fit()
    adapters = lora.save_model(tmp_path / "lora" / "adapters")
    lora.model.eval()
    with torch.no_grad():
        expected = lora.model(tokens)
    restored = load_adapters(checkpoint.load(base_folder), adapters)
    with torch.no_grad():
        torch.testing.assert_close(restored(tokens), expected, rtol=0, atol=0)

    lora.cfg.merge = True
    merged = checkpoint.load(lora.save_model(tmp_path / "lora" / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens), expected, rtol=1e-5, atol=1e-5)


def test_qlora_trains_adapters_over_int4_weights(tiny_config, tmp_path):
    from llamalab.quantize.int4 import Int4Linear

    base = trainer_for(tiny_config(max_steps=3))
    base.fit()
    base_folder = base.save_model(tmp_path / "base")
    qlora = trainer_for(tiny_config(init_from=str(base_folder), lora_rank=4, lora_targets=["wq", "wv", "w2"],
                                    qlora="int4", max_steps=6, lr=3e-2, out_dir=str(tmp_path / "q")))
    assert isinstance(qlora.model.layers[0].attention.wq, Int4Linear)
    start = qlora.evaluate()
    qlora.fit()
    assert qlora.evaluate() < start
    assert (qlora.save_model(tmp_path / "q" / "adapters") / "adapter_model.safetensors").is_file()
    with pytest.raises(ConfigError, match="qlora trains LoRA adapters"):
        tiny_config(qlora="int8")


def test_bad_settings_are_one_clear_error(tiny_config, corpus, tmp_path):
    with pytest.raises(DataError, match="vocabulary of 320 ids but the model has vocab_size=256"):
        trainer_for(tiny_config(model=dict(dim=32, n_layers=1, n_heads=4, vocab_size=256)))
    with pytest.raises(ConfigError, match="seq_len=64 exceeds the model's max_seq_len=32"):
        trainer_for(tiny_config(seq_len=64, model=dict(dim=32, n_layers=1, n_heads=4, max_seq_len=32)))
    with pytest.raises(DataError, match="needs at least"):
        trainer_for(tiny_config(batch_size=100000))
    with pytest.raises(DataError, match="no prepared data"):
        trainer_for(tiny_config(data=str(tmp_path)))
    with pytest.raises(ConfigError, match="no model given"):
        trainer_for(tiny_config(model={}))
    with pytest.raises(ConfigError, match="unknown model field"):
        tiny_config(model=dict(dims=32))
    with pytest.raises(ConfigError, match="merge"):
        tiny_config(merge=True)


@pytest.mark.gpu
def test_bf16_compiled_training_on_a_gpu_records_mfu(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=20, device="cuda", dtype="bfloat16", compile=True, lr=2e-2)
    torch.manual_seed(cfg.seed)
    trainer = build_trainer(cfg, torch.device("cuda"))
    trainer.fit()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert all(0 < r["mfu"] < 1 for r in records if "mfu" in r) or trainer.peak_flops is None
    assert checkpoint.load(trainer.save_model(tmp_path / "model")).args.dim == 32
