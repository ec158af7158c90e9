"""Write a file or a folder under a temporary name, then rename it into place: a crash leaves no partial output."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llamalab.errors import CheckpointError


@contextmanager
def atomic_output(dst: str | Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `dst` to write to; on success rename it to `dst`, on error delete it.

    A file replaces an existing file; a folder is only written where no non-empty folder exists,
    so that no user data is ever deleted.
    """
    dst = Path(dst)
    if folder and dst.is_dir() and any(dst.iterdir()):
        raise CheckpointError(f"{dst} already exists and is not empty; choose a new folder or delete it first")
    if folder and dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} is a file; this format writes a folder, give a folder name")
    if not folder and dst.is_dir():
        raise CheckpointError(f"{dst} is a folder; give a file name for this format")
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


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
