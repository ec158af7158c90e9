"""Issue 21's training faults: SIGTERM saves like Ctrl-C; a corrupt newest checkpoint falls back; a kill
mid-save leaves no temporary behind for ever."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from llamalab.errors import ConfigError
from llamalab.train.run import stop_on_ctrl_c
from llamalab.train.snapshots import checkpoint_path, saved_steps
from llamalab.train.trainer import build_trainer


def test_sigterm_saves_a_checkpoint_and_stops_after_the_step(tiny_config, tmp_path):
    torch.manual_seed(0)
    trainer = build_trainer(tiny_config(max_steps=50), torch.device("cpu"))
    train_step = trainer.train_step

    def step_then_sigterm():
        loss = train_step()
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill`, Slurm and docker stop send
        return loss

    trainer.train_step = step_then_sigterm
    with stop_on_ctrl_c(trainer, announce=False):
        summary = trainer.fit()
    assert summary["interrupted"] and summary["step"] == 2
    assert saved_steps(tmp_path / "run" / "checkpoints") == [2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before_with_a_warning(tiny_config, tmp_path, capsys):
    torch.manual_seed(0)
    build_trainer(tiny_config(max_steps=4, save_every=2, keep_last=3), torch.device("cpu")).fit()
    folder = tmp_path / "run" / "checkpoints"
    assert saved_steps(folder) == [2, 4]
    newest = checkpoint_path(folder, 4)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # the disk died mid-write
    resumed = build_trainer(tiny_config(max_steps=6, save_every=2, keep_last=3, resume=True), torch.device("cpu"))
    summary = resumed.fit()
    assert summary["resumed_from"] == 2 and summary["step"] == 6
    assert "skipping the unreadable checkpoint of step 4" in capsys.readouterr().out


def test_a_save_cleans_up_what_a_killed_save_left(tiny_config, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = folder / f".step_0000007.pt.tmp-{int(dead.stdout)}"
    leftover.write_bytes(b"half a checkpoint")
    torch.manual_seed(0)
    build_trainer(tiny_config(max_steps=2), torch.device("cpu")).fit()
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000002.pt"]


@pytest.mark.parametrize("setting", [{"seed": 2**70}, {"seed": -(2**64)}, {"lr": float("nan")},
                                     {"grad_clip": float("inf")}, {"beta2": "0.95"}])
def test_a_seed_torch_cannot_take_or_a_non_finite_number_is_a_config_error(tiny_config, setting):
    """Issue 21's --seed 1e20 for training: 2**70 overflowed in torch.manual_seed when the run started."""
    with pytest.raises(ConfigError, match=next(iter(setting))):
        tiny_config(**setting)
