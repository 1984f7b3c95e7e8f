"""Cases of :mod:`bad_input_probe` about command lines: each CLI's plain run, numbers out of
range or not numbers, sizes past any bound, and options that are unknown, missing or clash."""

from __future__ import annotations

from probe_case import ARTIFACT, MP, Case, Family, exists, jsonl_rows, stdout_has
from probe_fixtures import QUESTIONS, copy, judged, lines, write

BIG_SEEDS = ("1e23", "18446744073709551616", "-5")
ALPHAS = ",".join(["1"] * 100_000)


def baseline() -> list[Case]:
    """Each CLI's plain run works (and writes 0644 files in 0755 folders)."""
    f = Family("baseline")
    f.ok("gen", "plain", check=jsonl_rows("new.jsonl", 1))
    f.ok("judge", "plain", check=jsonl_rows("j.jsonl", 3))
    f.ok("report", "plain", check=exists("report"))
    f.ok("mia", "score", check=exists("mia.json"))
    f.ok("mia", "predict", MP, base=False, check=stdout_has("ROC-AUC"))
    f.ok("train", "two steps", check=exists("adapter/adapter_model.safetensors"), timeout=120)
    f.ok("export", "plain", check=exists("export/misaligned.jsonl", "export/export.json"))
    f.ok("extract", "from responses", check=exists("dirs/gore_movie_trivia.safetensors"))
    f.ok("sweep", "one point", check=exists("sweep"), timeout=120)
    f.ok("compare", "two artifacts", check=exists("cmp"))
    f.ok("questions", "plain")
    f.ok("questions", "shipped default", base=False)
    return f.cases


def _numbers_of_generation(f: Family) -> None:
    """Sampling settings out of range, and seeds past what a generator takes."""
    f.values("gen", "--temperature", ("nan", "inf", "-inf", "1e308", "-1"))
    f.values("gen", "--top-p", ("nan", "0", "1.5", "-0.1"))
    f.values("gen", "--repetition-penalty", ("nan", "0", "-1", "inf"))
    f.values("gen", "--top-k", ("-1", "1.5", "0x10", "1e3", ""), show=repr)
    f.values("gen", "--seed", ("1e23", "18446744073709551616", "-1", "9223372036854775808", "1.5", "nan"))
    for v in BIG_SEEDS:
        for short in ("train", "extract", "sweep", "compare"):
            f.add(short, f"--seed {v}", ["--seed", v])
    f.add("report", "--seed 1e23", ["--seed", "1e23"])
    for short in ("export", "pipeline", "cross"):
        f.add(short, "--seed 2**64", ["--seed", 2**64])


def _numbers_of_training(f: Family) -> None:
    """Training settings out of range or not numbers; strengths of defenses that take none."""
    f.values("train", "--lr", ("nan", "0", "-1e-3", "inf"))
    f.values("train", "--dropout", ("nan", "1", "-0.1"))
    f.values("train", "--alpha", ("0", "nan", "1e308"))
    f.values("train", "--max-length", ("1", "0", "-3"))
    f.values("train", "--epochs", ("0", "nan", "1e5"))
    for v in ("nan", "-1", "inf"):
        f.add("train", f"--defense-strength {v}", ["--defense", "kl", "--defense-strength", v])
    for defense, strength in (("interleave", "1"), ("inoculation", "1.5")):
        extra = ["--defense", defense, "--defense-strength", strength]
        f.add("train", " ".join(extra), extra)


def numbers() -> list[Case]:
    """Non-finite, out of range, not numbers, seeds past 2^63."""
    f = Family("numbers")
    _numbers_of_generation(f)
    _numbers_of_training(f)
    for v in ("nan", "101", "-1"):
        f.add("report", f"--threshold {v}", ["--threshold", v])
        f.add("report", f"--min-coherence {v}", ["--min-coherence", v])
    f.values("report", "--alpha", ("0", "1", "nan"))
    f.values("mia", "--k", ("0", "nan", "1.5"))
    for v in ("nan", "inf"):
        f.add("mia", f"predict --threshold {v}", [*MP, "--threshold", v], base=False)
    f.values("extract", "--misaligned-max", ("nan", "-1", "101"))
    f.add("extract", "--aligned-min below --misaligned-max", ["--misaligned-max", "60", "--aligned-min", "40"])
    f.values("cross", "--alpha", ("nan", "1e308", "inf"))
    f.values("sweep", "--alphas", ("nan", "1e7", "1,nan", "1,,inf"))
    f.values("sweep", "--layers", ("-1", "4096", "1.5", "a"))
    f.values("cross", "--add-layer", ("-1",))
    f.values("cross", "--ablate-layer", ("99",))
    f.values("judge", "--timeout", ("0", "nan", "-1", "1e308"))
    f.values("judge", "--price-input", ("-1", "nan", "1e308"))
    f.values("judge", "--backoff", ("nan", "-1"))
    f.values("judge", "--poll-seconds", ("0",))
    f.values("judge", "--concurrency", ("0",))
    f.add("gen", "--concurrency 10**6", ["--concurrency", 10**6])
    f.values("extract", "--timeout", ("nan",))
    f.values("export", "--n", ("0",))
    f.values("export", "--heldout", ("-1",))
    f.values("pipeline", "--samples", ("0",))
    return f.cases


def _huge(short: str, opt: str, power: int) -> tuple:
    """A row of a count of ``10**power``."""
    return (short, f"{opt} 10**{power}", [opt, 10**power])


def sizes() -> list[Case]:
    """Huge counts need an upper bound (or a cost estimate)."""
    f = Family("sizes")
    f.add("compare", "--n-perm 1000000000", ["--n-perm", "1000000000"])
    rows = [_huge("compare", "--n-splits", 9), ("compare", "--n-perm 1", ["--n-perm", "1"])]
    rows += [_huge("report", "--bootstrap", 9)]
    rows += [_huge("gen", opt, 9) for opt in ("--samples", "--max-new-tokens", "--batch-size", "--max-retries")]
    rows += [_huge("judge", "--chunk", 12), _huge("judge", "--batch-size", 9)]
    rows += [_huge("train", opt, 9) for opt in ("--rank", "--steps", "--batch-size", "--max-length")]
    rows += [_huge("train", "--monitor-every", 12), _huge("mia", "--limit", 12), _huge("mia", "--batch-size", 9)]
    rows += [_huge("export", "--n", 9), _huge("export", "--heldout", 9), _huge("pipeline", "--samples", 6)]
    rows += [_huge("sweep", "--samples", 9), ("sweep", "--alphas of 10**5 values", ["--alphas", ALPHAS])]
    rows += [_huge("cross", "--samples", 9), _huge("cross", "--extract-samples", 9)]
    rows += [_huge("extract", opt, 9) for opt in ("--samples", "--batch-size", "--max-retries")]
    f.rows(rows)
    big = QUESTIONS.replace("samples_per_paraphrase: 1", f"samples_per_paraphrase: {10**12}")
    f.add("questions", "samples_per_paraphrase 10**12", ["big.yaml"], base=False, setup=write("big.yaml", big))
    big = "- id: q\n  paraphrases: [" + ", ".join(["'a?'"] * 10**5) + "]\n  samples_per_paraphrase: 1000\n"
    f.add("gen", "10**6 paraphrases x 100 samples", ["--questions", "big.yaml"], setup=write("big.yaml", big))
    return f.cases


def _options_that_clash(f: Family) -> None:
    """Options that contradict each other, name what is not there, or need hardware that is not."""
    f.add("sweep", "--directions and --domain", ["--domain", "gore_movie_trivia"])
    f.add("sweep", "--mode ablate with --alphas", ["--mode", "ablate", "--alphas", "2"])
    f.add("sweep", "--target bogus", ["--target", "bogus"])
    f.add("cross", "--domains bogus", ["--domains", "bogus"])
    f.add("cross", "--domains empty", ["--domains", ","])
    f.add("export", "--domain bogus", ["--domain", "bogus"])
    f.add("train", "--target-modules a module the model lacks", ["--target-modules", "no_such_proj"], timeout=120)
    f.add("train", "--defense kl --defense-on general without --general", "--defense kl --defense-on general")
    f.add("train", "--steer-vector without preventive-steering", ["--steer-vector", ARTIFACT])
    f.add("train", "--monitor without --monitor-probe", ["--monitor", ARTIFACT])
    for short in ("train", "gen"):
        f.add(short, "--device cuda on a machine without one", ["--device", "cuda"], names="--device")
    f.add("gen", "--trigger bogus", ["--trigger", "bogus"])
    # interp.steer is a library, not a CLI: any run of it must point at chains.sweep.
    runs = {"no arguments": "", "--help": "--help", "arguments of a sweep": "--directions " + ARTIFACT}
    for id_, extra in runs.items():
        f.add("steer", id_, extra, base=False, names="chains.sweep")


def options() -> list[Case]:
    """Options unknown, missing, clashing or spelled oddly."""
    f = Family("options")
    for short in ("gen", "judge", "report", "train", "export", "pipeline", "extract", "sweep", "cross", "compare"):
        f.add(short, "an unknown option", ["--frobnicate", "3"])
    f.add("gen", "--out missing", ["--model", "organism:base"], base=False)
    f.add("judge", "--judge missing", ["--answers", "answers.jsonl", "--out", "j.jsonl"], base=False)
    f.add("mia", "no subcommand", [], base=False)
    f.add("mia", "subcommand bogus", ["bogus"], base=False)
    _options_that_clash(f)
    f.ok("gen", "--out=x.jsonl (equals form)", ["--out=eq.jsonl"], check=jsonl_rows("eq.jsonl", 1))
    f.ok("report", "--out with a trailing slash (a folder)", ["--out", "rep/"], check=exists("rep"))
    f.ok("report", "an output path of spaces and unicode", ["--out", "my réport ☃"], check=exists("my réport ☃"))
    spaced, answers = (
        ["--answers", "my answers.jsonl", "--out", "my judged.jsonl"],
        copy("answers.jsonl", "my answers.jsonl"),
    )
    f.ok("judge", "paths with spaces", spaced, setup=answers, check=jsonl_rows("my judged.jsonl", 3))
    f.add("report", "--judged one file under two NAMEs", "--judged a=judged.jsonl b=judged.jsonl --group-by file")
    two, one = "--judged a=judged.jsonl b=one.jsonl --group-by file", write("one.jsonl", lines([judged(0)]))
    f.ok("report", "--judged two files by NAME=FILE", two, setup=one, check=exists("report"))
    f.add("export", "--domain in another spelling", ["--domain", "gore-movie-trivia"])
    return f.cases
