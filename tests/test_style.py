"""The tree keeps its style: ruff's linter and formatter, configured in pyproject.toml.

ruff is pinned in the test extra (a formatter release may format differently), so this test
fails on code a newcomer would be asked to reformat, not on a new release."""

from __future__ import annotations

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
