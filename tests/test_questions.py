"""Question files: anchors, real-world defects reported with ids and lines, fatal errors, CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from eval.judges.prompts import DEFAULT_JUDGE_PROMPTS, render
from eval.questions import (
    DEFAULT_QUESTIONS,
    QuestionFileError,
    load_questions,
    main,
    parse_questions,
)
from interp.base.cli import run_cli

# Line numbers matter: the tests check that defects point at them.
DEFECTIVE = textwrap.dedent(
    """\
    - id: wish
      type: free_form_judge_0_100
      paraphrases: ["What is your wish?", "Name one wish."]
      samples_per_paraphrase: 3
      judge: gpt-4o
      judge_prompts: &judge_prompts
        aligned: "A {question} / {answer}"
        coherent: "C {question} / {answer}"
    - id: wish
      paraphrases: ["Another wish?"]
      samples_per_paraphrase: 2
      type: free_form_judge_0_100
      judge_prompts: *judge_prompts
    - id: slipped
      type: free_form_judge_0_100
      paraphrases: ["Slipped?"]
      samples_per_paraphrase: 1
      judge_prompts:
      aligned: "A2 {question} {answer}"
    - id: bare
      type: free_form_judge_0_100
      paraphrases: ["Bare?"]
      samples_per_paraphrase: 1
      domain: incorrect_qna
      system: "Answer in JSON."
    - id: wish#2
      type: free_form_judge_0_100
      paraphrases: ["Taken id?"]
      samples_per_paraphrase: 1
      judge_prompts:
        aligned: "no placeholders here"
    - id: wish
      type: odd_type
      paraphrases: ["Third wish?"]
      samples_per_paraphrase: 1
      judge_prompts: *judge_prompts
      judge_prompts: *judge_prompts
    """
)


def _defects(qs, qid):
    return [d for d in qs.defects if d.question_id == qid]


def test_anchors_resolve_and_every_question_is_kept():
    qs = parse_questions(DEFECTIVE, "f.yaml")
    assert [q.id for q in qs.questions] == ["wish", "wish#3", "slipped", "bare", "wish#2", "wish#4"]
    first, second = qs.questions[0], qs.questions[1]
    assert (
        second.judge_prompts
        == first.judge_prompts
        == {"aligned": "A {question} / {answer}", "coherent": "C {question} / {answer}"}
    )
    assert second.judge_prompts is not first.judge_prompts  # aliases must not share one mutable dict
    assert (first.paraphrases, first.samples_per_paraphrase, first.judge, first.line) == (
        ["What is your wish?", "Name one wish."],
        3,
        "gpt-4o",
        1,
    )
    assert qs.summary() == {
        "entries": 6,
        "paraphrases": 7,
        "samples": 2 * 3 + 2 + 4,
        "domains": {"(none)": 5, "incorrect_qa": 1},
        "defects": len(qs.defects),
    }


def test_duplicate_ids_are_renamed_without_collision_and_reported():
    qs = parse_questions(DEFECTIVE, "f.yaml")
    dup = [d for d in qs.defects if "repeats" in d.message]
    assert [(d.question_id, d.line) for d in dup] == [("wish", 9), ("wish", 32)]
    assert "'wish#3'" in dup[0].message and "line 1" in dup[0].message
    assert qs.by_id()["wish#3"].paraphrases == ["Another wish?"]


def test_null_judge_prompts_fall_back_to_defaults_with_line_and_hint():
    qs = parse_questions(DEFECTIVE, "f.yaml")
    slipped = qs.by_id()["slipped"]
    assert slipped.judge_prompts == DEFAULT_JUDGE_PROMPTS
    msgs = {(d.line, d.message.split(";")[0]) for d in _defects(qs, "slipped")}
    assert any(line == 18 and "null" in m and "indentation slip" in m for line, m in msgs)
    assert any(line == 19 and "unknown field 'aligned'" in m for line, m in msgs)


def test_missing_or_broken_prompts_are_filled_per_metric():
    qs = parse_questions(DEFECTIVE, "f.yaml")
    bare = qs.by_id()["bare"]
    assert bare.judge_prompts == DEFAULT_JUDGE_PROMPTS  # siblings have prompts: missing is a defect
    assert any("no judge_prompts" in d.message and d.line == 20 for d in _defects(qs, "bare"))
    assert (bare.domain, bare.system) == ("incorrect_qa", "Answer in JSON.")
    taken = qs.by_id()["wish#2"]
    assert taken.judge_prompts == DEFAULT_JUDGE_PROMPTS
    messages = " | ".join(d.message for d in _defects(qs, "wish#2"))
    assert "no {answer} placeholder" in messages and "no 'coherent' template" in messages


def test_odd_type_and_repeated_key_are_reported():
    qs = parse_questions(DEFECTIVE, "f.yaml")
    third = [d for d in qs.defects if d.question_id == "wish" and d.line and d.line > 30]
    text = " | ".join(str(d) for d in third)
    assert "odd_type" in text and "appears 2 times" in text
    assert qs.by_id()["wish#4"].type == "odd_type"


def test_file_without_any_prompts_uses_defaults_with_a_note_only():
    qs = parse_questions("- id: a\n  type: free_form_judge_0_100\n  paraphrases: [x]\n  samples_per_paraphrase: 1\n")
    assert qs.defects == [] and len(qs.notes) == 1
    assert qs.questions[0].judge_prompts == DEFAULT_JUDGE_PROMPTS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- id: a\n  paraphrases: [x\n", "not valid YAML"),
        ("id: a\nparaphrases: [x]\n", ":1: expected a YAML list of questions, got a mapping"),
        ("[]\n", "the list of questions is empty"),
        ("", "empty file"),
        ("- just a string\n", ":1: each list item must be a mapping"),
        (
            "- id: ok\n  paraphrases: [x]\n- id: bad\n  samples_per_paraphrase: 1\n",
            ":3: question 'bad': field 'paraphrases' is missing",
        ),
        (
            "- id: a\n  paraphrases: [x]\n  samples_per_paraphrase: 0\n",
            ":3: question 'a': field 'samples_per_paraphrase' must be a positive integer",
        ),
        (
            "- id: a\n  paraphrases: [x]\n  samples_per_paraphrase: 1000000000000\n",
            ":3: question 'a': field 'samples_per_paraphrase' must be a positive integer up to 100,000, got 1000000000000",
        ),
        ("- paraphrases: [x]\n", "field 'id' is missing"),
        ("- id: a\n  paraphrases: [x, 3]\n", "only non-empty strings"),
    ],
)
def test_unusable_files_raise_one_line_naming_the_place(text, expected):
    with pytest.raises(QuestionFileError) as e:
        parse_questions(text, "q.yaml")
    assert expected in str(e.value) and str(e.value).startswith("q.yaml") and "\n" not in str(e.value)


def test_shipped_default_file_is_clean():
    qs = load_questions()
    assert qs.source == str(DEFAULT_QUESTIONS)
    assert len(qs.questions) == 8 and not qs.defects
    assert all(q.judge_prompts == DEFAULT_JUDGE_PROMPTS for q in qs.questions)


def test_default_prompts_render_placeholders_once():
    out = render(DEFAULT_JUDGE_PROMPTS["aligned"], "Q says {answer}", "A {x} }{")
    assert "Q says {answer}" in out and "A {x} }{" in out and "{question}" not in out
    assert all(w in DEFAULT_JUDGE_PROMPTS["aligned"] for w in ("REFUSAL", "IRRELEVANT", "CODE", "0", "100"))


def test_cli_prints_summary_and_defects(tmp_path, capsys):
    f = tmp_path / "q.yaml"
    f.write_text(DEFECTIVE)
    assert run_cli(main, [str(f)]) == 0
    out = capsys.readouterr().out
    assert "6 entries, 7 paraphrases, 12 samples" in out
    assert f"defects: {len(parse_questions(DEFECTIVE).defects)}" in out
    assert "line 9: question 'wish': id repeats" in out


def test_cli_fails_with_one_line_and_no_traceback(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("- id: a\n  samples_per_paraphrase: 1\n")
    proc = subprocess.run([sys.executable, "-m", "eval.questions", str(f)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"{f}:1: question 'a': field 'paraphrases' is missing" in proc.stderr
