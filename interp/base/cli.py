"""What every command-line entry point shares: user errors become one line and an exit code.

Every CLI builds its parser with :class:`ArgumentParser` (a bad option is an
:class:`InputError`, not argparse's usage block), types its numeric options with the
range-checked types below, checks its paths with :mod:`interp.base.paths`, all before it
loads a model, and runs under :func:`run_cli`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

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
        # One line, whatever the message carries (a library's multi-line text, say).
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every long-running CLI here appends or checkpoints as it goes, so the same command picks up again.
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown option, bad value, missing argument) are one :class:`InputError` line."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} (see {self.prog} --help)")


# --- option types: each checks its range, so a bad value never reaches the work ----------------


def number(
    kind: type[int] | type[float],
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """argparse type: a finite ``kind`` in the interval given (``None``: unbounded on that side)."""
    what = "an integer" if kind is int else "a number"
    show = (lambda v: str(int(v))) if kind is int else (lambda v: f"{v:g}")  # 2**63 - 1 in full, not 9.22337e+18
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {show(low)}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {show(high)}")
    description = f"{what} {' and '.join(bounds)}".strip()

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if (
            not math.isfinite(value)
            or (low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high))
        ):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    parse.__name__ = description  # what argparse calls the type in its own messages
    return parse


# No count any CLI takes means anything past a billion: larger ones overflow a tensor's index
# or run for years. Options with a tighter natural bound use number() with it.
MAX_COUNT = 10**9
positive_int = number(int, 1, MAX_COUNT)
non_negative_int = number(int, 0, MAX_COUNT)
finite_float = number(float)
positive_float = number(float, 0, low_open=True)
non_negative_float = number(float, 0)
fraction = number(float, 0, 1, low_open=True)  # (0, 1]: top-p, Min-K%'s k
open_fraction = number(float, 0, 1, low_open=True, high_open=True)  # (0, 1): a significance level
score = number(float, 0, 100)  # a judge's scale
seed_int = number(int, 0, 2**63 - 1)  # what torch.Generator.manual_seed and the samplers' keys take
MAX_LAYER = 4095  # a layer index: no decoder has this many layers
layer_index = number(int, 0, MAX_LAYER)
# Shared bounds of the sizes several CLIs take (a size past these is a typo, not a plan).
batch_size = number(int, 1, 65_536)  # sequences in one forward pass
max_new_tokens = number(int, 1, 1_048_576)  # tokens generated per answer: past any model's context
samples_per_paraphrase = number(int, 1, 100_000)  # answers sampled per paraphrase
concurrency = number(int, 1, 4096)  # requests in flight to a server
max_retries = number(int, 0, 100)  # retries of a failed server call
timeout_s = number(float, 0, 86_400, low_open=True)  # seconds to wait for one reply: at most a day
# A server that accepts a request and never answers must fail within a few minutes, not hang:
# (1 + retries) x timeout plus the backoffs, about 2 minutes with these. Here, not beside the
# API client, so that a CLI's defaults do not import the client's package.
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 3


def _items(text: str, parse: Callable[[str], float], what: str) -> list:
    try:
        items = [parse(x.strip()) for x in text.split(",") if x.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got nothing")
    return items


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated non-negative integers (layer indices), at least one."""
    return _items(text, layer_index, f"integers >= 0 and <= {MAX_LAYER}")


def float_list(text: str) -> list[float]:
    """argparse type: comma-separated numbers of magnitude at most 10^6 (steering strengths), at least one."""
    return _items(text, number(float, -1e6, 1e6), "numbers from -1e6 to 1e6")


def domain_list(text: str) -> list[str]:
    """argparse type: comma-separated domain names, in the toolkit's spelling, at least one."""
    try:
        names = [canonical_domain(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated domains, got nothing")
    return names


def path_arg(text: str) -> Path:
    """argparse type: a path, not empty (``Path("")`` is the working folder, never what was meant)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def domain_name(text: str) -> str:
    """argparse type: one domain name, in the toolkit's spelling."""
    try:
        return canonical_domain(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
