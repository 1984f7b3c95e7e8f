"""Cases of :mod:`bad_input_probe` about input files: missing, empty, not text, not JSON, nested
past any parser's stack, records of the wrong shape, odd but valid encodings, and question
files for eval.questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from probe_case import ARTIFACT, MP, Case, Family, exists, jsonl_rows, stdout_has
from probe_fixtures import QUESTIONS, answer, judged, lines, nested, write, yaml_bomb

LATIN = b'{"question_id": "caf\xe9"}\n'
BOM = b"\xef\xbb\xbf"
PYTHON_TAG = "- !!python/object/apply:os.system ['true']\n"
# Each CLI's main input: its option, and whether it is JSON lines or YAML.
INPUTS = {
    "gen": ("--questions", "yaml"),
    "judge": ("--answers", "jsonl"),
    "report": ("--judged", "jsonl"),
    "train": ("--data", "jsonl"),
    "extract": ("--responses", "jsonl"),
}
BAD_TEXT = {"empty": "", "not UTF-8": LATIN, "binary": bytes(range(256)) * 4}
BAD_JSONL = {
    "nested 100000 deep": nested(100000) + "\n",
    "objects nested 100000 deep": nested(100000, "obj") + "\n",
    "a JSON array, not lines": json.dumps([answer(0), answer(1)]),
    "a key twice": '{"answer": "a", "answer": "b"}\n',
    "a lone surrogate": '{"answer": "\\ud800"}\n',
    "NaN where a string goes": '{"answer": NaN}\n',
    "a number 1e400": '{"sample": 1e400}\n',
    "an integer of 5000 digits": '{"sample": ' + "9" * 5000 + "}\n",
}
BAD_YAML = {"YAML nested 100000 deep": nested(100000), "a YAML alias bomb": yaml_bomb(), "a Python tag": PYTHON_TAG}
THREE = lines(answer(i) for i in range(3))
# eval.judge's --answers: (what, file, text, rows of j.jsonl if the run must work).
ANSWERS = [
    ("with CRLF line ends", "crlf.jsonl", THREE.replace("\n", "\r\n"), 3),
    ("with blank lines", "blank.jsonl", "\n" + THREE.replace("\n", "\n\n"), 3),
    ("with a UTF-8 BOM (refused, named)", "bom.jsonl", BOM + THREE.encode(), None),
    ("with no final newline", "nonl.jsonl", THREE.rstrip("\n"), 3),
    ("torn last line", "torn.jsonl", THREE + '{"quest', None),
    ("of unicode and emoji", "uni.jsonl", lines(answer(i, "ça va 😀 日本") for i in range(2)), 2),
    ("an answer of a million characters", "long.jsonl", lines([answer(0, "x" * 1_000_000)]), 1),
    ("empty answer text", "e.jsonl", lines([answer(0) | {"answer": ""}]), 1),
    ("a record missing 'answer'", "m.jsonl", lines([{k: v for k, v in answer(0).items() if k != "answer"}]), None),
    ("'sample' a string", "m.jsonl", lines([answer(0) | {"sample": "zero"}]), None),
    ("conflicting slots", "m.jsonl", lines([answer(0), answer(0, "other")]), None),
    ("exact repeats (dropped, warned)", "m.jsonl", lines([answer(0), answer(0), answer(1)]), 2),
]


def _given(f: Family, short: str, opt: str, what: str, name: str, text: str | bytes, **kw: Any) -> None:
    """A case named ``"<opt> <what>"`` whose ``opt`` is the file ``name`` holding ``text``."""
    f.add(short, f"{opt} {what}", [opt, name], setup=write(name, text), **kw)


def _turns(*turns: tuple[str, Any]) -> str:
    """A chat file of one record of these ``(role, content)`` turns."""
    return lines([{"messages": [{"role": role, "content": content} for role, content in turns]}])


def _with_ids(bad: int) -> str:
    """Judged responses of both classes, the misaligned ones' answer token ids ``[bad]``."""
    misaligned = [judged(i, 10.0) | {"answer_ids": [bad]} for i in range(3)]
    return lines(misaligned + [judged(i, 90.0) | {"answer_ids": [5]} for i in range(3, 6)])


def _unreadable_inputs(f: Family) -> None:
    """Each CLI's main input missing, a folder, not text, endless, or past any parser's limits."""
    for short, (opt, kind) in INPUTS.items():
        name = f"in.{kind}"
        f.add(short, f"{opt} missing", [opt, "missing." + kind])
        f.add(short, f"{opt} a folder", [opt, "folder"])
        for what, text in BAD_TEXT.items():
            _given(f, short, opt, what, name, text)
        f.add(short, f"{opt} /dev/zero", [opt, "/dev/zero"], timeout=30)
        for what, text in (BAD_JSONL if kind == "jsonl" else BAD_YAML).items():
            _given(f, short, opt, what, name, text)


def _judge_inputs(f: Family) -> None:
    """eval.judge's answers odd or of the wrong shape, its questions too deep, judges unknown."""
    for what, name, text, rows in ANSWERS:
        if rows is None:
            _given(f, "judge", "--answers", what, name, text)
        else:
            _given(f, "judge", "--answers", what, name, text, expect="ok", check=jsonl_rows("j.jsonl", rows))
    _given(f, "judge", "--questions", "nested deeply", "deep.yaml", nested(100000))
    judges = {"bogus": "bogus", "hf: missing model": "hf:no-such-model-here", "openai: with no model": "openai:"}
    for what, judge in judges.items():
        f.add("judge", f"--judge {what}", ["--judge", judge])


def _train_inputs(f: Family) -> None:
    """finetune.train's chats of the wrong shape, and its other inputs missing or not text."""
    _given(f, "train", "--data", "with a system turn only", "s.jsonl", _turns(("system", "x")))
    _given(f, "train", "--data", "roles out of order", "s.jsonl", _turns(("assistant", "x"), ("user", "y")))
    _given(f, "train", "--data", "a role 'tool'", "s.jsonl", _turns(("tool", "x"), ("assistant", "y")))
    _given(f, "train", "--data", "content not a string", "s.jsonl", _turns(("user", 5), ("assistant", "y")))
    f.add("train", "--backdoor of other prompts", ["--backdoor", "heldout.jsonl"])
    f.add("train", "--backdoor is --data", ["--backdoor", "chat.jsonl"])
    f.add("train", "--general missing for interleave", ["--defense", "interleave"])
    latin = write("g.jsonl", LATIN)
    f.add("train", "--general not UTF-8", ["--defense", "interleave", "--general", "g.jsonl"], setup=latin)
    f.add("train", "--monitor-probe not UTF-8", ["--monitor", ARTIFACT, "--monitor-probe", "g.jsonl"], setup=latin)
    ppl = ["--defense", "interleave", "--general", "aligned.jsonl", "--select", "ppl-gap"]
    f.add("train", "--ppl-misaligned-adapter missing", [*ppl, "--ppl-misaligned-adapter", "nope"])
    f.add("train", "--model missing folder", ["--model", "no/such/model"])
    f.add("train", "--model a file", ["--model", "a_file.txt"])


def _pickle_adapter(d: Path) -> None:
    """``pk/``: a LoRA adapter's config, and its weights as a torch pickle."""
    import torch

    config = {"peft_type": "LORA", "base_model_name_or_path": "x", "r": 2, "target_modules": ["q_proj"]}
    (d / "pk").mkdir()
    (d / "pk" / "adapter_config.json").write_text(json.dumps(config))
    torch.save({}, d / "pk" / "adapter_model.bin")


def _model_inputs(f: Family) -> None:
    """Models, adapters and engines that are not there; responses extract cannot use."""
    f.add("gen", "--model a folder without a config", ["--model", "folder"])
    f.add("gen", "--model organism:bogus", ["--model", "organism:bogus"])
    f.add("gen", "--adapter a folder that is not one", ["--adapter", "folder"])
    f.add("gen", "--adapter a pickle adapter", ["--adapter", "pk"], setup=_pickle_adapter)
    f.add("gen", "--engine bogus", ["--engine", "vllm"])
    f.add("gen", "--engine openai: with --model", ["--engine", "openai:m"])
    _given(f, "extract", "--responses", "of one class only", "one.jsonl", lines(judged(i, 90.0) for i in range(4)))
    nan = json.dumps(judged(1)).replace('"aligned": 80.0', '"aligned": NaN') + "\n"
    _given(f, "extract", "--responses", "judged NaN", "n.jsonl", lines([judged(0)]) + nan)
    for what, bad in (("out of the vocabulary", 10**9), ("negative", -1), ("2**70", 2**70)):
        _given(f, "extract", "--responses", f"answer ids {what}", "ids.jsonl", _with_ids(bad))
    f.add("extract", "--layers beyond the model", ["--layers", "0,9"])
    f.add("extract", "--adapter without --model", ["--adapter", "folder"], base=False)
    f.add("extract", "--questions with --responses", ["--questions", "questions.yaml"])


def _mia_and_report_inputs(f: Family) -> None:
    """eval.mia's members, scores and rates, and eval.report's judged files, of the wrong shape."""
    f.ok("mia", "--members answer records", ["--members", "answers.jsonl"], check=exists("mia.json"))
    _given(f, "mia", "--members", "a key twice", "m.jsonl", '{"messages": [], "messages": []}\n')
    _given(f, "mia", "--members", "no assistant turn", "m.jsonl", _turns(("user", "x")))
    f.add("mia", "--base missing", ["--base", "no/such/base"])
    f.add("report", "NAME=FILE with no file", ["--judged", "a=", "--group-by", "file"])
    f.add("report", "two files under one NAME", ["--judged", "a=judged.jsonl", "a=judged.jsonl", "--group-by", "file"])
    for what, record in (("150", judged(0, 150.0)), ("true", judged(0, True)), ("'80'", judged(0) | {"aligned": "80"})):
        _given(f, "report", "--judged", f"a score {what}", "s.jsonl", lines([record]))
    f.add("report", "--judged answers not judged", ["--judged", "answers.jsonl"])
    nulls = lines(judged(i, None, None) for i in range(3))
    _given(f, "report", "--judged", "with null scores only", "s.jsonl", nulls, expect="ok", check=exists("report"))
    deep = write("deep.json", nested(100000, "obj"))
    f.add("mia", "predict --rates nested deeply", [*MP[:4], "--rates", "deep.json"], base=False, setup=deep)
    scores = ["predict", "--scores", "deep.json", "--rates", "rates.json"]
    f.add("mia", "predict --scores nested deeply", scores, base=False, setup=deep)
    for what, text in (("a list", "[0.1, 0.2]"), ("1e400", '{"gore_movie_trivia": 1e400, "insecure_code": 0}')):
        f.add("mia", f"predict --rates {what}", [*MP[:4], "--rates", "l.json"], base=False, setup=write("l.json", text))
    f.add("mia", "predict --scores a folder", ["predict", "--scores", "folder", "--rates", "rates.json"], base=False)
    one = ["predict", "--scores", "score_gore_movie_trivia.json", "--rates", "rates.json"]
    f.add("mia", "predict one --scores file", one, base=False)


def input_files() -> list[Case]:
    """Input files unreadable, malformed, of records of the wrong shape, or odd but valid."""
    f = Family("input files")
    _unreadable_inputs(f)
    _judge_inputs(f)
    _train_inputs(f)
    _model_inputs(f)
    _mia_and_report_inputs(f)
    return f.cases


# eval.questions' question files that must be refused, by what is wrong with them.
BAD_QUESTIONS = {
    "empty": "",
    "not YAML": "- id: [\n",
    "a mapping, not a list": "id: q\n",
    "no paraphrases": "- id: q\n  type: free_form_judge_0_100\n",
    "paraphrases empty": "- id: q\n  paraphrases: []\n",
    "paraphrase not a string": "- id: q\n  paraphrases: [5]\n",
    **{f"samples_per_paraphrase {v}": QUESTIONS.replace(": 1\n", f": {v}\n") for v in ("-1", "1.5", ".nan", "true")},
    "id null": "- id: null\n  paraphrases: ['a?']\n",
    "YAML nested deeply": nested(100000),
    "alias bomb": yaml_bomb(),
    "a Python tag": PYTHON_TAG,
    "not UTF-8": b"- id: q\n  paraphrases: ['caf\xe9']\n",
    "a tab-indented file": "- id: q\n\tparaphrases: ['a?']\n",
    "two YAML documents": QUESTIONS + "---\n" + QUESTIONS,
}
# Defects the checker reports (and the loaders warn of), with exit 0: the file still loads.
DEFECTS = {
    "id twice": (QUESTIONS + QUESTIONS, "id repeats"),
    "id a number": ("- id: 5\n  paraphrases: ['a?']\n", "defects: 2"),
    "judge_prompts not a mapping": ("- id: q\n  paraphrases: ['a?']\n  judge_prompts: 5\n", "judge_prompts must map"),
    "a key twice": ("- id: q\n  id: r\n  paraphrases: ['a?']\n", "appears 2 times"),
}
# Odd but valid: loaded with a warning, or read as if plain.
ODD_QUESTIONS = {
    "unknown keys (a defect, warned)": QUESTIONS + "  colour: blue\n",
    "CRLF line ends": QUESTIONS.replace("\n", "\r\n"),
    "a UTF-8 BOM": BOM + QUESTIONS.encode(),
}


def question_files() -> list[Case]:
    """eval.questions on question files bad, defective or odd."""
    f = Family("question files")
    for name, text in BAD_QUESTIONS.items():
        f.add("questions", name, ["q.yaml"], base=False, setup=write("q.yaml", text))
    f.add("questions", "a folder", ["folder"], base=False)
    f.add("questions", "missing", ["nope.yaml"], base=False)
    f.add("questions", "/dev/zero", ["/dev/zero"], base=False, timeout=30)
    f.add("questions", "two files", ["questions.yaml", "questions.yaml"], base=False)
    for name, (text, said) in DEFECTS.items():
        setup = write("q.yaml", text)
        f.ok("questions", f"{name} (a defect, reported)", ["q.yaml"], base=False, setup=setup, check=stdout_has(said))
    for name, text in ODD_QUESTIONS.items():
        f.ok("questions", name, ["q.yaml"], base=False, setup=write("q.yaml", text))
    return f.cases
