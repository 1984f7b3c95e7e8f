"""The outcome of a case of :mod:`bad_input_probe`: what its run left in its folder and on
stderr, classified as the probe's docstring describes."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from probe_case import Case

NONFINITE = re.compile(rb"(?<![A-Za-z_\"'])(NaN|-?Infinity)(?![A-Za-z_\"'])")
NONFINITE_CSV = re.compile(rb"(^|,)(nan|-?inf)(,|\r?$)", re.M | re.I)


def snapshot(d: Path) -> dict[str, tuple]:
    """Every regular file and folder under ``d`` (not through links): kind, mode, content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(d))
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_ISREG(st.st_mode):
                try:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError:
                    digest = "unreadable"
                out[rel] = ("file", stat.S_IMODE(st.st_mode), digest)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
    return out


def _nonfinite_tensor(p: Path, rel: str) -> str | None:
    """A float tensor of the safetensors file ``p`` holding a non-finite number, or the file torn."""
    try:
        import torch
        from safetensors.torch import load_file

        for name, t in load_file(str(p)).items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                return f"{rel}: tensor {name!r} is not finite"
    except Exception as e:  # noqa: BLE001 - a torn file is another problem, reported as such
        return f"{rel}: unreadable safetensors ({type(e).__name__})"
    return None


def nonfinite(d: Path, before: dict, after: dict) -> str | None:
    """A new or changed output holding a non-finite number: JSON's NaN/Infinity, or a tensor's."""
    for rel, (kind, _, _) in after.items():
        if kind != "file" or before.get(rel) == after[rel]:
            continue
        p = d / rel
        if p.suffix in (".json", ".jsonl", ".csv"):
            pattern = NONFINITE_CSV if rel.endswith(".csv") else NONFINITE
            if pattern.search(p.read_bytes()):
                return f"{rel}: non-finite number"
        elif p.suffix == ".safetensors" and (why := _nonfinite_tensor(p, rel)) is not None:
            return why
    return None


def modes(before: dict, after: dict) -> str | None:
    """A new file not 0644 or a new folder not 0755 (lock files and bytecode aside)."""
    for rel, (kind, mode, _) in after.items():
        if rel in before or rel.endswith(".lock") or "__pycache__" in rel:
            continue
        want = 0o644 if kind == "file" else 0o755
        if mode != want:
            return f"{rel}: mode {mode:o}, expected {want:o}"
    return None


def names_something(line: str, case: Case, argv: list[str]) -> bool:
    """The error line names the case's ``names`` text, else an option, a path or an argument given."""
    if case.names is not None:
        return case.names in line
    if re.search(r"(?<![\w-])--[a-z][a-z0-9-]*", line):
        return True
    if re.search(r"[\w./-]+\.(jsonl|json|yaml|yml|safetensors|csv|txt|sqlite|gz)\b|\w/\w", line):
        return True  # a file or folder path
    given = [a.rstrip("/") for a in argv if not a.startswith("-") and len(a.rstrip("/")) > 2]
    return any(re.search(r"(?<![\w-])" + re.escape(a) + r"(?![\w-])", line) for a in given)


def classify_api(case: Case, api: dict | None) -> tuple[str, str | None]:
    """The outcome of an API call from the result its child wrote (None: the child died)."""
    if api is None:
        return "traceback", "the call crashed the process"
    if api["status"] == "raised":
        if not api["clean"]:
            return "traceback", f"{api['type']}: {api['message'][:200]}"
        if case.names is not None and case.names not in api["message"]:
            return ("unnamed" if case.expect == "error" else "refused-valid"), api["message"][:200]
        return ("error" if case.expect == "error" else "refused-valid"), None
    if not api["finite"]:
        return "silent", f"returned a non-finite value: {api['repr']}"
    if case.expect == "error":
        return "silent", f"returned {api['repr']}"
    return "right", None


def _classify_refusal(case: Case, err: str, argv: list[str], before: dict, after: dict) -> tuple[str, str | None]:
    """The outcome of a run that exited nonzero."""
    changed = [rel for rel, v in before.items() if after.get(rel) != v and not rel.endswith(".lock")]
    if changed:
        return "destroyed", f"changed or removed: {changed[:3]}"
    if case.expect == "ok":
        return "refused-valid", None
    last = [line for line in err.splitlines() if line.strip()][-1:] or [""]
    if not last[0].startswith("error:") and not last[0].startswith("interrupted"):
        return "unnamed", "last stderr line is not one 'error:' line"
    if not names_something(last[0], case, argv):
        return "unnamed", None
    return "error", None


def classify_cli(
    case: Case, d: Path, code: int, err: str, out: str, argv: list[str], before: dict, after: dict
) -> tuple[str, str | None]:
    """The outcome of a CLI run that ended (with exit status ``code``) and its reason, if any."""
    if "Traceback (most recent call last)" in err:
        return "traceback", None
    if code != 0:
        return _classify_refusal(case, err, argv, before, after)
    if (why := nonfinite(d, before, after)) is not None:
        return "silent", why
    if case.expect == "error":
        return "silent", None
    if (why := modes(before, after)) is not None:
        return "wrong", why
    if case.check is not None and (why := case.check(d, out)) is not None:
        return "wrong", why
    return "right", None
