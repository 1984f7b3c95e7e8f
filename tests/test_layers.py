"""The house has floors: every import, at module level or inside a function, goes to the same
floor or a lower one, and the import graph has no circle.

    0 base     interp.base.*: chat spans, records, atomic writes, provenance, domains, loading
    1 core     interp.*: hooks, positions, caching, directions, comparison, steering, backends
    2 stages   finetune.* (training) and eval.* (measurement), which do not import each other
    3 chains   the organism world (finetune.organism.*), interp.extract, interp.sweep,
               interp.cross_domain: they drive the stages below through their public functions

A lower floor reaches what stands above it (the ``organism:`` models, the named judges, the
monitor's measures) only through :mod:`interp.base.plugins`, whose entry points pyproject
declares. A module path in a string ("finetune.organism" or "finetune.organism:load_named",
what ``import_module`` or a plugin table would load) counts as an import here, so a hidden
arrow up fails like a written one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "finetune", "eval")
# Longest prefix wins.
FLOORS = {
    "interp.base": 0,
    "interp": 1,
    "finetune": 2,
    "eval": 2,
    "finetune.organism": 3,
    "interp.extract": 3,
    "interp.extract_args": 3,
    "interp.sweep": 3,
    "interp.cross_domain": 3,
}


def floor(module: str) -> int:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    return FLOORS[max(prefixes, key=len)]


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


# A whole string that is a project module path, optionally with ":attr".
# (At least one dot: a bare "eval" is a logger's name.)
MODULE_STRING = re.compile(r"^(?:interp|finetune|eval)(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?$")


def imports(name: str, path: Path, known: set[str], source: str | None = None, strings: bool = True) -> set[str]:
    """The project modules ``path`` imports anywhere in its code, and with ``strings`` those it
    names in a string (resolved to known modules)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if (
            strings
            and isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and MODULE_STRING.match(node.value)
        ):
            targets = [node.value.partition(":")[0]]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(strings: bool = True) -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known, strings=strings) for name, path in mods.items()}


def test_every_import_goes_down_or_sideways():
    bad = []
    for source, targets in graph().items():
        for target in targets:
            if floor(target) > floor(source):
                bad.append(f"{source} (floor {floor(source)}) imports {target} (floor {floor(target)})")
            elif floor(source) == floor(target) == 2 and source.split(".")[0] != target.split(".")[0]:
                bad.append(f"{source} imports {target}: training and measurement stand side by side")
    assert not bad, "\n".join(sorted(bad))


def test_the_import_graph_has_no_circle():
    # Imports only: a package that loads its own submodules by name at run time (the backends)
    # is a lookup within one floor, not a circle.
    g = graph(strings=False)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_the_floors_cover_the_base_layer():
    """The base layer holds what the issue named, and it imports no stage at all."""
    g = graph()
    base = {m for m in g if floor(m) == 0}
    assert {
        "interp.base.chat",
        "interp.base.records",
        "interp.base.atomic",
        "interp.base.provenance",
        "interp.base.domains",
        "interp.base.loading",
    } <= base
    assert all(floor(t) == 0 for m in base for t in g[m])


def test_a_module_path_in_a_string_counts_as_an_import():
    planted = 'import importlib\n\ndef load():\n    return importlib.import_module("finetune.organism").load_named\n'
    assert "finetune.organism" in imports(
        "interp.base.loading", ROOT / "interp/base/loading.py", set(modules()), planted
    )
    plugin_table = 'JUDGES = {"organism": "finetune.organism.judge:OrganismJudge"}\n'
    assert "finetune.organism.judge" in imports("eval.judge", ROOT / "eval/judge.py", set(modules()), plugin_table)


def test_the_local_paths_load_without_the_api_client():
    # The OpenAI client serves the openai: specs only; a machine without it (the GPU image has
    # none) trains, generates, judges offline and extracts. A module-level import of it from
    # one of these CLIs stopped the real-organism run there once.
    import subprocess
    import sys

    code = (
        "import sys, interp.extract, interp.sweep, eval.generate, eval.judge, finetune.train; "
        "sys.exit('openai' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
