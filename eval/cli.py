"""What every command-line entry point shares: user errors become one line and an exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence


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
