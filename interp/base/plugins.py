"""Plugins: what a lower floor reaches by name without naming the floor above.

One mechanism for four kinds. A plugin is declared as a Python entry point (the toolkit's own
in ``pyproject.toml``, so no module of a lower floor names a module of a higher one, and any
installed package can add its own), or registered in the process (tests, notebooks).

| kind | entry-point group | a plugin is | reached through |
|---|---|---|---|
| ``model`` | ``em_toolkit.models`` | ``loader(name) -> (model, tokenizer)`` | ``load_model("SCHEME:name")`` |
| ``judge`` | ``em_toolkit.judges`` | a judge class (``eval.judges.base.Judge``) | ``python -m eval.judge --judge NAME`` |
| ``measure`` | ``em_toolkit.monitor_measures`` | ``factory(tokenizer) -> measure`` | ``finetune.train --monitor-measure NAME`` |
| ``command`` | ``em_toolkit.commands`` | a CLI's ``main(argv) -> exit status`` | ``python -m interp.extract`` (plugin ``extract``) |
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from interp.base.cli import InputError

GROUPS = {
    "model": "em_toolkit.models",
    "judge": "em_toolkit.judges",
    "measure": "em_toolkit.monitor_measures",
    "command": "em_toolkit.commands",
}
# In-process registrations, by kind; they win over entry points of the same name.
REGISTERED: dict[str, dict[str, Any]] = {kind: {} for kind in GROUPS}


class PluginError(InputError):
    """An unknown plugin name, or one whose code cannot be loaded; one line naming it."""


def _entry_points(kind: str) -> dict[str, Any]:
    if kind not in GROUPS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {', '.join(GROUPS)}")
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def register(kind: str, name: str, plugin: Any) -> None:
    """Make ``plugin`` the ``kind`` plugin called ``name`` in this process."""
    _entry_points(kind)  # checks the kind
    REGISTERED[kind][name] = plugin


def names(kind: str) -> list[str]:
    """Every ``kind`` plugin name: registered here or declared by an installed package."""
    return sorted(set(_entry_points(kind)) | set(REGISTERED[kind]))


def load(kind: str, name: str) -> Any:
    """The ``kind`` plugin called ``name``."""
    if name in REGISTERED.get(kind, {}):
        return REGISTERED[kind][name]
    found = _entry_points(kind).get(name)
    if found is None:
        known = ", ".join(names(kind)) or "none (is the toolkit installed? pip install -e .)"
        raise PluginError(f"no {kind} plugin named {name!r}; known: {known}")
    try:
        return found.load()
    except (ImportError, AttributeError) as e:
        raise PluginError(f"{kind} plugin {name!r} ({found.value}) is not available: {e}") from None
