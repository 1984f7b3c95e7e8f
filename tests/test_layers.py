"""The house has floors: every import, at module level or inside a function, goes to the same
floor or a lower one, and the import graph has no circle.

    0 base     interp/base/: chat spans, records, atomic writes, provenance, domains, loading,
               plugins: what every floor shares
    1 core     interp/: hooks, positions, caching, directions, comparison, steering, backends,
               the generation engine
    2 stages   finetune/ (training) and eval/ (measurement), which do not import each other
    3 chains   chains/: the organism world (chains.organism), the main job (chains.extract),
               the steering sweep (chains.sweep) and the cross-domain experiment
               (chains.cross_domain): they drive the stages below through their public functions

The floors are read from the tree, not from a table here: a package's ``__init__.py`` declares
``FLOOR = n``, and a module stands on the floor of its nearest enclosing package that declares
one (read by parsing, not importing). A package with no declaration anywhere up its path fails.

A lower floor reaches what stands above it (the ``organism:`` models, the named judges, the
monitor's measures, the main job behind ``python -m interp.extract``) only through
:mod:`interp.base.plugins`, whose entry points pyproject declares. A module path in a string
("chains.organism" or "chains.organism:load_named", what ``import_module`` or a plugin table
would load) counts as an import here, so a hidden arrow up fails like a written one.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "finetune", "eval", "chains")


def declared_floor(init: Path) -> int | None:
    """The ``FLOOR = n`` a package's ``__init__.py`` declares at module level, or None."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "FLOOR" for t in targets):
            assert isinstance(value, ast.Constant) and type(value.value) is int, f"{init}: FLOOR is not an int literal"
            return value.value
    return None


def declared_floors(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, int]:
    """Every package under ``packages`` that declares its floor, by dotted name."""
    out = {}
    for package in packages:
        for init in (root / package).rglob("__init__.py"):
            if (n := declared_floor(init)) is not None:
                out[".".join(init.relative_to(root).parent.parts)] = n
    return out


FLOORS = declared_floors()


def floor(module: str, floors: dict[str, int] | None = None) -> int:
    """The floor of ``module``'s nearest enclosing package (itself, if a package) that declares one."""
    floors = FLOORS if floors is None else floors
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if (package := ".".join(parts[:n])) in floors:
            return floors[package]
    raise AssertionError(f"{module}: no package on its path declares FLOOR (add FLOOR = n to its __init__.py)")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


# A whole string that is a project module path, optionally with ":attr".
# (At least one dot: a bare "eval" is a logger's name.)
MODULE_STRING = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?$")


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


def upward(g: dict[str, set[str]], floors: dict[str, int] | None = None) -> list[str]:
    """Every arrow of ``g`` that goes up a floor, or across between the two stages."""
    bad = []
    for source, targets in g.items():
        for target in targets:
            if floor(target, floors) > floor(source, floors):
                bad.append(f"{source} (floor {floor(source, floors)}) imports {target} (floor {floor(target, floors)})")
            elif floor(source, floors) == floor(target, floors) == 2 and source.split(".")[0] != target.split(".")[0]:
                bad.append(f"{source} imports {target}: training and measurement stand side by side")
    return sorted(bad)


def test_every_import_goes_down_or_sideways():
    bad = upward(graph())
    assert not bad, "\n".join(bad)


def test_every_package_declares_its_floor():
    """Each top-level package declares FLOOR, so every module has a floor; pyproject ships exactly these."""
    missing = [m for m in modules() if not any(m == p or m.startswith(p + ".") for p in FLOORS)]
    assert not missing, f"no FLOOR declared on the path of: {sorted(missing)}"
    assert all(p in FLOORS for p in PACKAGES), [p for p in PACKAGES if p not in FLOORS]
    assert set(FLOORS.values()) == {0, 1, 2, 3}, FLOORS
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert sorted(p.rstrip("*") for p in shipped["include"]) == sorted(PACKAGES)


def test_a_floor_is_read_from_the_nearest_declaring_package(tmp_path):
    """A module takes the floor of its nearest package that declares one; none up its path fails."""
    for init, text in {
        "house/__init__.py": "# floor 1\nFLOOR = 1\n",
        "house/stairs/__init__.py": "",
        "house/cellar/__init__.py": '"""Below."""\n\nFLOOR: int = 0\n',
        "shed/__init__.py": "X = 1\n",
    }.items():
        (tmp_path / init).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / init).write_text(text)
    floors = declared_floors(tmp_path, ("house", "shed"))
    assert floors == {"house": 1, "house.cellar": 0}
    assert floor("house", floors) == floor("house.stairs.step", floors) == 1
    assert floor("house.cellar", floors) == floor("house.cellar.wine", floors) == 0
    with pytest.raises(AssertionError, match="shed.tools: no package on its path declares FLOOR"):
        floor("shed.tools", floors)


def test_a_planted_upward_import_fails():
    """An arrow up, written or hidden in a string, and one between the stages, are each reported."""
    known = set(modules())
    plants = {
        # The lower floor naming the main job instead of reaching it through the plugin.
        "interp.extract": ("interp/extract.py", "from chains.extract import main\n"),
        "interp.base.loading": (
            "interp/base/loading.py",
            'import importlib\n\ndef load():\n    return importlib.import_module("chains.organism").load_named\n',
        ),
        "finetune.train": ("finetune/train.py", "def judge():\n    from eval.judge import make_judge\n"),
    }
    g = graph()
    before = set(upward(g))
    for name, (path, source) in plants.items():
        g[name] = g[name] | imports(name, ROOT / path, known, source)
    assert sorted(set(upward(g)) - before) == [
        "finetune.train imports eval.judge: training and measurement stand side by side",
        "interp.base.loading (floor 0) imports chains.organism (floor 3)",
        "interp.extract (floor 1) imports chains.extract (floor 3)",
    ]


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
    known = set(modules())
    for target in ("finetune.train", "chains.organism"):
        planted = f'import importlib\n\ndef load():\n    return importlib.import_module("{target}").main\n'
        assert target in imports("interp.base.loading", ROOT / "interp/base/loading.py", known, planted)
    plugin_table = 'JUDGES = {"organism": "chains.organism.judge:OrganismJudge"}\n'
    assert "chains.organism.judge" in imports("eval.judge", ROOT / "eval/judge.py", known, plugin_table)


def test_the_local_paths_load_without_the_api_client():
    # The OpenAI client serves the openai: specs only; a machine without it (the GPU image has
    # none) trains, generates, judges offline and extracts. A module-level import of it from
    # one of these CLIs stopped the real-organism run there once.
    import subprocess
    import sys

    code = (
        "import sys, chains.extract, chains.sweep, eval.generate, eval.judge, finetune.train; "
        "sys.exit('openai' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
