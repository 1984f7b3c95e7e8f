"""``python -m interp.extract``: the design card's name for ``python -m chains.extract``, the main job.

The job is a chain (floor 3) and this module stands on floor 1, so it never names it: it runs
the ``command`` plugin ``extract`` (:mod:`interp.base.plugins`; pyproject declares it as
``chains.extract:main``) under :func:`~interp.base.cli.run_cli`, exactly as ``chains.extract``
runs its own ``main``: the same options, help, messages and exit codes.
"""

from __future__ import annotations

from collections.abc import Sequence

from interp.base.cli import run_cli
from interp.base.plugins import load


def main(argv: Sequence[str] | None = None) -> int | None:
    """The main job's ``main`` (``argv`` None: ``sys.argv[1:]``), found by its plugin name."""
    return load("command", "extract")(argv)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
