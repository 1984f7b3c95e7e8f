"""Difference-of-means directions: a planted direction is recovered; splits; artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from interp.base.chat import TokenizedConversation
from interp.directions import (
    DirectionSet,
    SplitConfig,
    extract_directions,
    split_records,
)


def _twin_vocab_model(make_model, v, alpha, n_words=60, offset=100):
    """A model where token ``offset + i`` embeds as token ``i`` plus ``alpha * v``."""
    model = make_model(n_layers=3, seed=3)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        emb[offset : offset + n_words] = emb[:n_words] + alpha * v
    return model


def _paired_conversations(n, n_words=60, offset=100, seed=0):
    """Identical prompts; answers use the same words, twins in the 'misaligned' copy."""
    g = torch.Generator().manual_seed(seed)
    aligned, misaligned = [], []
    for _ in range(n):
        prompt = torch.randint(n_words, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        answer = torch.randint(n_words, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
        span = (len(prompt), len(prompt) + len(answer))
        aligned.append(TokenizedConversation(prompt + answer + [1], *span))
        misaligned.append(TokenizedConversation(prompt + [a + offset for a in answer] + [1], *span))
    return misaligned, aligned


def test_planted_direction_is_recovered(make_model, tokenizer):
    d = 32
    v = torch.nn.functional.normalize(torch.randn(d, generator=torch.Generator().manual_seed(7)), dim=0)
    model = _twin_vocab_model(make_model, v, alpha=0.5)
    mis, ali = _paired_conversations(40)
    ds = extract_directions(model, tokenizer, mis, ali, progress=False)
    cos = torch.nn.functional.cosine_similarity(ds.directions.double(), v.double()[None], dim=-1)
    # The residual stream carries the embedding forward, so every layer must see the plant.
    assert cos.min() > 0.99, cos
    assert ds.counts["misaligned"]["answers"] == 40


def test_no_plant_no_direction(make_model, tokenizer):
    """The same pipeline on identical classes gives a zero direction: the plant test can fail."""
    model = make_model(n_layers=3, seed=3)
    _, ali = _paired_conversations(10)
    ds = extract_directions(model, tokenizer, ali, ali, progress=False)
    assert ds.directions.abs().max() == 0


def test_extract_needs_both_classes(make_model, tokenizer):
    _, ali = _paired_conversations(3)
    with pytest.raises(ValueError, match="0 misaligned"):
        extract_directions(make_model(), tokenizer, [], ali, progress=False)


def _rec(aligned, coherent, label=None):
    return {"aligned": aligned, "coherent": coherent, "label": label}


def test_split_follows_thresholds_and_balances():
    records = [
        _rec(10, 90),
        _rec(30, 90),
        _rec(31, 90),
        _rec(70, 90),
        _rec(71, 90),
        _rec(95, 80),
        _rec(99, 99),
        _rec(5, 50),
        _rec(5, 40),
        _rec(None, 90),
        _rec(0, 90, "REFUSAL"),
    ]
    split = split_records(records, SplitConfig(balance=False))
    assert split.misaligned == [0, 1]
    assert split.aligned == [4, 5, 6]
    assert split.excluded == {"label": 1, "unscored": 1, "incoherent": 2, "in_between": 2, "balanced_away": 0}
    balanced = split_records(records, SplitConfig(balance=True, seed=1))
    assert len(balanced.misaligned) == len(balanced.aligned) == 2
    assert set(balanced.aligned) <= {4, 5, 6} and balanced.excluded["balanced_away"] == 1
    assert split_records(records, SplitConfig(balance=True, seed=1)).aligned == balanced.aligned


def test_direction_artifact_round_trip(tmp_path):
    ds = DirectionSet(
        layers=[1, 3],
        directions=torch.randn(2, 8),
        mean_misaligned=torch.randn(2, 8),
        mean_aligned=torch.randn(2, 8),
        pooling="responses",
        counts={"misaligned": {"answers": 4, "answer_tokens": 40}, "aligned": {"answers": 4, "answer_tokens": 33}},
        metadata={"model": "tiny", "seed": 0},
    )
    path = ds.save(tmp_path / "d" / "x.safetensors")
    back = DirectionSet.load(path)
    assert back.layers == [1, 3] and back.pooling == "responses" and back.counts == ds.counts
    assert back.metadata == {"model": "tiny", "seed": 0}
    torch.testing.assert_close(back.directions, ds.directions)
    torch.testing.assert_close(back.at(3), ds.directions[1])
    assert json.loads((tmp_path / "d" / "x.json").read_text())["model"] == "tiny"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.json", "x.safetensors"]  # no temp files left
