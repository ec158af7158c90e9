"""The atomic writer never replaces what is not a regular file, follows symlinks, and cleans up after kills."""
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoint_models import CONFIGS, random_model

from llamalab.checkpoint import save
from llamalab.cli.main import main
from llamalab.errors import OutputError
from llamalab.files import atomic_output, remove_abandoned_temporaries, writable_destination


@pytest.fixture(scope="module")
def debug_checkpoint(tmp_path_factory):
    return save(random_model(CONFIGS["gqa"]), tmp_path_factory.mktemp("atomic") / "m", format="native")


def test_dev_null_is_refused_before_anything_is_written():
    with pytest.raises(OutputError, match="device, FIFO or socket"):
        writable_destination(Path("/dev/null"), folder=False)


def test_a_fifo_is_refused_and_left_a_fifo(tmp_path):
    fifo = tmp_path / "out.gguf"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="FIFO"):
        with atomic_output(fifo) as tmp:
            tmp.write_bytes(b"weights")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]  # no temporary left


def test_a_socket_is_refused(tmp_path):
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(OutputError):
            with atomic_output(path) as tmp:
                tmp.write_bytes(b"x")
        assert stat.S_ISSOCK(path.lstat().st_mode)


def test_a_symlink_stays_a_link_and_its_target_gets_the_new_content(tmp_path):
    target = tmp_path / "real" / "model.gguf"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "model.gguf"
    link.symlink_to(target)
    with atomic_output(link) as tmp:
        tmp.write_bytes(b"new")
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_bytes() == b"new"


def test_convert_to_a_fifo_is_one_line_and_exit_2(tmp_path, capsys, debug_checkpoint):
    fifo = tmp_path / "out.gguf"
    os.mkfifo(fifo)
    assert main(["convert", str(debug_checkpoint), str(fifo), "--to", "gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "FIFO" in err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_temporaries_of_killed_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    abandoned = tmp_path / f".step_0000100.pt.tmp-{dead_pid}"
    abandoned.write_bytes(b"half a checkpoint")
    live = tmp_path / f".step_0000200.pt.tmp-{os.getpid()}"
    live.write_bytes(b"being written")
    kept = tmp_path / "step_0000050.pt"
    kept.write_bytes(b"a checkpoint")
    assert remove_abandoned_temporaries(tmp_path) == [abandoned]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, kept.name])


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_output(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"x")
    assert synced == [str(tmp_path.resolve())]
