"""Provenance recorded in every artifact: what produced it, from what, with which code."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import resource
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

_PACKAGES = ("torch", "transformers", "peft", "safetensors", "numpy", "emergent-misalignment-toolkit")


def package_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers (absent ones are skipped)."""
    out = {"python": platform.python_version()}
    for name in (*_PACKAGES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def data_hash(rows: Iterable[Any]) -> str:
    """sha256 over the canonical JSON of each row, in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def provenance(**fields: Any) -> dict[str, Any]:
    """The caller's fields plus package versions and a UTC timestamp."""
    return {
        **fields,
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far: a run's cost whatever else shares the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def differing_keys(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between what an output recorded and what a rerun has (a
    key missing on one side differs), sorted: what a refusal to resume names."""
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
