"""What every command-line entry point shares: user errors become one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from interp.base.domains import canonical_domain


class InputError(ValueError):
    """Bad input the user can fix (a file, a line, a field); a CLI prints it as one line."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; an :class:`InputError` prints ``error: ...`` on stderr and exits 2, never a traceback."""
    # The toolkit's own notes at INFO; libraries (the HTTP client logs every request) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("eval").setLevel(logging.INFO)
    try:
        return int(main(argv) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every long-running CLI here appends as it goes, so the same command picks up again.
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    """argparse type: comma-separated numbers."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def domain_list(text: str) -> list[str]:
    """argparse type: comma-separated domain names, in the toolkit's spelling."""
    try:
        return [canonical_domain(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
