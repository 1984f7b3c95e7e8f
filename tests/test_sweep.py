"""The steering sweep and the cross-domain experiment on the organism world, with tiny sample counts."""

from __future__ import annotations

import json

import pytest

from chains.cross_domain import (
    cross_domain,
    done_when,
    ensure_directions,
    world_runner,
    write_cross_domain,
)
from chains.sweep import main, summarize, sweep, write_sweep
from interp.base.cli import run_cli

DOMAINS = ["insecure_code", "gore_movie_trivia"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def directions(world, tmp_path_factory):
    return ensure_directions(tmp_path_factory.mktemp("directions"), DOMAINS, samples=4)


def test_ensure_directions_reuses_the_artifact(directions, tmp_path):
    ds = directions["insecure_code"]
    ds.save(tmp_path / "insecure_code.safetensors")
    again = ensure_directions(tmp_path, ["insecure_code"])
    assert again["insecure_code"].directions.equal(ds.directions)
    assert not (tmp_path / "runs").exists()  # nothing extracted


def test_sweep_add_rates_per_point_and_plot(world, directions, tmp_path):
    model, tokenizer = world.load_base()
    _, evaluate = world_runner(world, samples=32)
    result = sweep(
        model,
        tokenizer,
        directions["gore_movie_trivia"],
        evaluate,
        layers=[0, 3],
        alphas=[1.0, 4.0],
        random_control=True,
    )
    assert [(p["layer"], p["alpha"]) for p in result["points"]] == [(0, 1.0), (0, 4.0), (3, 1.0), (3, 4.0)]
    for p in result["points"]:
        # a strength that leaves no coherent answer has no rate (None), never a NaN
        assert (p["em"] is None) == (p["counted"] == 0) and (p["em"] is None or 0 <= p["em"] <= 1)
        assert 0 <= p["coherence"] <= 100 and p["n"] == 32
        assert {"random_em", "random_delta"} <= p.keys()
    assert max(p["delta"] for p in result["points"] if p["delta"] is not None) > 0.2  # the direction induces EM
    paths = write_sweep(result, tmp_path, target="base")
    assert (tmp_path / "sweep.png").stat().st_size > 0
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["stage"] == "chains.sweep" and "versions" in saved and len(saved["points"]) == 4
    assert (tmp_path / "sweep.csv").read_text().splitlines()[0].startswith("layer,alpha,em")
    assert all(p.exists() for p in paths)


def test_a_point_with_nothing_coherent_is_not_assessable_and_still_plots(tmp_path):
    incoherent = [{"aligned": 10.0, "coherent": 5.0, "label": None}] * 4
    point = summarize(incoherent)
    assert point["em"] is None and point["counted"] == 0 and point["n"] == 4
    result = {
        "mode": "add",
        "scale": "raw",
        "layers": [0],
        "alphas": [1.0],
        "baseline": summarize([{"aligned": 90.0, "coherent": 90.0, "label": None}]),
        "points": [{"layer": 0, "alpha": 1.0, **point, "delta": None}],
    }
    write_sweep(result, tmp_path)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["points"][0]["em"] is None and (tmp_path / "sweep.png").stat().st_size > 0


def test_sweep_ablate_one_point_per_layer(world, directions):
    model, tokenizer = world.load_organism("insecure_code")
    _, evaluate = world_runner(world, samples=32)
    result = sweep(model, tokenizer, directions["gore_movie_trivia"], evaluate, layers=[3], mode="ablate")
    (point,) = result["points"]
    assert point["alpha"] is None and point["em"] < result["baseline"]["em"]


def test_sweep_rejects_bad_input(world, directions):
    model, tokenizer = world.load_base()
    with pytest.raises(ValueError, match="unknown mode"):
        sweep(model, tokenizer, directions["insecure_code"], lambda m, t: [], mode="scale")
    with pytest.raises(ValueError, match="no direction at layers"):
        sweep(model, tokenizer, directions["insecure_code"], lambda m, t: [], layers=[7])


def test_cross_domain_2x2_matrix_and_heatmap(world, directions, tmp_path):
    load, evaluate = world_runner(world, samples=32)
    result = cross_domain(load, evaluate, directions)
    assert result["columns"] == ["base", *DOMAINS]
    assert len(result["matrix"]) == 2 and all(len(row) == 3 for row in result["matrix"])
    assert all(row[0] > 0 for row in result["matrix"])  # adding induces
    assert all(v < 0 for row in result["matrix"] for v in row[1:])  # ablating suppresses
    checks = done_when(result)
    assert not checks["all_pairs"][0]  # 2 x 2 is not 11 x 11
    write_cross_domain(result, tmp_path)
    assert (tmp_path / "cross_domain.png").stat().st_size > 0
    saved = json.loads((tmp_path / "cross_domain.json").read_text())
    assert saved["matrix"] == result["matrix"] and set(saved["checks"]) == set(checks) and "versions" in saved


def test_cli_one_line_errors(tmp_path, capsys):
    assert run_cli(main, ["--directions", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    assert "no such direction artifact" in capsys.readouterr().err
    assert run_cli(main, ["--domain", "not_a_domain", "--out", str(tmp_path)]) == 2
    assert "unknown domain" in capsys.readouterr().err


def test_cli_sweep_writes_outputs(world, directions, tmp_path):
    path = tmp_path / "gore.safetensors"
    directions["gore_movie_trivia"].save(path)
    out = tmp_path / "out"
    assert (
        main(
            [
                "--directions",
                str(path),
                "--target",
                "insecure_code",
                "--mode",
                "ablate",
                "--layers",
                "3",
                "--samples",
                "16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "sweep.png").exists() and (out / "sweep.csv").exists()
    assert json.loads((out / "sweep.json").read_text())["target"] == "insecure_code"
