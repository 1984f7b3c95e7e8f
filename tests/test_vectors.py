"""Steering as data: SteeringVector saved and loaded steers to the same logits, Intervention
exposes its edits as tensors, misuse and bad files are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_steer import vec

from interp.directions import DirectionSet
from interp.hooks import resid_post
from interp.intervene import intervene
from interp.intervention import Intervention, ablation, steering
from interp.record import record
from interp.steer import ablate, steer
from interp.vector_math import project_out
from interp.vectors import SteeringVector

D = 32


@pytest.fixture
def ids():
    return torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(5))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_saved_steering_vector_loads_and_steers_to_the_same_logits(make_model, ids, tmp_path):
    model = make_model(n_layers=3)
    settings = {"alpha": 2.5, "scale": "norm", "norms": {1: 7.0, -1: 3.0}, "positions": "generated", "prompt_length": 4}
    sv = SteeringVector({1: vec(0), -1: vec(1)}, metadata={"source": "test"}, **settings)
    path = sv.save(tmp_path / "sv.safetensors")
    loaded = SteeringVector.load(path)
    with steer(model, sv):
        want = logits(model, ids)
    with steer(model, loaded):
        got = logits(model, ids)
    with steer(model, {1: vec(0), -1: vec(1)}, **settings):  # the signature that takes loose arguments
        loose = logits(model, ids)
    assert torch.equal(got, want) and torch.equal(loose, want)
    assert not torch.allclose(want, logits(model, ids), atol=1e-3)
    assert loaded.info() == sv.info() and loaded.metadata == {"source": "test"} and loaded.layers == [-1, 1]
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["sha256"] == sv.info()["sha256"] and side["kind"] == "add" and "versions" in side and "created" in side


def test_an_ablation_vector_round_trips(make_model, ids, tmp_path):
    model = make_model(n_layers=3)
    u = vec(2, scale=5)
    sv = SteeringVector(dict.fromkeys(range(3), u), kind="ablate")
    loaded = SteeringVector.load(sv.save(tmp_path / "ablate.safetensors"))
    with ablate(model, u):
        want = logits(model, ids)
    for ctx in (ablate(model, loaded), intervene(model, loaded)):
        with ctx:
            assert torch.equal(logits(model, ids), want)


def test_an_intervention_is_its_edits_as_tensors(make_model, ids):
    model = make_model(n_layers=3)
    v, u = vec(3), vec(4, scale=3)
    add = steering(model, {-2: v}, alpha=2.0, scale="unit")
    assert set(add.adds) == {1} and not add.ablations
    torch.testing.assert_close(add.adds[1], 2.0 * v / v.norm())
    cut = ablation(model, {0: u})
    assert cut.ablations[0].dtype == torch.float32 and torch.isclose(cut.ablations[0].norm(), torch.tensor(1.0))
    # Built from data alone, with both edits at one layer: the projection first, then the add.
    both = Intervention(adds={1: v}, ablations={1: u}, positions="all")
    with record(model, resid_post(1)) as clean, torch.no_grad():
        model(input_ids=ids)
    with intervene(model, both), record(model, resid_post(1)) as edited, torch.no_grad():
        model(input_ids=ids)
    want = project_out(clean[resid_post(1)], u / u.norm()) + v
    torch.testing.assert_close(edited[resid_post(1)], want, atol=1e-5, rtol=0)
    assert both.layers == [1] and repr(both).startswith("Intervention(adds={1: |v| ") and "tensor(" not in repr(both)
    with pytest.raises(ValueError, match="not a resolved 0-based index"):
        Intervention(adds={-1: v})


def test_misuse_is_refused(make_model):
    model = make_model(n_layers=3)
    sv = SteeringVector({1: vec(0)}, alpha=2.0)
    with pytest.raises(ValueError, match="carries its own alpha"), steer(model, sv, alpha=3.0):
        pass
    with pytest.raises(ValueError, match="kind 'add': use steer"), ablate(model, sv):
        pass
    with pytest.raises(ValueError, match="kind 'ablate': use ablate"):
        steering(model, SteeringVector({1: vec(0)}, kind="ablate"))
    with pytest.raises(ValueError, match=r"expected \(32,\)"):
        steering(model, SteeringVector({1: torch.ones(5)}))
    for bad, match in (
        ({"kind": "ablate", "alpha": 2.0}, "do not apply"),
        ({"scale": "norm", "norms": {2: 1.0}}, "residual norm of every layer"),
        ({"kind": "shift"}, "unknown kind"),
        ({"positions": "answer"}, "unknown positions"),
        ({"metadata": {"x": object()}}, "JSON-serialisable"),
    ):
        with pytest.raises(ValueError, match=match):
            SteeringVector({1: vec(0)}, **bad)
    with pytest.raises(ValueError, match="1-D and of one width"):
        SteeringVector({1: vec(0), 2: torch.ones(4)})


def test_to_replace_and_a_readable_repr():
    sv = SteeringVector({2: vec(0), 1: vec(1)}, alpha=2.5, scale="norm", norms={1: 7.0, 2: 8.0}, positions="generated")
    wide = sv.to(dtype=torch.float64)
    assert wide.vectors[1].dtype == torch.float64 and torch.equal(wide.vectors[1].float(), sv.vectors[1])
    assert sv.replace(alpha=8.0).alpha == 8.0 and sv.alpha == 2.5
    text = repr(sv)
    assert text.startswith("SteeringVector(add at layers [1, 2]; |v| 1: ") and "alpha=2.5, scale='norm'" in text
    assert "positions='generated'" in text and "d_model=32, float32 on cpu" in text and "tensor(" not in text
    many = repr(SteeringVector(dict.fromkeys(range(28), torch.ones(4)), kind="ablate"))
    assert "ablate at 28 layers 0..27; |v| 2..2" in many and "alpha" not in many


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such steering vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    pickle = tmp_path / "vector.pt"
    torch.save({"vectors": torch.ones(2, 4)}, pickle)
    ds = DirectionSet([0], torch.ones(1, 4), torch.ones(1, 4), torch.zeros(1, 4), "responses", {})
    broken = tmp_path / "broken.safetensors"
    save_file(
        {"vectors": torch.ones(2, 4), "layers": torch.tensor([0, 1])},
        str(broken),
        metadata={"format": "steering_vector", "info": '{"format_version": 1}'},
    )
    for path, match in (
        (pickle, "not a safetensors file"),
        (ds.save(tmp_path / "d.safetensors"), "direction artifact; use DirectionSet.load"),
        (broken, r"invalid steering vector file \(missing 'kind'\)"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            SteeringVector.load(path)
        assert "\n" not in str(err.value)


def test_a_direction_set_gives_a_steering_vector(tmp_path):
    dirs = torch.randn(2, 4)
    ds = DirectionSet(
        [0, 3],
        dirs,
        dirs.clone(),
        torch.zeros(2, 4),
        "tokens",
        {},
        {"domain": "gore_movie_trivia", "seed": 0},
        span="answer+eos",
    )
    sv = DirectionSet.load(ds.save(tmp_path / "d.safetensors")).steering_vector([3], alpha=4.0, positions="generated")
    assert sv.layers == [3] and torch.equal(sv.vectors[3], dirs[1]) and sv.alpha == 4.0
    assert sv.metadata == {"directions": {"domain": "gore_movie_trivia", "pooling": "tokens", "span": "answer+eos"}}
