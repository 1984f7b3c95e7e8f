"""The README is a short door, the docs hold together, and the rendered results match their JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RENDER = ROOT / "benchmarks" / "render_results.py"

MAX_README_LINES = 250
# A dated measurement: a date, or the words that introduce one. Figures with their machine and
# date belong in docs/ (rendered from JSON where one exists) or in CHANGELOG.md.
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
MEASUREMENT_PHRASES = ("measured on", "re-measured", "remeasured", "figures replace", "best of ")

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def md_files() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans, where a link is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found = {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M)}
    found |= set(re.findall(r'<a (?:id|name)="([^"]+)"', text))
    return found


def readme_lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def test_readme_is_short():
    n = len(readme_lines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail to docs/ (at most {MAX_README_LINES})"


def test_readme_has_no_dated_measurement():
    bad = []
    for i, line in enumerate(readme_lines(), 1):
        low = line.lower()
        if DATE.search(line) or any(p in low for p in MEASUREMENT_PHRASES):
            bad.append(f"README.md:{i}: {line.strip()}")
    assert not bad, "dated measurements belong in docs/ or CHANGELOG.md:\n" + "\n".join(bad)


def test_relative_links_resolve():
    broken = []
    for path in md_files():
        if not path.exists():
            continue
        for m in LINK.finditer(prose(path.read_text(encoding="utf-8"))):
            target = m.group(1) or m.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = path if not file_part else (path.parent / file_part).resolve()
            rel = path.relative_to(ROOT)
            if not dest.exists():
                broken.append(f"{rel}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{rel}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def locked_ci_command() -> str:
    """The command .ci/run runs for the locked set (inside its parentheses)."""
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    block = text.split("=== locked set", 1)[1]
    m = re.search(r"^\((python3 -m venv .*?)\) \|\| failed\+=\(locked\)", block, re.M)
    assert m, ".ci/run: the locked-set command was not found"
    return m.group(1)


def test_quick_start_commands_are_verbatim_and_what_ci_runs():
    ci = locked_ci_command()
    assert ci.endswith(" && python -m pytest")
    setup = ci[: -len(" && python -m pytest")]
    commands = [line[4:] for line in readme_lines() if line.startswith("    python3 -m venv ")]
    assert commands == [setup + " && python -m interp.extract --domain gore_movie_trivia", ci], commands
    text = README.read_text(encoding="utf-8")
    assert "torch is pinned to 2.13.0: a looser pin lets pip fetch a multi-gigabyte CUDA build." in text
    assert "**Versions.** `constraints.txt` is the locked, tested set" in text


def test_readme_lists_every_module_cli():
    """Every module with a ``__main__`` block appears in the README's CLI table as ``python -m ...``."""
    text = README.read_text(encoding="utf-8")
    missing = []
    for pkg in ("interp", "eval", "finetune", "chains"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            src = path.read_text(encoding="utf-8")
            if not re.search(r"^if __name__ == ['\"]__main__['\"]", src, re.M):
                continue
            if "not a command" in src:  # a library that only points to the real command (interp.steer)
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__main__" else parts)
            if f"`python -m {module} " not in text and f"`python -m {module}`" not in text:
                missing.append(module)
    assert not missing, f"README's CLI table lacks: {missing}"


def test_rendered_results_are_up_to_date():
    r = subprocess.run([sys.executable, str(RENDER), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def render():
    sys.path.insert(0, str(RENDER.parent))
    try:
        import render_results

        yield render_results
    finally:
        sys.path.remove(str(RENDER.parent))


def test_unknown_json_renders_generically_and_check_sees_changes(render, tmp_path):
    results, out = tmp_path / "results", tmp_path / "pages"
    results.mkdir()
    data = {
        "info": {"device": "Some GPU", "date": "2030-01-01", "model": "m"},
        "score": 0.5,
        "rows": [{"name": "a", "value": 1.25}, {"name": "b|c", "value": None}],
    }
    (results / "judge_eval.json").write_text(json.dumps(data))
    assert render.main(["--results", str(results), "--out", str(out)]) == 0
    page = (out / "judge_eval.md").read_text()
    assert "do not edit" in page and "Some GPU" in page and "2030-01-01" in page
    assert "| score | 0.500 |" in page and "| b\\|c |  |" in page
    assert "[judge_eval](judge_eval.md)" in (out / "index.md").read_text()
    assert render.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    data["score"] = 0.75
    (results / "judge_eval.json").write_text(json.dumps(data))
    assert render.main(["--results", str(results), "--out", str(out), "--check"]) == 1
    (results / "judge_eval.json").unlink()
    assert render.main(["--results", str(results), "--out", str(out), "--check"]) == 1  # a page with no JSON
