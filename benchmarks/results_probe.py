"""The page of ``benchmarks/bad_input_probe.py``'s results: counts by outcome, CLI and family,
and every case whose outcome was not the one it expects (the full list stays in the JSON)."""

from __future__ import annotations

from results_format import frame, table

OUTCOMES = ("error", "right", "traceback", "silent", "destroyed", "hang", "unnamed", "wrong", "refused-valid")


def render_bad_input_probe(name: str, d: dict) -> str:
    counts = d["counts"]
    seen = [o for o in OUTCOMES if any(o in row for row in counts["by_cli"].values())]
    body = [
        "Bad and odd inputs tried from outside on every CLI and on the Python API "
        "(`python benchmarks/bad_input_probe.py`; what each outcome means is in its docstring). "
        "`error` is a refusal in one line naming the option or file with every earlier file untouched; "
        "`right` is an odd but valid input handled right.",
        "",
        f"{counts['cases']} cases ({counts['cli_cases']} CLI, {counts['api_calls']} API): "
        f"{counts['tracebacks']} tracebacks, {counts['silent']} silent acceptances, {counts['destroyed']} "
        f"destroyed outputs, {counts['hangs']} hangs; {counts['not_as_expected']} not as expected.",
        "",
    ]
    for key, title in (("by_cli", "By CLI"), ("by_family", "By family")):
        rows = [[k, row["cases"], *(row.get(o, 0) for o in seen)] for k, row in counts[key].items()]
        body += [f"## {title}", "", table([key[3:], "cases", *seen], rows), ""]
    bad = [c for c in d["cases"] if not c["ok"]]
    if bad:
        rows = [[c["id"], c["outcome"], (c["stderr_tail"].splitlines() or [""])[-1][:160]] for c in bad]
        body += ["## Not as expected", "", table(["case", "outcome", "last stderr line"], rows), ""]
    return frame(name, f"Bad-input probe: {name}", d, body)
