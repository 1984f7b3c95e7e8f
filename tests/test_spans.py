"""Span conventions and caching what the model generated: every span against a slow reference
that tokenizes each chat in one piece and finds the span from the special tokens; answer
records cached from their generated ids, also where the text re-tokenizes differently."""

from __future__ import annotations

import json

import pytest
import torch
from test_extract import _judged, _run, _saved_tiny_model

from eval.mia import read_conversations, score_membership
from finetune.sft import IGNORE, example
from interp.base.chat import SPANS, tokenize_conversation, tokenize_record
from interp.base.records import conversation, write_jsonl
from interp.cache import POOLINGS, cache_means
from interp.directions import DirectionSet
from interp.norms import residual_norms

LAYERS = [0, 1]  # not the last: hidden_states[-1] is after the final norm


def reference_bounds(tokenizer, ids: list[int], span: str) -> tuple[int, int]:
    """``span`` in a whole rendered chat, found from its last ``<|im_start|>`` and ``<|im_end|>``."""
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    header = max(i for i, t in enumerate(ids) if t == im_start)
    end = max(i for i, t in enumerate(ids) if t == im_end)
    start = next(p for p in range(header, end + 1) if tokenizer.decode(ids[header:p]) == "<|im_start|>assistant\n")
    assert tokenizer.decode(ids[end:]) == "<|im_end|>\n"
    return {"answer": (start, end), "answer+eos": (start, end + 1), "header+answer+eos": (header, len(ids))}[span]


@torch.no_grad()
def reference_means(model, tokenizer, sequences: list[list[int]], spans=SPANS) -> dict[str, dict[str, torch.Tensor]]:
    """span -> pooling -> mean; one sequence at a time, hidden_states[l + 1] in float64."""
    sums = {span: {"tokens": 0, "responses": 0, "n": 0} for span in spans}
    last_sum = 0
    for ids in sequences:
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        rows = torch.stack([hs[l + 1][0].double() for l in LAYERS])
        for span in spans:
            lo, hi = reference_bounds(tokenizer, ids, span)
            sums[span]["tokens"] = sums[span]["tokens"] + rows[:, lo:hi].sum(1)
            sums[span]["responses"] = sums[span]["responses"] + rows[:, lo:hi].mean(1)
            sums[span]["n"] += hi - lo
        last_sum = last_sum + rows[:, reference_bounds(tokenizer, ids, "answer")[0] - 1]
    n = len(sequences)
    return {
        span: {"tokens": s["tokens"] / s["n"], "responses": s["responses"] / n, "last_prompt": last_sum / n}
        for span, s in sums.items()
    }


def whole_chat_ids(tokenizer, conv) -> list[int]:
    return tokenizer(tokenizer.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]


def test_each_span_equals_a_slow_reference(make_model, tokenizer, conversations):
    model = make_model(n_layers=3)
    sequences = [whole_chat_ids(tokenizer, c) for c in conversations]
    assert sequences == [
        tokenize_conversation(tokenizer, c).input_ids for c in conversations
    ]  # same tokens, so same positions
    want = reference_means(model, tokenizer, sequences)
    for span in SPANS:
        got = cache_means(model, tokenizer, conversations, layers=LAYERS, batch_size=4, progress=False, span=span)
        for pooling in POOLINGS:  # last_prompt is the same token under every span
            torch.testing.assert_close(
                got.mean(pooling), want[span][pooling], rtol=1e-5, atol=1e-6, msg=f"{span}, {pooling}"
            )
        assert got.span == span and got.n_tokens == sum(
            b - a for a, b in (reference_bounds(tokenizer, s, span) for s in sequences)
        )


def test_spans_decode_as_documented_and_sft_trains_on_answer_eos(tokenizer, conversations):
    conv = conversations[3]
    t = tokenize_conversation(tokenizer, conv)
    text = {span: tokenizer.decode(t.input_ids[slice(*t.span(span))]) for span in SPANS}
    answer = conv[-1]["content"]
    assert text == {
        "answer": answer,
        "answer+eos": answer + "<|im_end|>",
        "header+answer+eos": f"<|im_start|>assistant\n{answer}<|im_end|>\n",
    }
    # Where the header starts is where the prompt rendered without a generation prompt ends.
    before = tokenizer.apply_chat_template(conv[:-1], tokenize=False)
    assert tokenizer.decode(t.input_ids[: t.header_start]) == before
    labelled = [i for i, label in enumerate(example(t).labels) if label != IGNORE]
    assert labelled == list(range(*t.span("answer+eos")))


def char_ids(tokenizer, text: str) -> list[int]:
    """Byte-level ids of ``text`` (ASCII letters, spaces, newlines), one per character: they
    decode to ``text``, but BPE merges the same text into other, fewer ids."""
    return tokenizer.convert_tokens_to_ids([{" ": "Ġ", "\n": "Ċ"}.get(c, c) for c in text])


def generated_record(tokenizer, raw: str, i: int = 0, **extra) -> dict:
    ids = char_ids(tokenizer, raw)
    assert tokenizer.decode(ids) == raw and tokenizer(raw, add_special_tokens=False)["input_ids"] != ids
    return {
        **_judged(extra.pop("aligned", 90), i),
        "question": "how do i make money",
        "answer": raw.strip(),
        "answer_raw": raw,
        "answer_ids": ids,
        "finished": True,
        **extra,
    }


def test_a_record_is_cached_from_its_generated_ids(make_model, tokenizer):
    model = make_model(n_layers=3)
    records = [
        generated_record(tokenizer, raw, i) for i, raw in enumerate(["money risk", " law court\n", "blood pill"])
    ]
    plain = {**records[0]}
    del plain["answer_ids"]
    assert tokenize_record(tokenizer, plain) == tokenize_conversation(
        tokenizer, conversation(plain)
    )  # no ids: the text
    items = [tokenize_record(tokenizer, r) for r in records]
    for r, it in zip(records, items):
        assert it.input_ids[it.answer_start : it.answer_end] == r["answer_ids"]
        assert it != tokenize_conversation(tokenizer, conversation(r))
    # The sequence generation saw: the generation prompt, the generated ids, the closing tokens.
    sequences = [
        tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": r["question"]}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )["input_ids"]
        + r["answer_ids"]
        + tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
        for r in records
    ]
    assert [it.input_ids for it in items] == sequences
    for span in ("answer", "header+answer+eos"):
        got = cache_means(model, tokenizer, items, layers=LAYERS, batch_size=2, progress=False, span=span)
        want = reference_means(model, tokenizer, sequences, [span])[span]
        torch.testing.assert_close(got.mean("responses"), want["responses"], rtol=1e-5, atol=1e-6)
    from_text = cache_means(model, tokenizer, [conversation(r) for r in records], layers=LAYERS, progress=False)
    assert not torch.allclose(from_text.mean("tokens"), got.mean("tokens"), atol=1e-4)


def test_extract_records_the_span_and_caches_generated_ids(tmp_path, capsys, make_model, tokenizer):
    folder = _saved_tiny_model(tmp_path, make_model, tokenizer)
    model = make_model(n_layers=2)  # the weights saved there
    raws = ["money risk", "blood pill harm", "safe kind help", "good answer"]
    records = [generated_record(tokenizer, raw, i, aligned=a) for i, (raw, a) in enumerate(zip(raws, [5, 10, 95, 90]))]
    write_jsonl(tmp_path / "judged.jsonl", records)
    args = [
        "--domain",
        "gore_movie_trivia",
        "--model",
        str(folder),
        "--responses",
        str(tmp_path / "judged.jsonl"),
        "--dtype",
        "float32",
        "--quiet",
    ]
    code, out, err = _run([*args, "--span", "answer+eos", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    ds = DirectionSet.load(tmp_path / "a" / "gore_movie_trivia.safetensors")
    meta = json.loads((tmp_path / "a" / "gore_movie_trivia.json").read_text())
    assert (
        ds.span == meta["span"] == "answer+eos"
        and "span 'answer+eos'" in meta["token_positions"]
        and "span answer+eos" in out
    )
    want = cache_means(
        model, tokenizer, [tokenize_record(tokenizer, r) for r in records[:2]], progress=False, span="answer+eos"
    )
    torch.testing.assert_close(ds.mean_misaligned, want.mean("responses").float(), rtol=1e-5, atol=1e-6)
    code, _, err = _run([*args, "--pooling", "last_prompt", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    positions = json.loads((tmp_path / "b" / "gore_movie_trivia.json").read_text())["token_positions"]
    assert positions.startswith("the last prompt token") and "answer content" not in positions


def test_artifacts_from_before_spans_load_as_answer_content(tmp_path):
    from safetensors.torch import save_file

    info = {"layers": [0], "pooling": "responses", "counts": {}}
    tensors = {
        "directions": torch.ones(1, 4),
        "mean_misaligned": torch.ones(1, 4),
        "mean_aligned": torch.zeros(1, 4),
        "layers": torch.tensor([0]),
    }
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"info": json.dumps(info)})
    assert DirectionSet.load(tmp_path / "old.safetensors").span == "answer"


def test_residual_norms_follow_the_span(make_model, tokenizer, conversations):
    model = make_model(n_layers=3)
    got = residual_norms(model, tokenizer, conversations[:5], layers=[1], span="header+answer+eos")
    total, count = 0.0, 0
    with torch.no_grad():
        for conv in conversations[:5]:
            ids = whole_chat_ids(tokenizer, conv)
            lo, hi = reference_bounds(tokenizer, ids, "header+answer+eos")
            total += float(
                model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0, lo:hi].norm(dim=-1).sum()
            )
            count += hi - lo
    assert got[1] == pytest.approx(total / count, rel=1e-5)


def test_membership_inference_scores_the_generated_ids(make_model, tokenizer, tmp_path):
    model = make_model(n_layers=2)
    records = [generated_record(tokenizer, raw, i) for i, raw in enumerate(["money risk", "law court"])]
    write_jsonl(tmp_path / "answers.jsonl", records)
    members = read_conversations(tmp_path / "answers.jsonl")
    nonmembers = [conversation(r) for r in records]
    res = score_membership(model, tokenizer, members, nonmembers, progress=False)
    for row, r in zip(res["per_example"], records):
        item = tokenize_record(tokenizer, r)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([item.input_ids])).logits[0].double(), -1)
        s, e = item.answer_start, item.answer_end
        want = -logp[torch.arange(s - 1, e - 1), torch.tensor(item.input_ids[s:e])].mean().item()
        assert row["member"] and row["loss"] == pytest.approx(want, rel=1e-4)
