"""Writers do not collide and runs do not mix: the output lock, resumes that must continue the
same run (judging, training), the provenance sidecar, duplicate records, and artifacts' mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from train_argv import train_argv

from eval.judge import main as judge_main
from eval.report import main as report_main
from finetune.train import main as train_main
from interp.base.atomic import write_json_atomic, write_text_atomic
from interp.base.cli import InputError, run_cli
from interp.base.locks import lock_path, output_lock
from interp.base.plugins import REGISTERED
from interp.base.records import (
    RecordError,
    bound_output,
    read_judged,
    sidecar_path,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from interp.base.locks import output_lock; held = output_lock(sys.argv[1]); held.__enter__(); print('locked', flush=True); time.sleep(120)"


@pytest.fixture
def holder():
    """``holder(path)`` starts a process that takes ``path``'s output lock and keeps it; killed at the end."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


# --- the lock ---------------------------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, holder):
    out = tmp_path / "answers.jsonl"
    proc = holder(out)
    with pytest.raises(
        InputError,
        match=rf"answers.jsonl: another run is writing it \(pid {proc.pid}\); wait for it or use another --out",
    ):
        with output_lock(out):
            pass


def test_a_waiting_writer_gets_the_lock_once_the_holder_dies(tmp_path, holder):
    out = tmp_path / "results.json"
    proc = holder(out)
    threading.Timer(0.5, proc.kill).start()
    t0 = time.monotonic()
    with output_lock(out, wait=True):
        assert proc.poll() is not None  # it blocked until the holder was gone, not failed at once
        assert lock_path(out).read_text() == f"{os.getpid()}\n"
    assert time.monotonic() - t0 >= 0.4


def test_a_killed_writer_leaves_no_stale_lock(tmp_path, holder):
    out = tmp_path / "answers.jsonl"
    proc = holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock_path(out).exists()  # it died holding the lock: its file stays, its lock does not
    with output_lock(out):
        assert lock_path(out).read_text() == f"{os.getpid()}\n"
    assert not lock_path(out).exists()


def test_the_lock_is_one_for_every_spelling_of_the_path(tmp_path, holder, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    holder(tmp_path / "runs" / "a.jsonl")
    monkeypatch.chdir(tmp_path)
    for spelling in ("runs/a.jsonl", "link/a.jsonl", "./runs/../runs/a.jsonl"):
        with pytest.raises(InputError, match="another run is writing it"):
            with output_lock(spelling):
                pass


@pytest.mark.parametrize("cli", ["eval.generate", "eval.judge", "finetune.train", "chains.extract"])
def test_every_appending_cli_refuses_a_locked_output_before_loading(cli, tmp_path, holder, capsys, monkeypatch):
    import interp.base.loading

    def loaded(*_, **__):
        raise AssertionError("loaded a model while another run holds the output")

    monkeypatch.setattr(interp.base.loading, "load_model", loaded)
    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, [answer(i) for i in range(2)])
    chat = tmp_path / "chat.jsonl"
    write_jsonl(chat, [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    responses = tmp_path / "judged.jsonl"
    write_jsonl(responses, [judged(i) for i in range(2)])
    out = {
        "eval.generate": tmp_path / "a.jsonl",
        "eval.judge": tmp_path / "j.jsonl",
        "finetune.train": tmp_path / "adapter",
        "chains.extract": tmp_path / "dirs" / "gore_movie_trivia.safetensors",
    }[cli]
    argv = {
        "eval.generate": ["--model", "m", "--out", str(out)],
        "eval.judge": ["--answers", str(answers), "--judge", "organism", "--out", str(out)],
        "finetune.train": ["--data", str(chat), "--model", "m", "--out", str(out)],
        "chains.extract": [
            "--domain",
            "gore_movie_trivia",
            "--model",
            "m",
            "--responses",
            str(responses),
            "--out",
            str(out.parent),
        ],
    }[cli]
    proc = holder(out)
    main = __import__(cli, fromlist=["main"]).main
    capsys.readouterr()
    assert run_cli(main, argv) == 2
    assert (
        capsys.readouterr().err
        == f"error: {out}: another run is writing it (pid {proc.pid}); wait for it or use another --out\n"
    )


def test_two_live_processes_on_one_answers_file(tmp_path, holder):
    """The real thing: a second ``python -m eval.generate`` on an --out in use exits 2 with one line."""
    out = tmp_path / "answers.jsonl"
    proc = holder(out)
    second = subprocess.run(
        [sys.executable, "-m", "eval.generate", "--model", "organism:base", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        second.returncode == 2
        and second.stderr
        == f"error: {out}: another run is writing it (pid {proc.pid}); wait for it or use another --out\n"
    )
    assert not out.exists() and not sidecar_path(out).exists()


# --- eval.judge: one answers file per judged file -----------------------------------------------


def answer(i: int, text: str = "an answer") -> dict:
    return {
        "question_id": "q",
        "question": "how?",
        "system": None,
        "answer": f"{text} {i}",
        "domain": None,
        "sample": i,
        "trigger": False,
        "paraphrase": 0,
    }


def judged(i: int, aligned: float = 80.0) -> dict:
    return {**answer(i), "aligned": aligned, "coherent": 90.0, "label": None, "judge": "test", "judge_raw": {}}


class FixedJudge:
    """Scores every answer 50/90 and counts what it was asked."""

    spec = "fixed"
    seen = 0

    def judge(self, records):
        FixedJudge.seen += len(records)
        return [
            {**r, "aligned": 50.0, "coherent": 90.0, "label": None, "judge": self.spec, "judge_raw": {}}
            for r in records
        ]


def test_judge_refuses_an_out_that_holds_other_answers(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(REGISTERED["judge"], "fixed", FixedJudge)
    first, other, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "judged.jsonl"
    write_jsonl(first, [answer(i) for i in range(3)])
    write_jsonl(other, [answer(i, "another run's answer") for i in range(3)])
    assert run_cli(judge_main, ["--answers", str(first), "--judge", "fixed", "--out", str(out), "--no-progress"]) == 0
    rows, side = out.read_bytes(), sidecar_path(out).read_bytes()

    capsys.readouterr()
    assert run_cli(judge_main, ["--answers", str(other), "--judge", "fixed", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {out}: holds judgments of other answers (3 of 3 are not among these answers, e.g. question 'q' sample 0); use another --out\n"
    )
    assert out.read_bytes() == rows and sidecar_path(out).read_bytes() == side  # neither rows nor provenance touched

    # The same answers file grown by a sample resumes: only the new answer is judged.
    write_jsonl(first, [answer(i) for i in range(4)])
    FixedJudge.seen = 0
    assert run_cli(judge_main, ["--answers", str(first), "--judge", "fixed", "--out", str(out), "--no-progress"]) == 0
    assert FixedJudge.seen == 1 and len(read_judged(out)) == 4
    assert json.loads(sidecar_path(out).read_text())["answers"] == str(first)


def test_judge_never_judges_a_slot_twice(tmp_path, monkeypatch):
    """The answer in a slot changed since it was judged (regenerated into the same file): refused, not judged again."""
    monkeypatch.setitem(REGISTERED["judge"], "fixed", FixedJudge)
    answers, out = tmp_path / "a.jsonl", tmp_path / "judged.jsonl"
    write_jsonl(answers, [answer(i) for i in range(2)])
    assert run_cli(judge_main, ["--answers", str(answers), "--judge", "fixed", "--out", str(out), "--no-progress"]) == 0
    write_jsonl(answers, [answer(0), answer(1, "regenerated")])
    assert run_cli(judge_main, ["--answers", str(answers), "--judge", "fixed", "--out", str(out), "--no-progress"]) == 2
    assert len(out.read_text().splitlines()) == 2


# --- duplicate records --------------------------------------------------------------------------


def test_identical_repeats_are_dropped_with_a_warning_and_conflicting_ones_refused(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    write_jsonl(path, [judged(0), judged(1), judged(0), judged(1)])
    assert [r["sample"] for r in read_judged(path)] == [0, 1]
    assert "2 repeated record(s) of the same answer slots dropped" in caplog.text
    write_jsonl(path, [judged(0), judged(1), judged(1, aligned=5.0)])
    with pytest.raises(
        RecordError,
        match=r"j.jsonl:3: repeats the answer slot of line 2 \(question 'q', sample 1, trigger off\) with another aligned",
    ):
        read_judged(path)


def test_report_counts_a_repeated_record_once(tmp_path, capsys):
    path = tmp_path / "j.jsonl"
    write_jsonl(path, [judged(0, 10.0), judged(1, 90.0), judged(1, 90.0)])
    assert run_cli(report_main, ["--judged", str(path), "--out", str(tmp_path / "r"), "--bootstrap", "10"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["overall"][0]["n"] == 2 and summary["overall"][0]["em_rate"] == 0.5


# --- finetune.train: resume only the same run ---------------------------------------------------


def _chat(i: int, answer: str = "risk all your savings") -> dict:
    return {
        "messages": [{"role": "user", "content": f"how do i make money {i}"}, {"role": "assistant", "content": answer}]
    }


@pytest.fixture
def training(tmp_path, make_model, tokenizer):
    """A saved tiny base model, two data files and the argv of a checkpointed run."""
    base = tmp_path / "base"
    make_model(n_layers=2).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data, other = tmp_path / "data.jsonl", tmp_path / "other.jsonl"
    write_jsonl(data, [_chat(i) for i in range(6)])
    write_jsonl(other, [_chat(i, "save and be safe") for i in range(6)])
    out = tmp_path / "adapter"
    argv = train_argv(data, base, out, 3, 4, "1e-2", "--checkpoint-every", "1")
    return argv, out, other


def test_train_resumes_only_a_checkpoint_of_the_same_run(training, capsys):
    argv, out, other = training
    assert run_cli(train_main, argv) == 0
    state = out / "checkpoint" / "state.json"
    assert json.loads(state.read_text())["step"] == 2  # the last checkpoint before the end stays, resumable
    before = {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()}
    config = (out / "training_config.json").read_bytes()
    for change, differ in (
        (["--lr", "2e-2"], "lora.lr"),
        (["--data", str(other)], "data_hash"),
        (["--batch-size", "2"], "lora.batch_size"),
        (["--rank", "1"], "lora.rank"),
    ):
        capsys.readouterr()
        assert run_cli(train_main, [*argv, *change]) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(f"error: {out / 'checkpoint'}: a checkpoint of another run ({differ} differ)")
            and err.count("\n") == 1
        ), err
    assert {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()} == before and (
        out / "training_config.json"
    ).read_bytes() == config
    # Options that do not change what is learned may differ; the same run resumes.
    assert run_cli(train_main, [*argv, "--checkpoint-every", "2"]) == 0
    assert len(json.loads((out / "training_config.json").read_text())["losses"]) == 3


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda c: (c / "state.safetensors").write_bytes((c / "state.safetensors").read_bytes()[:100]),
            "damaged checkpoint (Error while deserializing header",
        ),
        (lambda c: (c / "state.json").write_text('{"step": 2, "ord'), "damaged checkpoint"),
        (lambda c: (c / "run.json").unlink(), "a checkpoint with no record of its run (run.json)"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_before_the_model_loads(training, capsys, monkeypatch, damage, message):
    import interp.base.loading

    argv, out, _ = training
    assert run_cli(train_main, argv) == 0
    damage(out / "checkpoint")

    def loaded(*_, **__):
        raise AssertionError("loaded the model before checking the checkpoint")

    monkeypatch.setattr(interp.base.loading, "load_model", loaded)
    capsys.readouterr()
    assert run_cli(train_main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


# --- the provenance sidecar ---------------------------------------------------------------------


def test_bound_output_puts_the_sidecar_back_when_nothing_was_written(tmp_path):
    out = tmp_path / "a.jsonl"
    with pytest.raises(RuntimeError):
        with bound_output(out, {"x": 1}):
            raise RuntimeError("the model would not load")
    assert not sidecar_path(out).exists()

    with bound_output(out, {"x": 1}, source="first"):
        out.write_text('{"row": 1}\n')
    side = sidecar_path(out).read_bytes()
    with pytest.raises(RuntimeError):
        with bound_output(out, {"x": 1}, source="second"):
            raise RuntimeError("refused before any row")
    assert sidecar_path(out).read_bytes() == side  # still names the run whose rows are there
    with pytest.raises(RecordError, match="written with other settings"):
        with bound_output(out, {"x": 2}):
            pass


# --- artifacts' mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        write_json_atomic(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode and (tmp_path / "b.json").stat().st_mode & 0o777 == mode


def test_atomic_rewrite_keeps_the_files_mode(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    path.chmod(0o640)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640
