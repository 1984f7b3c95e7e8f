"""The files a command is given, checked before any work: a bad path, a folder where a file
belongs, text that is not UTF-8, a safetensors file that is not one, each as one
:class:`InputError` line naming the option or file, and the line where there is one.

Writability is asked of the operating system (``os.access``), so it holds for the user the
command runs as: root may write where others may not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from interp.base.cli import InputError


def input_file(path: str | Path, option: str) -> Path:
    """``path`` as an existing, readable regular file (``option`` names it in errors)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{option} {p}: no such file")
    if p.is_dir():
        raise InputError(f"{option} {p}: is a directory, expected a file")
    if p.is_char_device() or p.is_block_device():  # /dev/zero never ends, /dev/urandom is no text
        raise InputError(f"{option} {p}: a device, expected a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{option} {p}: not readable")
    return p


def input_dir(path: str | Path, option: str) -> Path:
    """``path`` as an existing, readable folder."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{option} {p}: no such folder")
    if not p.is_dir():
        raise InputError(f"{option} {p}: is a file, expected a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        raise InputError(f"{option} {p}: not readable")
    return p


def output_file(path: str | Path, option: str = "--out", inputs: Iterable[str | Path | None] = ()) -> Path:
    """``path`` as a file this run may create or write: not a folder, not one of ``inputs``,
    under a folder that exists (or can be made) and is writable."""
    _not_empty(path, option)
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p}: is a directory, expected a file")
    if p.exists() and not p.is_file():  # a device or a pipe: /dev/full never takes a row, /dev/zero never ends
        raise InputError(f"{option} {p}: not a regular file; write to a file")
    # Path() drops a trailing slash: "newdir/" would become a file named newdir.
    if str(path).endswith(("/", os.sep)):
        raise InputError(f"{option} {path}: names a folder (it ends with '/'), expected a file")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise InputError(f"{option} {p}: not writable")
        for other in inputs:
            if other is not None and Path(other).exists() and os.path.samefile(p, other):
                raise InputError(f"{option} {p}: is also an input of this command; write to another file")
    _creatable(p, option)
    return p


def output_dir(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a folder this run may create or write into."""
    _not_empty(path, option)
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{option} {p}: is a file, expected a folder")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"{option} {p}: folder not writable")
        return p
    _creatable(p, option)
    return p


def _not_empty(path: str | Path, option: str) -> None:
    """An empty path is Path("."), the working folder: never what was meant."""
    if not str(path).strip():
        raise InputError(f"{option}: empty path (it would name the working folder)")


def _creatable(p: Path, option: str) -> None:
    """The nearest existing folder above ``p`` is a writable folder (not a file)."""
    above = p.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise InputError(f"{option} {p}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise InputError(f"{option} {p}: folder {above} not writable")


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content; a folder, an unreadable file or a bad byte is one line naming the file (and line)."""
    p = Path(path)
    if p.is_char_device() or p.is_block_device():  # /dev/zero would fill the memory, never a line
        raise InputError(f"{p}: a device, expected a file")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a file") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(p, data[: e.start].count(b"\n") + 1, e) from None


def not_utf8(path: str | Path, line: int, error: UnicodeDecodeError) -> InputError:
    """The error for a byte that is not UTF-8, naming the file and line."""
    return InputError(f"{path}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x})")


def read_safetensors(path: str | Path, noun: str = "safetensors file") -> tuple[dict[str, Any], dict[str, str]]:
    """All tensors of a safetensors file and its metadata; anything else (a folder, an empty,
    truncated or pickle file) is one line naming the file. Never unpickles."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such {noun}")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a {noun}")
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as e:
        raise InputError(f"{p}: not a {noun} ({str(e).strip() or 'unreadable'})") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror or e})") from None
