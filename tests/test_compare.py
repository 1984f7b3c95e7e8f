"""Cosine matrices, nulls, reliability and the compare CLI, against known ground truth."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from interp.base.cli import run_cli
from interp.cache import cache_means
from interp.compare import (
    CompareError,
    check_compatible,
    cosine_matrix,
    domain_matrices,
    layer_matrix,
    main,
    ordered_domains,
    pooled_samples,
    random_null,
    shuffled_label_null,
    split_half_reliability,
)
from interp.directions import DirectionSet
from interp.plots import heatmap
from interp.shards import load_per_sample


def direction_set(directions, pooling="responses", **meta):
    directions = torch.stack(list(directions)).float() if isinstance(directions, list) else directions.float()
    n_layers = directions.shape[0]
    zeros = torch.zeros_like(directions)
    return DirectionSet(
        list(range(n_layers)),
        directions,
        directions.clone(),
        zeros,
        pooling,
        {"misaligned": {"answers": 3}},
        dict(meta),
    )


def test_cosine_matrix_ground_truth():
    a = torch.tensor([[1.0, 0, 0], [0, 2, 0], [-3, 0, 0], [0, 0, 0]])
    m = cosine_matrix(a)
    assert m.dtype == torch.float64
    expected = torch.tensor([[1, 0, -1], [0, 1, 0], [-1, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(m[:3, :3], expected)
    assert torch.isnan(m[3]).all() and torch.isnan(m[:, 3]).all()  # a zero vector has no direction
    torch.testing.assert_close(cosine_matrix(a[:3], absolute=True), expected.abs())
    b = torch.tensor([[1.0, 1, 0]])
    torch.testing.assert_close(
        cosine_matrix(a[:3], b), torch.tensor([[1, 1, -1]], dtype=torch.float64).T / math.sqrt(2)
    )


def test_cosine_matrix_upcasts_before_dividing():
    # In bf16, two nearly parallel large vectors would round to cos = 1 exactly or beyond.
    a = torch.randn(2, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) * 50
    exact = cosine_matrix(a.double())
    torch.testing.assert_close(cosine_matrix(a), exact, atol=1e-12, rtol=0)


def test_domain_and_layer_matrices():
    e = torch.eye(4)
    sets = {
        "a": direction_set([e[0], e[1]]),
        "b": direction_set([-e[0], e[1] + e[2]]),
        "c": direction_set([e[3], e[1]]),
    }
    m = domain_matrices(sets)
    assert m.shape == (2, 3, 3)
    torch.testing.assert_close(m[0], torch.tensor([[1, -1, 0], [-1, 1, 0], [0, 0, 1]], dtype=torch.float64))
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(m[1], torch.tensor([[1, s, 1], [s, 1, s], [1, s, 1]], dtype=torch.float64))
    assert domain_matrices(sets, absolute=True)[0, 0, 1] == 1
    torch.testing.assert_close(layer_matrix(sets["a"]), torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(layer_matrix(sets["a"], sets["b"]), torch.tensor([[-1, 0], [0, s]], dtype=torch.float64))


def test_incompatible_sets_are_named():
    a = direction_set(torch.ones(2, 4))
    with pytest.raises(CompareError, match=r"mismatched layers: a has \[0, 1\], b has \[0, 1, 2\]"):
        check_compatible({"a": a, "b": direction_set(torch.ones(3, 4))})
    with pytest.raises(CompareError, match="mismatched d_model: a has 4, c has 5"):
        check_compatible({"a": a, "c": direction_set(torch.ones(2, 5))})


def test_ordered_domains_follow_the_paper_then_alphabet():
    assert ordered_domains(["zeta", "gore_movie_trivia", "insecure_code", "alpha"]) == [
        "insecure_code",
        "gore_movie_trivia",
        "alpha",
        "zeta",
    ]


@pytest.mark.parametrize("d", [16, 200])
def test_random_null_matches_sampled_gaussian_pairs(d):
    null = random_null(d)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 30000, d, generator=g, dtype=torch.float64)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert null.std == pytest.approx(1 / math.sqrt(d))
    assert float(cos.std()) == pytest.approx(null.std, rel=0.02)
    assert float(cos.abs().mean()) == pytest.approx(null.mean_abs, rel=0.02)
    assert float(cos.abs().quantile(0.95)) == pytest.approx(null.p95_abs, rel=0.03)
    assert float(cos.quantile(0.95)) == pytest.approx(null.p95, rel=0.03)
    assert float(cos.abs().quantile(0.99)) == pytest.approx(null.p99_abs, rel=0.05)


def planted(n=60, n_layers=2, d=50, signal=3.0, seed=0):
    """Per-sample activations with a planted class difference along e_0 (or none)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) < n // 2
    x = torch.randn(n, n_layers, d, generator=g)
    x[labels, :, 0] += signal
    return x, labels


def test_split_half_reliability_sees_signal_and_its_absence():
    n, d, signal = 60, 50, 3.0
    x, labels = planted(n=n, d=d, signal=signal)
    strong = split_half_reliability(x, labels, n_splits=20, seed=1)
    assert strong.shape == (20, 2)
    # A half-direction is the signal plus noise of variance 2 / (n/4) per coordinate, so two
    # independent halves have cos ~ s^2 / (s^2 + 8 d / n).
    assert float(strong.mean()) == pytest.approx(signal**2 / (signal**2 + 8 * d / n), abs=0.06)
    noise, labels = planted(signal=0.0)
    weak = split_half_reliability(noise, labels, n_splits=30, seed=1)
    # Two halves of pure noise: cosines scatter around 0 at about 1/sqrt(d).
    assert abs(float(weak.mean())) < 0.1 and float(weak.std()) < 0.4
    torch.testing.assert_close(
        split_half_reliability(x, labels, n_splits=3, seed=5), split_half_reliability(x, labels, n_splits=3, seed=5)
    )


def test_split_halves_are_disjoint_and_balanced():
    # Each sample is its own orthogonal axis: two directions share an axis only if a sample
    # sits in both halves, so disjoint halves give exactly zero cosine.
    n = 12
    x = torch.eye(n)[:, None, :]
    labels = torch.arange(n) < 6
    assert torch.equal(split_half_reliability(x, labels, n_splits=5), torch.zeros(5, 1, dtype=torch.float64))


def test_shuffled_null_is_small_for_a_strong_direction():
    x, labels = planted(signal=3.0)
    null = shuffled_label_null(x, labels, n_perm=20, seed=0)
    assert null.true_vs_perm.shape == (20, 2)
    assert null.perm_vs_perm.shape == (190, 2)
    assert null.true_vs_perm.abs().mean() < 0.3
    assert null.perm_vs_perm.abs().mean() < 0.3
    summary = null.summary()
    assert len(summary["true_vs_perm_p95_abs"]) == 2


def test_shuffled_null_reflects_shared_geometry():
    """When every sample shares a big common offset that varies in size, permuted 'directions'
    line up with each other: the null the isotropic model misses."""
    g = torch.Generator().manual_seed(0)
    n, d = 80, 64
    common = torch.randn(d, generator=g)
    x = torch.randn(n, 1, d, generator=g) * 0.1 + torch.randn(n, 1, 1, generator=g) * common
    labels = torch.arange(n) < n // 2
    null = shuffled_label_null(x, labels, n_perm=20, seed=0)
    assert null.perm_vs_perm.abs().mean() > 0.5 > 3 * random_null(d).mean_abs


def test_shuffled_null_keeps_true_direction_first(monkeypatch):
    x, labels = planted(signal=3.0)
    # Permutations that are the identity reproduce the true direction exactly.
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None: torch.arange(n))
    null = shuffled_label_null(x, labels, n_perm=3)
    torch.testing.assert_close(null.true_vs_perm, torch.ones(3, 2, dtype=torch.float64))


def test_pooled_samples_reproduce_cache_means(make_model, tokenizer, conversations, tmp_path):
    acc = cache_means(
        make_model(), tokenizer, conversations, layers=[0, 2], batch_size=4, per_sample_dir=tmp_path, progress=False
    )
    per_sample = load_per_sample(tmp_path)
    for pooling in ("responses", "tokens", "last_prompt"):
        x, w = pooled_samples(per_sample, pooling)
        mean = torch.einsum("n,nld->ld", w, x.double()) / w.sum()
        torch.testing.assert_close(mean, acc.mean(pooling), atol=1e-6, rtol=1e-6)


def test_heatmap_scale_and_annotation():
    fig = Figure()
    ax = fig.add_subplot()
    image = heatmap(ax, np.array([[1.0, -0.5], [np.nan, 0.2]]), ["r1", "r2"], ["c1", "c2"], "t")
    assert image.get_clim() == (-1.0, 1.0)
    assert [t.get_text() for t in ax.texts] == ["1.00", "-0.50", "n/a", "0.20"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["r1", "r2"]
    ax2 = fig.add_subplot(2, 1, 2)
    heatmap(ax2, np.zeros((13, 13)), [str(i) for i in range(13)], [str(i) for i in range(13)])
    assert not ax2.texts  # too many cells to annotate
    with pytest.raises(ValueError, match="does not match"):
        heatmap(ax, np.zeros((2, 3)), ["a"], ["b"])


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def artifacts(tmp_path, make_model, tokenizer, conversations):
    """Three direction artifacts; one with per-sample folders cached by cache_means."""
    root = tmp_path / "directions"
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 32, generator=g)
    for k, name in enumerate(["gore_movie_trivia", "insecure_code", "custom"]):
        direction_set(base + 0.3 * k * torch.randn(3, 32, generator=g), model="tiny", domain=name).save(
            root / f"{name}.safetensors"
        )
    model = make_model()
    mis, ali = conversations[:7], conversations[7:]
    folder = root / "insecure_code.per_sample"
    stats = {
        cls: cache_means(
            model, tokenizer, convs, layers=[0, 1, 2], batch_size=4, per_sample_dir=folder / cls, progress=False
        )
        for cls, convs in (("misaligned", mis), ("aligned", ali))
    }
    direction = (stats["misaligned"].mean() - stats["aligned"].mean()).float()
    DirectionSet([0, 1, 2], direction, direction.clone(), direction * 0, "responses", {}, {"model": "tiny"}).save(
        root / "insecure_code.safetensors"
    )
    return root


def test_cli_writes_matrices_figures_and_nulls(artifacts, tmp_path, capsys):
    out = tmp_path / "figs"
    assert (
        main(
            [
                "--directions",
                str(artifacts),
                "--out",
                str(out),
                "--cross",
                "insecure_code:custom",
                "--n-perm",
                "5",
                "--n-splits",
                "3",
            ]
        )
        == 0
    )
    assert "compared 3 domains over 3 layers, per-sample nulls for insecure_code" in capsys.readouterr().out
    result = json.loads((out / "comparison.json").read_text())
    assert result["domains"] == ["insecure_code", "gore_movie_trivia", "custom"]
    assert result["artifacts"]["custom"]["metadata"] == {"model": "tiny", "domain": "custom"}
    assert result["artifacts"]["custom"]["sha256"].startswith("sha256:") and "versions" in result
    sets = {n: DirectionSet.load(artifacts / f"{n}.safetensors") for n in result["domains"]}
    expected = domain_matrices(sets)
    np.testing.assert_allclose(np.array(result["domain_matrices"]["1"]), expected[1].numpy(), atol=1e-7)
    with open(out / "domains" / "layer_01.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", *result["domains"]]
    np.testing.assert_allclose(np.array(rows[2][1:], dtype=float), expected[1, 1].numpy(), atol=1e-6)
    np.testing.assert_allclose(
        np.array(result["cross_layer_matrices"]["insecure_code__vs__custom"]),
        layer_matrix(sets["insecure_code"], sets["custom"]).numpy(),
        atol=1e-7,
    )
    for stem in [
        "domains/layer_00",
        "domains/layer_02",
        "domains/grid",
        "layers/custom",
        "layers/grid",
        "layers/insecure_code__vs__custom",
    ]:
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert result["random_null"]["std"] == pytest.approx(1 / math.sqrt(32))
    nulls = result["per_sample_nulls"]["insecure_code"]
    assert nulls["n_samples"] == {"misaligned": 7, "aligned": 6}
    assert nulls["consistency_min_cos"] > 0.9999  # the folders reproduce the artifact's direction
    assert len(nulls["split_half"]["mean"]) == 3 and nulls["shuffled_label"]["n_perm"] == 5
    assert result["warnings"] == []
    assert not list(out.rglob("*.tmp"))


def test_cli_warns_when_per_sample_files_do_not_belong(artifacts, tmp_path, capsys):
    direction_set(torch.randn(3, 32), model="tiny").save(artifacts / "insecure_code.safetensors")
    assert (
        main(
            [
                "--directions",
                str(artifacts),
                "--out",
                str(tmp_path / "o"),
                "--n-perm",
                "2",
                "--n-splits",
                "1",
                "--formats",
                "png",
            ]
        )
        == 0
    )
    assert "insecure_code: per-sample files give a direction at cos" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "no such folder"),
        (lambda root: root.mkdir(), "no direction artifacts"),
        (
            lambda root: (root.mkdir(), (root / "x.safetensors").write_text("junk")),
            "x.safetensors: not a direction artifact",
        ),
        (
            lambda root: (
                direction_set(torch.ones(2, 4)).save(root / "a.safetensors"),
                direction_set(torch.ones(3, 4)).save(root / "b.safetensors"),
            ),
            "mismatched layers",
        ),
        (
            lambda root: (
                direction_set(torch.ones(2, 4)).save(root / "a.safetensors"),
                direction_set(torch.ones(2, 5)).save(root / "b.safetensors"),
            ),
            "mismatched d_model",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, setup, message):
    root = tmp_path / "dirs"
    setup(root)
    assert run_cli(main, ["--directions", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_rejects_unknown_cross_domain(tmp_path, capsys):
    direction_set(torch.ones(2, 4)).save(tmp_path / "custom.safetensors")
    assert run_cli(main, ["--directions", str(tmp_path), "--out", str(tmp_path / "o"), "--cross", "custom:nope"]) == 2
    assert "--cross custom:nope: no such domain" in capsys.readouterr().err
