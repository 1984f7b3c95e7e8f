"""The tree keeps its style: ruff's linter and formatter, configured in pyproject.toml, and
files and functions short enough to read (400 and 60 lines outside the tests).

ruff is pinned in the test extra (a formatter release may format differently), so this test
fails on code a newcomer would be asked to reformat, not on a new release."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("ruff", reason="ruff is in the test extra: pip install -e '.[test]'")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    r = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, (
        f"ruff {' '.join(command)} (run it without --check to fix):\n{r.stdout[-3000:]}{r.stderr[-1000:]}"
    )


MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# Kept whole, each for its reason.
LONG_FUNCTIONS = {
    "finetune/sft.py:train": "the step order the GPU check verified reads top to bottom",
    "interp/engine/attention.py:_kernel": "a Triton kernel: one program, no calls to split into",
}


def project_files() -> list[Path]:
    skip = {"tests", "build", "notebooks"}
    return [
        p
        for p in ROOT.rglob("*.py")
        if not (set(p.relative_to(ROOT).parts[:-1]) & skip) and not any(part.startswith(".") for part in p.parts)
    ]


def test_no_file_over_400_lines_outside_the_tests():
    long = {
        str(p.relative_to(ROOT)): n for p in project_files() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"files over {MAX_FILE_LINES} lines (split them by job): {long}"


def test_no_function_over_60_lines_without_a_stated_reason():
    long = {}
    for p in project_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{p.relative_to(ROOT)}:{node.name}"
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[name] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {long}"
