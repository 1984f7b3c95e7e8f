"""Resumable outputs: what a resumed writer's file already holds, and the settings bound to it.

A JSONL output that a run appends to carries a provenance sidecar ``<out>.provenance.json``
recording the settings that wrote it; a resume under other settings (or onto a file with no
readable sidecar) is refused, so two experiments never mix in one file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from interp.base.atomic import atomic_path, write_json_atomic
from interp.base.jsonl import RecordError, repair_jsonl_tail
from interp.base.provenance import differing_keys, provenance

R = TypeVar("R")


def read_resumable(
    path: str | Path, read: Callable[..., list[R]], check: Callable[[list[R]], None] | None = None
) -> list[R]:
    """The records a resumed writer's output already holds, read by ``read`` (:func:`read_answers`,
    :func:`read_judged`). Every line is checked, and the records by ``check`` (which raises to
    refuse them), before the file is touched; only then is its tail repaired
    (:func:`repair_jsonl_tail`). A missing file holds none."""
    if not Path(path).exists():
        return []
    rows = read(path, torn_tail=True)
    if check is not None:
        check(rows)
    repair_jsonl_tail(path)
    return rows


def sidecar_path(out: str | Path) -> Path:
    """Where the provenance of a JSONL artifact lives: ``<out>.provenance.json``."""
    out = Path(out)
    return out.with_name(out.name + ".provenance.json")


@contextmanager
def bound_output(out: str | Path, settings: dict[str, Any], **fields: Any) -> Iterator[None]:
    """Record ``settings`` (and provenance ``fields``) beside ``out`` for the block; refuse to
    append under other settings.

    A resumed run must continue the run that wrote ``out``: different settings would mix two
    experiments in one file without a trace. When the block fails before it appends a row,
    the sidecar is put back as it was (or removed), so that it always describes ``out``.
    """
    side = sidecar_path(out)
    settings = check_bound(out, settings)
    previous = side.read_bytes() if side.exists() else None
    size = _size(out)
    write_json_atomic(side, provenance(settings=settings, **fields))
    try:
        yield
    except BaseException:
        if _size(out) == size:
            if previous is None:
                side.unlink(missing_ok=True)
            else:
                with atomic_path(side) as tmp:
                    tmp.write_bytes(previous)
        raise


def check_bound(out: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Refuse a non-empty ``out`` whose sidecar records other ``settings`` (or none); return
    ``settings`` as stored. Reads only: call it before anything repairs or rewrites ``out``."""
    settings = json.loads(json.dumps(settings))  # compare as they are stored (tuples -> lists)
    if _size(out):
        before = _sidecar_settings(out)
        if before != settings:
            diff = differing_keys(before, settings)
            was = "; ".join(f"{k} {before.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
            raise RecordError(
                f"{out}: written with other settings ({', '.join(diff)} differ: {was}; see {sidecar_path(out).name}); use another output file, or remove it to start afresh"
            )
    return settings


def _sidecar_settings(out: Path | str) -> dict[str, Any]:
    """The settings the sidecar of a non-empty ``out`` records; refused when it has none to read.

    Without them the run that wrote ``out`` is unknown (another model's answers look the same),
    and resuming would append to it and relabel it as this run's.
    """
    side = sidecar_path(out)
    try:
        settings = json.loads(side.read_text(encoding="utf-8")).get("settings")
        why = None if isinstance(settings, dict) else f"{side.name} records no settings"
    except FileNotFoundError:
        why = f"it has no provenance sidecar {side.name}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, RecursionError):
        why = f"its provenance sidecar {side.name} is unreadable"
    if why:
        raise RecordError(
            f"{out}: holds records, but {why} to tell which run wrote them, so it cannot be resumed; use another output file, or remove it to start afresh"
        )
    return settings


def _size(path: str | Path) -> int:
    """Bytes in ``path``; 0 when it does not exist."""
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        return 0
