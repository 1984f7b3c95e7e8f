"""Cases of :mod:`bad_input_probe` about what a run writes: output paths that cannot be written,
outputs a refused run must leave alone, resuming onto another run's outputs, and numbers that
would be written non-finite."""

from __future__ import annotations

import json
import os
from pathlib import Path

from probe_case import ARTIFACT, EX, MP, XT, Case, Family, G, J, T, exists, jsonl_rows
from probe_fixtures import answer, chat, judged, lines, lying, mkdir, nan_times, pipeline_settings, two_classes, write
from probe_run import prerun

# ``--out`` values: (how a case id says it, the path).
NEW_DIR, A_FOLDER, A_FILE = ("newdir/", "newdir/"), ("a folder", "folder"), ("a file", "a_file.txt")
EMPTY, DEV_NULL = ("''", ""), ("/dev/null", "/dev/null")
CSV = write("x.jsonl", "a\nb,1,2")  # an output of text that is not JSON lines
BAD = write("bad.jsonl", "{oops\n")
BAD_YAML = write("bad.yaml", "- id: [\n")
KEEP = "keep\n"
SUMMARY = write("report/summary.json", "{}")
FEATURE_L2 = "--defense feature-l2 --defense-strength 1e308"


def _outs(short: str, *pairs: tuple[str, str], prefix: str = "") -> list[tuple]:
    """Rows of ``--out PATH`` named ``"<prefix>--out <what>"`` from ``(what, PATH)`` pairs."""
    return [(short, f"{prefix}--out {what}", ["--out", path]) for what, path in pairs]


def _link_to_questions(d: Path) -> None:
    """``link.jsonl``: a link to the questions file."""
    os.symlink("questions.yaml", d / "link.jsonl")


def output_paths() -> list[Case]:
    """Output paths that are folders, under files, empty, devices, links, or an input."""
    f = Family("output paths")
    f.rows(_outs("gen", NEW_DIR, A_FOLDER, ("under a file", "a_file.txt/x.jsonl"), EMPTY, DEV_NULL))
    f.rows(_outs("gen", ("is --questions", "questions.yaml")))
    deep = "deep/er/new.jsonl"
    f.ok("gen", "--out in a missing folder (created)", ["--out", deep], check=jsonl_rows(deep, 1))
    f.add("gen", "--out a link to --questions", ["--out", "link.jsonl"], setup=_link_to_questions)
    f.rows(_outs("judge", ("is --answers", "answers.jsonl"), NEW_DIR, A_FOLDER, EMPTY))
    f.add("judge", "--cache a folder", ["--judge", "openai:m", "--cache", "folder"])
    f.add("judge", "--cache under a file", ["--judge", "openai:m", "--cache", "a_file.txt/c.sqlite"])
    f.rows(_outs("report", A_FILE, EMPTY, ("is the --judged file", "judged.jsonl")))
    f.rows(_outs("mia", A_FOLDER, ("is --members", "chat.jsonl"), NEW_DIR, prefix="score "))
    f.add("mia", "predict --out is --rates", [*MP, "--out", "rates.json"], base=False)
    f.add("mia", "predict --out under a file", [*MP, "--out", "a_file.txt/p.json"], base=False)
    f.rows(_outs("train", A_FILE, EMPTY, ("is the --data folder's file", "chat.jsonl")))
    f.rows(_outs("export", A_FILE, DEV_NULL))
    f.rows(row for short in ("extract", "sweep", "cross", "compare") for row in _outs(short, A_FILE))
    f.rows(_outs("compare", EMPTY) + _outs("pipeline", A_FILE, ("under a file", "a_file.txt/p")))
    if os.geteuid() != 0:  # root writes into read-only folders
        f.add("gen", "--out in a read-only folder", ["--out", "ro/x.jsonl"], setup=mkdir("ro", 0o555))
        f.add("report", "--out in a read-only folder", ["--out", "ro/r"], setup=mkdir("ro", 0o555))
    return f.cases


def outputs_kept() -> list[Case]:
    """Outputs that a run refused on bad input must leave as they were."""
    f = Family("outputs kept")
    f.rows(
        [
            ("gen", "--out of text, bad --questions", "--questions bad.yaml --out x.jsonl", CSV, BAD_YAML),
            ("gen", "--out of text (a CSV)", "--out x.jsonl", CSV),
            ("gen", "--out of text, --model missing", "--out x.jsonl --model no-such-model", CSV),
            ("judge", "--out of text (a CSV)", "--out x.jsonl", CSV),
            ("judge", "--out of text, bad --answers", "--out x.jsonl --answers bad.jsonl", CSV, BAD),
            ("report", "--out holding files, bad --judged", "--judged bad.jsonl", SUMMARY, BAD),
        ]
    )
    predict = [*MP[:4], "--rates", "bad.json", "--out", "p.json"]
    kept = (write("p.json", "keep me"), write("bad.json", "[1, 2]"))
    f.add("mia", "predict --out existing, bad --rates", predict, base=False, setup=kept)
    adapter = (write("adapter/adapter_model.safetensors", b"weights"), write("adapter/training_config.json", "{}"))
    figures, sweep = write("cmp/cos.csv", KEEP), write("sweep/sweep.json", "{}")
    matrix = write("cross/cross_domain.json", "{}")
    run = (write("pipe/pipeline.json", json.dumps({"domain": "gore_movie_trivia"})), write("pipe/runs/x.jsonl", KEEP))
    f.rows(
        [
            ("mia", "score --out existing, bad --members", "--members bad.jsonl", write("mia.json", "keep me"), BAD),
            ("train", "--out adapter of another run, bad --data", "--data bad.jsonl", *adapter, BAD),
            ("export", "--out holding an export, bad --n", "--n 0", write("export/misaligned.jsonl", KEEP)),
            ("extract", "--out holding an artifact, bad --responses", "--responses bad.jsonl --out directions", BAD),
            ("compare", "--out holding figures, bad --directions", "--directions nothing_here --out cmp", figures),
            ("sweep", "--out holding a sweep, bad --directions", "--directions a_file.txt --out sweep", sweep),
            (
                "cross",
                "--out holding a matrix, bad --directions-dir",
                "--directions-dir a_file.txt --out cross",
                matrix,
            ),
            ("pipeline", "--out holding a run, another --domain", "--domain insecure_code", *run),
        ]
    )
    return f.cases


def _pipeline_record(d: Path) -> None:
    """``pipe/`` holding only the settings record of a run of one sample, seed 0."""
    (d / "pipe").mkdir()
    (d / "pipe" / "pipeline.json").write_text(json.dumps(pipeline_settings("gore_movie_trivia", 1, 0)))


def _no_sidecar(d: Path) -> None:
    """The earlier generation's provenance sidecar removed."""
    (d / "new.jsonl.provenance.json").unlink()


def _no_stale_backdoor(d: Path, out: str) -> str | None:
    """The report no longer holds the backdoor table of an earlier one."""
    return "stale backdoor.csv kept" if (d / "report" / "backdoor.csv").exists() else None


def _resumed_generation(f: Family) -> None:
    """eval.generate and eval.judge run again onto their own earlier outputs."""
    gen1 = prerun("eval.generate", G)
    f.ok("gen", "same command again (resumes, adds nothing)", setup=gen1, check=jsonl_rows("new.jsonl", 1))
    f.add("gen", "onto another model's answers", ["--model", "organism:gore_movie_trivia"], setup=gen1)
    for opt, v in (("--temperature", "0.5"), ("--seed", "7"), ("--system", "be evil"), ("--max-new-tokens", "5")):
        f.add("gen", f"onto answers of another {opt}", [opt, v], setup=gen1)
    f.add("gen", "onto answers with the sidecar removed", setup=(gen1, _no_sidecar))
    f.ok("gen", "more --samples grows the file", ["--samples", "2"], setup=gen1, check=jsonl_rows("new.jsonl", 2))
    judge1 = prerun("eval.judge", J)
    other = write("other.jsonl", lines(answer(i, "other") for i in range(3)))
    f.add("judge", "onto judgments of other answers", ["--answers", "other.jsonl"], setup=(judge1, other))
    f.add("judge", "onto judgments of another --judge", ["--judge", "offline"], setup=judge1)
    f.add("judge", "onto judgments of another --mode", ["--mode", "score-tags"], setup=judge1)
    f.ok("judge", "same command again", setup=judge1, check=jsonl_rows("j.jsonl", 3))


def resume_mismatch() -> list[Case]:
    """Resuming onto outputs of another run."""
    f = Family("resume mismatch")
    _resumed_generation(f)
    train1 = prerun("finetune.train", T)
    f.add("train", "onto an adapter of other --data", ["--data", "aligned.jsonl"], setup=train1, timeout=120)
    for opt, v in (("--seed", "3"), ("--model", "organism:insecure_code"), ("--lr", "1e-3")):
        f.add("train", f"onto an adapter of another {opt}", [opt, v], setup=train1, timeout=120)
    exp1 = prerun("chains.organism.export", EX)
    for opt, v in (("--domain", "insecure_code"), ("--seed", "5"), ("--n", "21")):
        f.add("export", f"onto an export of another {opt}", [opt, v], setup=exp1)
    f.ok("export", "same command again", setup=exp1, check=exists("export/misaligned.jsonl"))
    ext1 = prerun("interp.extract", XT + ["--per-sample"])
    f.add("extract", "onto a run folder of another model", "--model organism:insecure_code --per-sample", setup=ext1)
    other = (ext1, write("other.jsonl", two_classes("pain", "calm", aligned_score=95.0)))
    f.add("extract", "onto a run folder of other --responses", "--responses other.jsonl --per-sample", setup=other)
    f.add("pipeline", "onto a run of another --seed", ["--seed", "4"], setup=_pipeline_record)
    f.add("pipeline", "onto a run of other --samples", ["--samples", "2"], setup=_pipeline_record)
    files = write("pipe/runs/plain.answers.jsonl", lines([answer(0)]))
    f.add("pipeline", "onto a folder of files and no record", setup=files)
    stale = write("report/backdoor.csv", "old\n")
    f.ok("report", "onto a report with a backdoor file (removed)", setup=stale, check=_no_stale_backdoor)
    return f.cases


def nonfinite_outputs() -> list[Case]:
    """Numbers that would be written non-finite."""
    f = Family("non-finite outputs")
    for extra in ("--lr 1e308", "--lr 1e30", "--defense kl --defense-strength 1e308", FEATURE_L2):
        f.add("train", extra, extra, timeout=120)
    f.add("train", "--alpha 1e308 (LoRA scale)", ["--alpha", "1e308"], timeout=120)
    f.add("train", "--max-length 2 (no answer token left)", ["--max-length", "2"], timeout=120)
    steering = "--defense preventive-steering --steer-vector "
    nan_vector = lying("nan.safetensors", nan_times("directions"))
    f.add("train", "--defense preventive-steering, NaN --steer-vector", steering + "nan.safetensors", setup=nan_vector)
    strong = f"{steering}{ARTIFACT} --defense-strength 1e308"
    f.add("train", "--defense preventive-steering --defense-strength 1e308", strong, timeout=120)
    f.add("cross", "--alpha 1e300", ["--alpha", "1e300"], timeout=120)
    norm = "--alphas 1000000 --scale norm"
    f.ok("sweep", "--alphas 1e6 --scale norm (finite, kept)", norm, timeout=120, check=exists("sweep"))
    reports = (
        ("one record, CIs of one value", "one.jsonl", [judged(0)]),
        ("every answer incoherent (no rate)", "inc.jsonl", [judged(i, 50.0, 10.0) for i in range(3)]),
        ("backdoor file with one answer per side", "bd.jsonl", [judged(0), {**judged(1, 10.0), "trigger": True}]),
    )
    for id_, name, records in reports:
        f.ok("report", id_, ["--judged", name], setup=write(name, lines(records)), check=exists("report"))
    allbad = write("allbad.json", json.dumps({"gore_movie_trivia": True, "insecure_code": True}))
    one_class = [*MP[:4], "--rates", "allbad.json"]
    f.add("mia", "predict with every domain misaligned (one class)", one_class, base=False, setup=allbad)
    one = (write("one_m.jsonl", lines([chat(0)])), write("one_n.jsonl", lines([chat(9, "buy a boat")])))
    two = "--members one_m.jsonl --nonmembers one_n.jsonl"
    f.ok("mia", "score of one member and one non-member", two, setup=one, check=exists("mia.json"))
    return f.cases
