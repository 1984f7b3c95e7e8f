"""Cases of :mod:`bad_input_probe` against OpenAI-compatible servers that hang, refuse, fail or
answer garbage (the servers of :mod:`probe_servers`), and against a missing key or URL."""

from __future__ import annotations

from probe_case import Case, Family, jsonl_rows

# The documented bound of a run against a server that accepts and never answers, with the
# default --timeout and --max-retries (docs/cli.md; interp.base.cli.DEFAULT_TIMEOUT_S).
DEFAULT_SERVER_BOUND_S = 180.0

JO = ["--judge", "openai:m", "--no-cache", "--concurrency", "1"]
GO = ["--engine", "openai:m", "--questions", "questions.yaml", "--out", "a.jsonl", "--no-progress"]
GO += ["--concurrency", "1"]
FAST = ["--timeout", "0.5", "--max-retries", "1"]
# eval.judge's and eval.generate's command lines against a server, the judge's on top of its base.
AGAINST = {"judge": ([*JO, *FAST], {}), "gen": (GO + FAST, {"base": False})}


def _url(server: str) -> dict[str, str]:
    """The environment pointing the client at one of the probe's servers."""
    return {"OPENAI_BASE_URL": "{" + server + "}"}


def _broken_servers(f: Family) -> None:
    """Servers that never answer, refuse, fail or answer garbage: refused, naming the server."""
    judge, gen = AGAINST["judge"][0], AGAINST["gen"][0]
    for srv in ("silent", "refused", "failing", "garbage"):
        kw = {"env": _url(srv), "timeout": 30, "names": "127.0.0.1"}
        f.add("judge", f"a {srv} server, --timeout 0.5", [*judge, "--backoff", "0"], **kw)
        f.add("gen", f"a {srv} server, --timeout 0.5", gen, base=False, **kw)
    batch = [*judge, "--backoff", "0", "--batch", "--poll-seconds", "0.1"]
    f.add("judge", "a silent server, --batch", batch, env=_url("silent"), timeout=30, names="127.0.0.1")


def _live_server(f: Family) -> None:
    """The live fake server: both clients work; a price past any float is refused."""
    for short, out, rows in (("judge", "j.jsonl", 3), ("gen", "a.jsonl", 1)):
        argv, kw = AGAINST[short]
        f.ok(short, "a live server (works)", argv, env=_url("fake"), timeout=60, check=jsonl_rows(out, rows), **kw)
    price = [*AGAINST["judge"][0], "--price-input", "1e308"]
    f.add("judge", "a live server, --price-input 1e308", price, env=_url("fake"), timeout=60)


def servers() -> list[Case]:
    """Servers that hang, refuse or answer garbage; a missing key; a URL that is not one."""
    f = Family("servers")
    _broken_servers(f)
    _live_server(f)
    for short, (argv, kw) in AGAINST.items():
        f.add(short, "no OPENAI_API_KEY", argv, env={"OPENAI_API_KEY": ""}, names="OPENAI_API_KEY", **kw)
    bad_url = {"OPENAI_BASE_URL": "not a url"}
    f.add("gen", "OPENAI_BASE_URL not a URL", GO + FAST, base=False, env=bad_url, names="OPENAI_BASE_URL")
    extract = ["--domain", "gore_movie_trivia", "--model", "organism:base", "--out", "dirs", "--quiet"]
    extract += ["--questions", "questions.yaml", "--judge", "openai:m", "--samples", "1"]
    extract += ["--timeout", "0.5", "--max-retries", "0"]
    silent = {"env": _url("silent"), "names": "127.0.0.1"}
    f.add("extract", "--judge openai: against a silent server", extract, base=False, timeout=90, **silent)
    # The defaults: a server that accepts and never answers must be given up on within the
    # documented bound (not the harness's patience).
    slow = {"timeout": DEFAULT_SERVER_BOUND_S + 30, "bound": DEFAULT_SERVER_BOUND_S, **silent}
    defaults = "a silent server, default --timeout and --max-retries"
    f.add("judge", defaults, ["--judge", "openai:m", "--no-cache"], **slow)
    f.add("gen", defaults, GO[:-2], base=False, **slow)
    return f.cases
