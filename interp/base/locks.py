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
def output_lock(
    out: str | Path, remedy: str = "wait for it or use another --out", wait: bool = False
) -> Iterator[None]:
    """Hold the lock of ``out`` for the block; :class:`InputError` (ending with ``remedy``) when another live run
    holds it, or with ``wait`` block until it is released (for short read-merge-write sections)."""
    path = lock_path(out)
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]  # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path, out, remedy, wait)
    except BaseException:
        _remove_empty(made)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiting run then finds no file to lock, or a new one
        os.close(fd)
        _remove_empty(made)  # a run that wrote nothing leaves no folder behind


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders made for a lock, deepest first, while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote there), or gone
            return


def _acquire(path: Path, out: str | Path, remedy: str, wait: bool) -> int:
    """An fd holding the exclusive lock on ``path``, the file now at that name."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a folder at that name, a read-only place
            raise InputError(
                f"{out}: cannot take its lock {path} ({e.strerror}); remove it if no run is writing {Path(out).name}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
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
