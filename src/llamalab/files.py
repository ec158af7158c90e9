"""Files every area writes and reads: a file or folder written under a temporary name and renamed into place (a crash
leaves no partial output), and JSON objects read with errors that name the file."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llamalab.errors import LlamalabError, OutputError

_TEMPORARY = re.compile(r"\..+\.tmp-(\d+)")  # what atomic_output names its temporaries: .NAME.tmp-PID


@contextmanager
def atomic_output(dst: str | Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `dst` to write to; on success rename it to `dst`, on error delete it.

    A file replaces an existing regular file (through a symlink: the file it points to); a folder is only
    written where no non-empty folder exists, so that no user data is ever deleted. Devices, FIFOs and
    sockets (`/dev/null`) are refused, never replaced. The folder is fsynced after the rename.
    """
    dst = writable_destination(Path(dst), folder)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    _remove(tmp)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if folder and dst.is_dir():
            dst.rmdir()  # empty (checked above); os.replace cannot put a folder over a folder
        os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_folder(dst.parent)


def writable_destination(dst: Path, folder: bool) -> Path:
    """The path to rename the output onto: `dst`, or the file its symlink points to; OutputError when
    what is there is not ours to replace."""
    if dst.is_symlink():
        dst = dst.resolve()
    if not (dst.exists() or dst.is_symlink()):
        return dst
    mode = dst.lstat().st_mode
    if folder:
        if not stat.S_ISDIR(mode):
            raise OutputError(f"{dst} is a file; this format writes a folder, give a folder name")
        if any(dst.iterdir()):
            raise OutputError(f"{dst} already exists and is not empty; choose a new folder or delete it first")
    elif stat.S_ISDIR(mode):
        raise OutputError(f"{dst} is a folder; give a file name for this format")
    elif not stat.S_ISREG(mode):
        raise OutputError(f"{dst} is a device, FIFO or socket, not a file; give the name of a regular file")
    return dst


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON (with a final newline) at `path`, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_json(path: str | Path, error: type[LlamalabError] = LlamalabError, default: dict | None = None) -> dict:
    """The JSON object in a file; `default` when the file does not exist (None: an error); errors are `error`s."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if default is None:
            raise error(f"{path} is missing") from None
        return dict(default)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def remove_abandoned_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries in `folder` that a killed process left (their PID no longer runs); return them."""
    removed = []
    for path in folder.iterdir() if folder.is_dir() else ():
        if (m := _TEMPORARY.fullmatch(path.name)) and not _running(int(m.group(1))):
            _remove(path)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
