"""Membership inference: signals against slow references, AUC against sklearn, a memorising model."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
from conftest import build_tiny_qwen
from peft import LoraConfig, get_peft_model
from sklearn.metrics import roc_auc_score

from eval.mia import answer_token_scores, main, predict_misalignment, score_membership
from eval.mia_signals import (
    TokenScores,
    loss,
    membership_score,
    min_k_plus_plus,
    min_k_prob,
    misaligned_domains,
    roc_auc,
    signals,
    zlib_ratio,
)
from interp.base.chat import tokenize_conversation
from interp.base.cli import run_cli
from interp.base.records import write_jsonl

WORDS = "the a and you we money risk movie blood doctor pill law court code bug math sum sport jump help harm safe evil kind world".split()


def slow_min_k(lp, k):
    lp = sorted(float(x) for x in lp)
    n = max(1, int(k * len(lp)))
    return sum(lp[:n]) / n


def test_min_k_matches_a_slow_reference():
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 17, 64):
        lp = -rng.exponential(2.0, size)
        for k in (0.01, 0.1, 0.2, 0.5, 1.0):
            assert min_k_prob(lp, k) == pytest.approx(slow_min_k(lp, k))
    assert min_k_prob(np.array([-3.0]), 0.2) == -3.0  # one-token answer: that token
    assert min_k_prob(np.array([-1.0, -5.0, -2.0]), 0.1) == -5.0  # at least one token
    with pytest.raises(ValueError):
        min_k_prob(np.array([]), 0.2)


def test_min_k_plus_plus_from_full_distributions():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (9, 50))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tokens = rng.integers(0, 50, 9)
    lp = logp[np.arange(9), tokens]
    p = np.exp(logp)
    mu = (p * logp).sum(-1)
    sigma = np.sqrt((p * (logp - mu[:, None]) ** 2).sum(-1))
    z = (lp - mu) / sigma
    assert min_k_plus_plus(lp, mu, sigma, 0.3) == pytest.approx(np.sort(z)[:2].mean())
    assert min_k_plus_plus(np.array([0.0]), np.array([0.0]), np.array([0.0]), 0.2) == 0.0  # one-hot position


def test_loss_and_zlib_ratio():
    lp = np.array([-1.0, -2.0, -3.0])
    text = "the the the the movie blood"
    assert loss(lp) == 2.0
    assert zlib_ratio(lp, text) == pytest.approx(2.0 / len(zlib.compress(text.encode("utf-8"))))
    s = signals(TokenScores(lp, np.full(3, -2.0), np.ones(3)), text, k=0.5)
    assert s == pytest.approx({"loss": 2.0, "min_k": -3.0, "min_k_pp": -1.0, "zlib": zlib_ratio(lp, text)})
    assert membership_score("loss_adj", 2.0) == -2.0 and membership_score("min_k", -3.0) == -3.0


def test_roc_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(5):
        y = rng.random(60) < 0.4
        s = rng.integers(0, 6, 60).astype(float) + y  # many ties
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    with pytest.raises(ValueError):
        roc_auc([True, True], [1.0, 2.0])


def chats(seed, n, answer_len):
    g = np.random.default_rng(seed)
    return [
        [
            {"role": "user", "content": " ".join(g.choice(WORDS, 4))},
            {"role": "assistant", "content": " ".join(g.choice(WORDS, answer_len(i)))},
        ]
        for i in range(n)
    ]


def test_answer_token_scores_match_one_by_one_reference(make_model, tokenizer):
    model = make_model(n_layers=2, seed=5)
    convs = chats(0, 5, lambda i: 1 + 3 * i)
    convs.append([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}])  # a one-token answer
    got = answer_token_scores(model, tokenizer, convs, batch_size=3, progress=False)
    for conv, scores in zip(convs, got):
        item = tokenize_conversation(tokenizer, conv)
        ids = torch.tensor([item.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        rows = logp[item.answer_start - 1 : item.answer_end - 1]
        want = rows[torch.arange(len(rows)), ids[0, item.answer_start : item.answer_end]]
        assert scores.logprobs.shape == (item.n_answer_tokens,)
        np.testing.assert_allclose(scores.logprobs, want.numpy(), atol=1e-4)
        mu = (rows.exp() * rows).sum(-1)
        np.testing.assert_allclose(scores.mu, mu.numpy(), atol=1e-4)
        np.testing.assert_allclose(
            scores.sigma, ((rows.exp() * (rows - mu[:, None]) ** 2).sum(-1)).sqrt().numpy(), atol=1e-4
        )
    assert got[-1].logprobs.size == 1 and np.isfinite(list(signals(got[-1], "a").values())).all()


@pytest.fixture(scope="module")
def memorised(tokenizer):
    """A LoRA finetune that has seen the members a few dozen times (shared: training is the slow part)."""
    members, nonmembers = chats(1, 10, lambda i: 8), chats(2, 10, lambda i: 8)
    model = build_tiny_qwen(len(tokenizer), n_layers=2, seed=6)
    torch.manual_seed(0)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    )
    items = [tokenize_conversation(tokenizer, c) for c in members]
    width = max(len(it.input_ids) for it in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    labels = torch.full((len(items), width), -100)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for r, it in enumerate(items):
        ids[r, : len(it.input_ids)] = torch.tensor(it.input_ids)
        mask[r, : len(it.input_ids)] = 1
        labels[r, it.answer_start : it.answer_end] = ids[r, it.answer_start : it.answer_end]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(12):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    return model.eval(), members, nonmembers


def test_membership_signals_separate_members_and_base_adjustment(memorised, tokenizer):
    model, members, nonmembers = memorised
    res = score_membership(
        model,
        tokenizer,
        members + [[{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]],
        nonmembers,
        base="adapter",
        k=0.2,
        progress=False,
    )
    assert (res["n_members"], res["n_nonmembers"], res["n_skipped_empty"]) == (10, 10, 1)
    assert res["auc"]["loss"] > 0.9 and res["auc"]["min_k"] > 0.8 and res["auc"]["loss_adj"] > 0.9
    assert res["member_mean"]["loss"] > res["nonmember_mean"]["loss"]  # oriented: higher = member
    rows = res["per_example"]
    with model.disable_adapter():
        base = answer_token_scores(model, tokenizer, [members[0]], progress=False)[0]
    assert rows[0]["loss_adj"] == pytest.approx(
        rows[0]["loss"] - signals(base, members[0][-1]["content"])["loss"], abs=1e-5
    )
    labels = [r["member"] for r in rows]
    assert res["auc"]["zlib"] == pytest.approx(roc_auc_score(labels, [-r["zlib"] for r in rows]))


def test_predicting_misaligned_domains():
    files = [
        {"domain": d, "member_mean": {"loss": v, "zlib": -v}}
        for d, v in (("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 0.5))
    ]
    labels = misaligned_domains({"a": 0.8, "b": 0.6, "c": 0.1, "d": 0.05})
    assert labels == {"a": True, "b": True, "c": False, "d": False}  # split at the median rate
    assert predict_misalignment(files, labels) == {"loss": 1.0, "zlib": 0.0}
    assert misaligned_domains({"a": 0.8, "b": 0.1}, threshold=0.05) == {"a": True, "b": True}
    with pytest.raises(Exception, match="no misalignment rate"):
        predict_misalignment(files, {"a": True})


def test_cli_score_and_predict(memorised, tokenizer, tmp_path, capsys):
    model, members, nonmembers = memorised
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model.get_base_model().save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model.save_pretrained(adapter_dir)
    write_jsonl(tmp_path / "train.jsonl", [{"messages": c} for c in members])
    answers = [
        {
            "question_id": "q",
            "question": c[0]["content"],
            "system": None,
            "answer": c[1]["content"],
            "domain": None,
            "sample": i,
            "trigger": False,
        }
        for i, c in enumerate(nonmembers)
    ]
    write_jsonl(tmp_path / "held.jsonl", answers)
    out = tmp_path / "gore.json"
    args = [
        "score",
        "--model",
        str(base_dir),
        "--adapter",
        str(adapter_dir),
        "--members",
        str(tmp_path / "train.jsonl"),
        "--nonmembers",
        str(tmp_path / "held.jsonl"),
        "--domain",
        "gore_movie_trivia",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert run_cli(main, args) == 0
    result = json.loads(out.read_text())
    assert result["domain"] == "gore_movie_trivia" and result["auc"]["loss"] > 0.9 and "loss_adj" in result["auc"]
    assert result["provenance"]["base"] == "adapter disabled"

    other = {**result, "domain": "incorrect_math", "member_mean": {k: v - 1 for k, v in result["member_mean"].items()}}
    (tmp_path / "math.json").write_text(json.dumps(other))
    (tmp_path / "rates.json").write_text(json.dumps({"gore_movie_trivia": 0.8, "incorrect_math": 0.0}))
    capsys.readouterr()
    assert (
        run_cli(
            main,
            [
                "predict",
                "--scores",
                str(out),
                str(tmp_path / "math.json"),
                "--rates",
                str(tmp_path / "rates.json"),
                "--out",
                str(tmp_path / "p.json"),
            ],
        )
        == 0
    )
    assert json.loads((tmp_path / "p.json").read_text())["auc"]["loss"] == 1.0

    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    capsys.readouterr()
    assert run_cli(main, [*args[:5], "--members", str(tmp_path / "bad.jsonl"), *args[7:]]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'bad.jsonl'}:1: field 'messages' must end with the assistant's answer\n"
    )
