"""JSONL files: read line by line with every bad line named, appended to safely, written atomically.

A row that does not parse is a :class:`RecordError` naming the file and line; a row cut short
by a crash mid-append (the last line, no newline, the start of an object) is told apart from
foreign text, so that a resumable writer cuts only that (:func:`repair_jsonl_tail`).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from interp.base.atomic import atomic_path
from interp.base.cli import InputError
from interp.base.paths import not_utf8

log = logging.getLogger(__name__)


class RecordError(InputError):
    """A bad row in a JSONL file; the message names the file, line and field."""


def iter_jsonl(path: str | Path, torn_tail: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a malformed line raises RecordError.
    A ``.gz`` file is read decompressed (the public EM datasets ship gzipped).

    With ``torn_tail``, a last line that has no newline and is the start of a row that does not
    parse (an append cut short by a crash) is skipped rather than refused: a resumable writer
    then cuts it off (:func:`read_resumable`).
    """
    path = Path(path)
    if path.is_char_device() or path.is_block_device():  # /dev/zero is one endless line
        raise RecordError(f"{path}: a device, expected a JSONL file")
    try:
        # bytes, so that a line that is not UTF-8 can be named
        f = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: is a directory, expected a JSONL file") from None
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        try:
            for lineno, raw in enumerate(f, 1):
                try:
                    obj = _parse_line(path, lineno, raw)
                except RecordError:
                    if torn_tail and _torn_row(raw):
                        return
                    raise
                if obj is not None:
                    yield lineno, obj
        except (gzip.BadGzipFile, EOFError) as e:
            raise RecordError(f"{path}: not a readable gzip file ({e})") from None


def _torn_row(raw: bytes) -> bool:
    """Whether a line that does not parse looks like a row cut short by a crash mid-append:
    the last line (no newline after it) and the start of a JSON object, not foreign text."""
    return not raw.endswith(b"\n") and raw.lstrip().startswith(b"{")


def _parse_line(path: Path, lineno: int, raw: bytes) -> dict[str, Any] | None:
    """The JSON object on one line, None for a blank line; anything else is a RecordError naming file and line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(str(not_utf8(path, lineno, e))) from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:  # a line of thousands of nested brackets
        raise RecordError(f"{path}:{lineno}: not a record (JSON nested too deeply)") from None
    except _DuplicateKey as e:  # which of the two values is meant? json.loads would keep the last silently
        raise RecordError(f"{path}:{lineno}: field '{e.args[0]}' appears twice in one object") from None
    except ValueError as e:  # an integer of more than 4300 digits, which Python will not convert
        raise RecordError(f"{path}:{lineno}: not a record ({e})") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    if "\\u" in line and _SURROGATE.search(line):  # an escape of half a UTF-16 pair: parses, but is no text
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError(
                f"{path}:{lineno}: holds a lone surrogate escape (half of a UTF-16 pair), not text"
            ) from None
    return obj


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def repair_jsonl_tail(path: str | Path) -> bool:
    """End ``path`` on a line break so that the next append starts a line of its own; True if it changed.

    An unfinished last line that parses (a file saved without the final newline) is kept and
    ended; the start of a row (a crash mid-append) is cut off; anything else is refused. Call
    it only on a file whose other lines have been checked (:func:`read_resumable`): it must
    never cut into a file that is not this writer's output.
    """
    path = Path(path)
    if not path.exists():
        return False
    with path.open("rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        start = data.rfind(b"\n") + 1
        try:
            complete = _parse_line(path, data[:start].count(b"\n") + 1, data[start:]) is not None
        except RecordError:
            if not _torn_row(data[start:]):
                raise
            complete = False
        if complete:
            f.write(b"\n")
        else:
            log.warning(
                "warning: %s: cut an unfinished last line (%d bytes) left by an interrupted run",
                path,
                len(data) - start,
            )
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    return True


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows and flush to disk, so a crash loses at most the row being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write all rows atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
