"""The bad-input probe: hundreds of bad or odd inputs, tried from outside, on every CLI and on the Python API.

    python benchmarks/bad_input_probe.py [--only SUBSTRING] [--family F] [--workers 2]
                                         [--subprocess] [--skip-slow] [--out PATH]

Each case runs in a fresh temporary folder (a copy of a small set of good inputs built once,
with the offline organism world linked in) under a per-case timeout, and is classified
automatically:

- ``error``: the run was refused as the conventions promise: nonzero exit, no ``Traceback``
  on stderr, the last stderr line names an option (``--x``) or a file given to the run (or
  the case's own ``names`` text), and every file that was there before is untouched;
- ``traceback``: a raw Python traceback (for an API call: an exception that is not a
  ``ValueError``/``OSError`` with a message naming what was wrong);
- ``silent``: exit 0 on input the case declares bad, or a non-finite number in an output;
- ``hang``: the case's timeout passed (for the default-timeout cases, the bound the
  documentation states);
- ``destroyed``: the run was refused but a file that was there before changed or vanished;
- ``unnamed``: refused in one line that names neither an option nor a file;
- ``right``: exit 0 with correct output on an input the case declares odd but valid;
- ``wrong``: exit 0 on odd-but-valid input with output that fails the case's check (or with
  files not 0644 / folders not 0755); ``refused-valid``: an odd-but-valid input refused.

By default a case runs the CLI's module as ``__main__`` in a forked child of a process that has
imported the toolkit already (what ``python -m`` does, without paying the imports each time);
``--subprocess`` runs real ``python -m`` processes instead. Results go to
``benchmarks/results/bad_input_probe.json`` and a summary table is printed.

The parts: ``probe_case.py`` (a case, each CLI's good command line), ``probe_fixtures.py`` (the
good inputs and the setups that change them), ``probe_cases_*.py`` (the cases, by family),
``probe_servers.py``, ``probe_run.py`` (running one case), ``probe_outcome.py`` (classifying
it) and ``probe_summary.py`` (the counts and the table).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# fake_openai (the live fake server), this checkout's packages, and the probe's other modules
# even when this file is not run as a script.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT), str(HERE)]

from probe_case import Case  # noqa: E402
from probe_cases_api import api_cases  # noqa: E402
from probe_cases_artifacts import direction_files, per_sample_folders  # noqa: E402
from probe_cases_flags import baseline, numbers, options, sizes  # noqa: E402
from probe_cases_inputs import input_files, question_files  # noqa: E402
from probe_cases_outputs import nonfinite_outputs, output_paths, outputs_kept, resume_mismatch  # noqa: E402
from probe_cases_servers import servers  # noqa: E402
from probe_fixtures import build_base  # noqa: E402
from probe_run import STATE, run_case  # noqa: E402
from probe_servers import serve  # noqa: E402
from probe_summary import print_table, summarize, versions  # noqa: E402

OUT_DEFAULT = ROOT / "benchmarks" / "results" / "bad_input_probe.json"
CLIS = (
    "interp.extract",
    "chains.sweep",
    "chains.cross_domain",
    "interp.compare",
    "interp.steer",
    "finetune.train",
    "chains.organism.export",
    "chains.organism.pipeline",
    "eval.questions",
    "eval.generate",
    "eval.judge",
    "eval.report",
    "eval.mia",
)
# The families in the order of the results file.
FAMILIES = (
    baseline,
    numbers,
    sizes,
    output_paths,
    outputs_kept,
    resume_mismatch,
    nonfinite_outputs,
    direction_files,
    per_sample_folders,
    input_files,
    question_files,
    servers,
    options,
    api_cases,
)


def all_cases() -> list[Case]:
    """Every case, in the order of the results file; ids must be unique."""
    cases = [case for family in FAMILIES for case in family()]
    if dup := [i for i, n in Counter(c.id for c in cases).items() if n > 1]:
        raise SystemExit(f"duplicate case ids: {dup}")
    return cases


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="run only cases whose id holds this text")
    p.add_argument("--family", help="run only this family")
    p.add_argument("--cli", help="run only this CLI's cases (or 'api')")
    p.add_argument("--workers", type=int, default=2, choices=(1, 2))
    p.add_argument("--subprocess", action="store_true", help="real python -m processes instead of forks")
    p.add_argument("--skip-slow", action="store_true", help="skip the default-timeout server cases (~2 min)")
    p.add_argument("--out", type=Path, default=OUT_DEFAULT)
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p.parse_args(argv)


def select(cases: list[Case], args: argparse.Namespace) -> list[Case]:
    """The cases the command line asks for."""
    if args.only:
        cases = [c for c in cases if args.only in c.id]
    if args.family:
        cases = [c for c in cases if c.family == args.family]
    if args.cli:
        cases = [c for c in cases if c.cli == args.cli]
    if args.skip_slow:
        cases = [c for c in cases if c.bound is None]
    return cases


def _prepare_parent() -> None:
    """Settings and imports every forked case then inherits."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # read when the libraries import, before the forks
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)  # tiny models; and a forked child must not inherit a thread pool
    for module in CLIS:  # the imports every forked case then shares
        __import__(module)


def _init_worker() -> None:
    """A worker ignores Ctrl-C: the parent handles it, and cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_all(cases: list[Case], workers: int, real_processes: bool) -> list[dict]:
    """Run ``cases`` on ``workers`` forked workers against the probe's servers; their records."""
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(child,), daemon=True)
    server.start()
    urls = parent.recv()
    tmp = Path(tempfile.mkdtemp(prefix="bad_input_probe_"))
    try:
        build_base(tmp / "base")
        STATE.update(cases=cases, urls=urls, base=tmp / "base", tmp=tmp, subprocess=real_processes)
        start = time.monotonic()
        results: list[dict] = []
        with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
            for i, r in enumerate(pool.imap_unordered(run_case, range(len(cases)))):
                results.append(r)
                mark = "." if r["ok"] else "!"
                print(mark, end="" if (i + 1) % 80 else "\n", flush=True)
        print(f"\n{len(results)} cases in {time.monotonic() - start:.0f} s")
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def write_results(out: Path, results: list[dict], counts: dict, real_processes: bool) -> None:
    """Write the results file that benchmarks/results_probe.py renders."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "cases": results,
        "counts": counts,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "subprocess" if real_processes else "fork",
        "command": "python benchmarks/bad_input_probe.py" + (" --subprocess" if real_processes else ""),
    }
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    """Run the probe; 0 if every case's outcome is the one it expects."""
    args = parse_args(argv)
    cases = select(all_cases(), args)
    if args.list:
        for c in cases:
            print(f"{c.family:<24} {c.cli:<28} {c.expect:<6} {c.id}")
        print(len(cases), "cases")
        return 0
    cases.sort(key=lambda c: -c.timeout if c.bound is not None else 0)  # the slow ones first, to overlap the rest
    _prepare_parent()
    results = run_all(cases, args.workers, args.subprocess)
    order = {c.id: i for i, c in enumerate(all_cases())}
    results.sort(key=lambda r: order[r["id"]])
    counts = summarize(results)
    print_table(counts, results)
    if not (args.only or args.family or args.cli or args.skip_slow):  # only a full run replaces the results
        write_results(args.out, results, counts, args.subprocess)
    return 0 if counts["not_as_expected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
