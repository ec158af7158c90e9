"""torch.compile's caches in a folder the user places, reused by every later process (and machine) pointed at it.

Inside the folder: `inductor/` is inductor's own cache directory (`TORCHINDUCTOR_CACHE_DIR`: FX graphs, AOTAutograd
entries, compiled kernels, autotuning results, Triton's binaries) and `*.artifacts` are PyTorch's portable "mega-cache"
(`torch.compiler.save_cache_artifacts`): one file per compiled step holding all of its cache entries, loaded into
`inductor/` by `use_compile_cache` — a file can be copied to a fresh machine (a GPU lent for minutes) to skip the
compilation there. Dynamo traces again in each process (seconds: `compiled.compile_blocks_once` traces one block).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from llamalab.errors import OutputError
from llamalab.files import atomic_output

ENVIRONMENT = "LLAMALAB_COMPILE_CACHE"  # the default folder, when set
SUFFIX = ".artifacts"


def default_compile_cache() -> Path:
    """$LLAMALAB_COMPILE_CACHE, else ~/.cache/llamalab/compile (under $XDG_CACHE_HOME when that is set)."""
    if os.environ.get(ENVIRONMENT):
        return Path(os.environ[ENVIRONMENT]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llamalab" / "compile"


def use_compile_cache(folder: str | os.PathLike) -> Path:
    """Point inductor's caches at `folder`/inductor for the rest of the process and load the portable artifacts saved
    there; the folder's path. OutputError when it cannot be made or written."""
    folder = Path(folder).expanduser().absolute()
    try:
        (folder / "inductor").mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputError(f"compile cache folder {str(folder)!r} is not writable ({e.strerror or e}); "
                          "give another with --compile-cache") from None
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(folder / "inductor"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
        os.environ.pop("TRITON_CACHE_DIR", None)  # Triton's binaries go under the inductor folder
        from torch._inductor.utils import clear_caches  # paths inductor derived from the old folder

        clear_caches()
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        try:
            torch.compiler.load_cache_artifacts(path.read_bytes())
        except Exception:  # noqa: BLE001 — a file of another torch version, or cut short: recompiling is the fallback
            continue
    return folder


def save_compile_cache(folder: str | os.PathLike, key: str) -> Path | None:
    """Write the cache entries this process made or loaded as `folder`/<hash of key>.artifacts (atomically); the path,
    or None when there is nothing to save. `key` names what was compiled (model shape, dtype, device, batch)."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0]:
        return None
    path = Path(folder).expanduser().absolute() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}{SUFFIX}"
    with atomic_output(path) as temporary:
        Path(temporary).write_bytes(saved[0])
    return path
