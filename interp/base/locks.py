"""One writer per output: an advisory lock on ``<out>.lock`` for as long as a run appends to
``out`` (a JSONL file it resumes, a folder it checkpoints into).

The lock is ``flock`` (exclusive, non-blocking) on the sidecar file, so a second run on the
same output fails at once with one line naming the holder's pid, and the operating system
drops the lock when its holder dies: a run killed with ``kill -9`` never leaves a stale lock
in the way of the run that resumes it. The sidecar is removed when the lock is released.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interp.base.cli import InputError


def lock_path(out: str | Path) -> Path:
    """Where the lock of ``out`` (a file or a folder) lives: ``<out>.lock`` beside it."""
    out = Path(out).resolve()  # one lock whichever way (relative, symlinked) the output is named
    return out.with_name(out.name + ".lock")


@contextmanager
def output_lock(out: str | Path, remedy: str = "wait for it or use another --out") -> Iterator[None]:
    """Hold the lock of ``out`` for the block; :class:`InputError` (ending with ``remedy``) when another live run holds it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, out, remedy)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiting run then finds no file to lock, or a new one
        os.close(fd)


def _acquire(path: Path, out: str | Path, remedy: str) -> int:
    """An fd holding the exclusive lock on ``path``, the file now at that name."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"{out}: another run is writing it (pid {holder}); {remedy}") from None
        # The holder may have released and removed the file between our open and flock: then
        # we locked an orphan, and must lock whatever file now has the name.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
