"""Running one case of :mod:`bad_input_probe`: a fresh copy of the good inputs, the case's
setups, its CLI or API call in a child process under a timeout, and its classified outcome."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probe_case import ROOT, Case, Setup
from probe_outcome import classify_api, classify_cli, snapshot

KEY = "sk-test-0123456789abcdef"

# Set by the runner before the pool forks: the cases, the servers' URLs, the good inputs' folder,
# the temporary folder and whether to run real processes.
STATE: dict[str, Any] = {}


def _child_cli(case: Case, d: Path, argv: list[str], env: dict) -> None:
    """In the forked child: become ``python -m case.cli argv`` in ``d``."""
    import runpy

    os.chdir(d)
    os.environ.update(env)
    sys.argv = [case.cli, *argv]
    code = 0
    try:
        runpy.run_module(case.cli, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter would print
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _finite(value: Any) -> bool:
    """False for a non-finite float, or a float tensor or dict of floats holding one."""
    try:
        import torch

        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return bool(torch.isfinite(value).all())
        if isinstance(value, dict):
            return all(math.isfinite(v) for v in value.values() if isinstance(v, float))
    except Exception:  # noqa: BLE001 - a value that cannot be inspected counts as finite
        pass
    return True


def _child_api(case: Case, d: Path, env: dict) -> None:
    """In the forked child: make the case's call in ``d`` and write what came of it."""
    os.chdir(d)
    os.environ.update(env)
    result: dict[str, Any]
    try:
        value = case.call(d)
        result = {"status": "returned", "repr": repr(value)[:300], "finite": _finite(value)}
    except BaseException as e:  # noqa: BLE001 - classified by the parent
        traceback.print_exc()
        result = {"status": "raised", "type": type(e).__name__, "message": str(e)}
        result["clean"] = isinstance(e, (ValueError, OSError)) and "\n" not in str(e).strip()
    (d / ".api_result.json").write_text(json.dumps(result))
    sys.stderr.flush()
    os._exit(0)


def _redirect_into(d: Path) -> None:
    """In a fresh child: stdin from /dev/null, stdout and stderr to files in ``d``, umask 022."""
    out = os.open(d / ".stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(d / ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.umask(0o022)


def run_forked(target: Callable[..., None], args: tuple, d: Path, timeout: float) -> tuple[int | None, float]:
    """Fork, run ``target(*args)`` with stdout/stderr to files in ``d``; kill the group on timeout."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            _redirect_into(d)
            target(*args)
        finally:
            os._exit(99)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - start
        if time.monotonic() - start > timeout:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None, time.monotonic() - start
        time.sleep(0.02)


def _run_subprocess(case: Case, d: Path, argv: list[str], env: dict, timeout: float) -> tuple[int | None, float]:
    """Run ``python -m case.cli argv`` in ``d``; kill its group on timeout."""
    start = time.monotonic()
    with open(d / ".stdout", "wb") as out, open(d / ".stderr", "wb") as err:
        p = subprocess.Popen(
            [sys.executable, "-m", case.cli, *argv],
            cwd=d,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lambda: os.umask(0o022),
        )
        try:
            return p.wait(timeout=timeout), time.monotonic() - start
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return None, time.monotonic() - start


def _take(path: Path, default: str = "") -> str:
    """The text of ``path`` (``default`` if it is not there), and the file removed."""
    text = path.read_text(errors="replace") if path.exists() else default
    path.unlink(missing_ok=True)
    return text


def prerun(cli: str, argv: list[str]) -> Setup:
    """Run a CLI in the case's folder first (an earlier run whose output the case resumes)."""

    def build(d: Path) -> None:
        code, _ = run_forked(_child_cli, (Case("prerun", "", cli), d, argv, {"OMP_NUM_THREADS": "1"}), d, 300)
        err = _take(d / ".stderr")
        _take(d / ".stdout")
        if code != 0:
            raise RuntimeError(f"the earlier run of {cli} failed ({code}): {err[-300:]}")

    return build


def _expand(text: str) -> str:
    """``text`` with ``{silent}``, ``{fake}``, ... replaced by the servers' URLs."""
    for k, v in STATE.get("urls", {}).items():
        text = text.replace("{" + k + "}", v)
    return text


def _env(case: Case, d: Path) -> dict[str, str]:
    """The case's environment: offline, one thread, a key, the refused server unless it names one."""
    return {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": STATE["urls"]["refused"],
        "EM_JUDGE_CACHE": str(d / "judge_cache.sqlite"),
        "EM_GGUF_CACHE": "off",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **{k: _expand(v) for k, v in case.env.items()},
    }


def _set_up(case: Case, d: Path) -> str | None:
    """Apply the case's setups to ``d``; why they failed, if they did."""
    try:
        for s in case.setup:
            s(d)
    except Exception as e:  # noqa: BLE001 - a broken case, not a finding
        return f"setup failed: {type(e).__name__}: {e}"
    return None


def _execute(case: Case, d: Path, argv: list[str], env: dict) -> tuple[int | None, float]:
    """Run the case's call or CLI in ``d``, the way the runner was told to."""
    if case.cli == "api":
        return run_forked(_child_api, (case, d, env), d, case.timeout)
    if STATE["subprocess"]:
        return _run_subprocess(case, d, argv, env, case.timeout)
    return run_forked(_child_cli, (case, d, argv, env), d, case.timeout)


def _record(
    case: Case, argv: list[str], outcome: str, why: str | None, code: int | None, seconds: float, err: str
) -> dict:
    """The case's entry in the results file."""
    tail = [line for line in err.splitlines() if line.strip()][-3:]
    return {
        "id": case.id,
        "family": case.family,
        "cli": case.cli,
        "argv": [a if len(a) <= 200 else a[:200] + f"... ({len(a):,} characters)" for a in argv],
        "expect": case.expect,
        "outcome": outcome,
        "ok": outcome == ("error" if case.expect == "error" else "right"),
        "why": why,
        "exit": code,
        "seconds": round(seconds, 2),
        "bound": case.bound,
        "stderr_tail": "\n".join(tail)[-600:],
    }


def run_case(index: int) -> dict:
    """Run case ``index`` of ``STATE["cases"]`` in a fresh copy of the good inputs; its record."""
    case: Case = STATE["cases"][index]
    work = Path(tempfile.mkdtemp(prefix="probe_", dir=STATE["tmp"]))
    d = work / "case"
    shutil.copytree(STATE["base"], d, symlinks=True)
    env = _env(case, d)
    argv = [_expand(a) for a in case.argv]
    setup_error = _set_up(case, d)
    before = snapshot(d)
    code, seconds = (-1, 0.0) if setup_error else _execute(case, d, argv, env)
    err = _take(d / ".stderr", setup_error or "")
    out = _take(d / ".stdout")
    result = d / ".api_result.json"
    api = json.loads(_take(result)) if case.cli == "api" and result.exists() else None
    after = snapshot(d)
    why = None
    if setup_error:
        outcome, why = "setup-failed", setup_error
    elif code is None or (case.bound is not None and seconds > case.bound):
        outcome = "hang"
    elif case.cli == "api":
        outcome, why = classify_api(case, api)
    else:
        outcome, why = classify_cli(case, d, code, err, out, argv, before, after)
    shutil.rmtree(work, ignore_errors=True)
    return _record(case, argv, outcome, why, code, seconds, err)
