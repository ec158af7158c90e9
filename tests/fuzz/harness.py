"""The fuzz contract, shared by every surface: an input is either accepted or refused with one of our errors,
within a few seconds and a bounded amount of memory; never a traceback.

`bounded` enforces time with SIGALRM and memory with RLIMIT_AS (address space beyond what the process already
maps), so that an input that would make llamalab allocate gigabytes fails the test instead of the machine.
`COUNTS` records how many inputs each surface was fed (printed at the end of the session).
"""
from __future__ import annotations

import collections
import contextlib
import io
import resource
import signal

from llamalab.cli.main import main

COUNTS: collections.Counter = collections.Counter()  # surface -> inputs tried


class TooSlow(Exception):
    """The input took longer than the contract allows."""


def _mapped_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


@contextlib.contextmanager
def bounded(seconds: float = 10.0, extra_bytes: int = 2 * 2**30):
    """Raise TooSlow after `seconds`; make allocations past `extra_bytes` more address space fail (MemoryError)."""
    def expire(signum, frame):
        raise TooSlow(f"an input took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _mapped_bytes() + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_cli(argv: list[str], seconds: float = 20.0) -> tuple[int, str]:
    """Exit status and stderr of `llamalab argv` in this process, bounded; argparse's exits count as statuses."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), bounded(seconds):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
    return status, err.getvalue()


def assert_clean_exit(status: int, err: str, argv: list[str]) -> None:
    """Exit 0, or exit 2 with one error line from llamalab (argparse may print its usage above it)."""
    assert status in (0, 2), f"{argv}: exit {status}\n{err}"
    assert "Traceback" not in err, f"{argv}:\n{err}"
    if status == 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith("llamalab") and "error:" in last, f"{argv}:\n{err}"
