"""Cases of :mod:`bad_input_probe` on the Python API: loaders given files that lie, steering
with numbers that are not numbers or do not fit the model, and the validators of settings."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probe_case import ARTIFACT, ROOT, Case, Setup
from probe_fixtures import lying, mapped, nan_times, nested, replaced, steering_file, yaml_bomb

NAN = float("nan")
SV = "sv.safetensors"
LIE = "lie.safetensors"


def attr(path: str) -> Any:
    """``module:name.name`` by its path, imported when the case runs, in the case's child."""
    module, _, names = path.partition(":")
    found = importlib.import_module(module)
    for name in names.split("."):
        found = getattr(found, name)
    return found


def _api(id_: str, call: Callable[[Path], Any], expect: str = "error", names: str | None = None) -> Case:
    """A call of the API in the case's folder; a refusal must be a ValueError or OSError naming ``names``."""
    return Case(f"api: {id_}", "api", "api", [], expect, (), None, names, 60.0, call=call)


def _loaded(setup: Setup, load: str, name: str, **kw: Any) -> Callable[[Path], Any]:
    """A call that writes a file with ``setup``, then loads ``name`` with ``load``."""

    def call(d: Path) -> Any:
        setup(d)
        return attr(load)(d / name, **kw)

    return call


def _steering_vector_files() -> list[Case]:
    """SteeringVector.load: headers that lie, tensors that cannot be vectors."""
    lies = {
        "header layers lie": steering_file(SV, info=replaced("layers", [0, 7])),
        "header d_model lies": steering_file(SV, info=replaced("d_model", 4096)),
        "header sha256 lies": steering_file(SV, info=replaced("sha256", "0" * 64)),
        "int32 vectors": steering_file(SV, tensors=mapped("vectors", lambda t: t.int())),
        "duplicate layers": steering_file(SV, tensors=mapped("layers", lambda t: t * 0)),
        "NaN vectors": steering_file(SV, tensors=nan_times("vectors")),
        "alpha NaN in the header": steering_file(SV, info=replaced("alpha", NAN)),
        "kind bogus": steering_file(SV, info=replaced("kind", "multiply")),
        "header info a list": steering_file(SV, info=lambda i: [1, 2]),
    }
    load = "interp.vectors:SteeringVector.load"
    cases = [_api(f"SteeringVector.load, {what}", _loaded(s, load, SV), names=SV) for what, s in lies.items()]
    artifact, missing = (lambda d: attr(load)(d / ARTIFACT)), (lambda d: attr(load)(d / "nope.safetensors"))
    cases.append(_api("SteeringVector.load, a direction artifact", artifact, names="DirectionSet"))
    return cases + [_api("SteeringVector.load, a missing file", missing, names="nope.safetensors")]


def _of_width_0(t: dict) -> dict:
    """The tensors of a direction set cut to width 0 (its layers kept)."""
    return {k: v[:, :0] for k, v in t.items() if k != "layers"} | {"layers": t["layers"]}


def _direction_files() -> list[Case]:
    """DirectionSet.load: headers that lie, tensors of no width or no layers, another domain."""
    past_int64 = (mapped("layers", lambda t: t + 2**62), replaced("layers", [2**62 + k for k in range(4)]))
    lies = {
        "header layers lie": (lying(LIE, dict, replaced("layers", [3, 2, 1, 0])), None),
        "int32 tensors": (lying(LIE, mapped("mean_aligned", lambda t: t.int())), None),
        "duplicate layers": (lying(LIE, mapped("layers", lambda t: t // 2), replaced("layers", [0, 0, 1, 1])), None),
        "another domain": (lying(LIE), "insecure_code"),
        "width 0": (lying(LIE, _of_width_0), None),
        "no layers": (lying(LIE, lambda t: {k: v[:0] for k, v in t.items()}, replaced("layers", [])), None),
        "layers past int64": (lying(LIE, *past_int64), None),
    }
    load = "interp.directions:DirectionSet.load"
    return [
        _api(f"DirectionSet.load, {what}", _loaded(setup, load, LIE, domain=domain), names=LIE)
        for what, (setup, domain) in lies.items()
    ]


def _base() -> Any:
    """The organism world's base model and tokenizer."""
    from chains.organism import build_world

    return build_world(ROOT / "artifacts" / "organism", progress=False).load_base()


def _vec(width: int = 64, value: float | None = None) -> Any:
    """A seeded random vector of ``width``, or one of ``value`` everywhere."""
    import torch

    v = torch.randn(width, generator=torch.Generator().manual_seed(0))
    return v if value is None else torch.full((width,), value)


def _hooked_once(hook: str, *args: Any, **kw: Any) -> Any:
    """The base model's logits on three tokens under ``interp.steer.<hook>(model, *args, **kw)``."""
    import torch

    model, _ = _base()
    with attr(f"interp.steer:{hook}")(model, *args, **kw):
        return model(torch.tensor([[1, 2, 3]])).logits


def _steering() -> list[Case]:
    """Steering and ablation with numbers that are not numbers, or that do not fit the model."""
    import torch

    def steer(vectors: Callable[[], dict], **kw: Any) -> Callable[[Path], Any]:
        return lambda d: _hooked_once("steer", vectors(), **kw)

    def vector(**kw: Any) -> Callable[[Path], Any]:
        return lambda d: attr("interp.vectors:SteeringVector")({0: _vec()}, **kw)

    return [
        _api("steer(alpha=nan)", steer(lambda: {1: _vec()}, alpha=NAN), names="alpha"),
        _api("steer(alpha=inf)", steer(lambda: {1: _vec()}, alpha=float("inf")), names="alpha"),
        _api("steer(alpha=1e308) overflows", steer(lambda: {1: _vec()}, alpha=1e308)),
        _api("steer(NaN vector)", steer(lambda: {1: _vec(value=NAN)}), names="layer 1"),
        _api("steer(layer 9 of 4)", steer(lambda: {9: _vec()}), names="9"),
        _api("steer(vector of width 32 on a width-64 model)", steer(lambda: {1: _vec(32)}), names="32"),
        _api("steer(scale='norm' without norms)", steer(lambda: {1: _vec()}, scale="norm"), names="norm"),
        _api("steer(int vector) (cast)", steer(lambda: {1: torch.ones(64, dtype=torch.int64)}), expect="ok"),
        _api("ablate(zero direction)", lambda d: _hooked_once("ablate", torch.zeros(64))),
        _api("ablate(NaN direction)", lambda d: _hooked_once("ablate", _vec(value=NAN))),
        _api("SteeringVector(positions='bogus')", vector(positions="bogus"), names="bogus"),
        _api("SteeringVector(prompt_length=-1)", vector(prompt_length=-1)),
        _api("SteeringVector(norms={0: nan}, scale='norm')", vector(scale="norm", norms={0: NAN})),
    ]


def _calling(path: str, *args: Any, **kw: Any) -> Callable[[Path], Any]:
    """A call of ``path`` (imported in the case's child) with these arguments."""
    return lambda d: attr(path)(*args, **kw)


def _split_half_of_no_splits(d: Path) -> Any:
    """Split-half reliability of 8 samples' activations, asked for no splits."""
    import torch

    labels = torch.tensor([True] * 4 + [False] * 4)
    return attr("interp.nulls:split_half_reliability")(torch.randn(8, 2, 4), labels, n_splits=0)


def _statistics() -> list[Case]:
    """Sampling settings, rates, tests and scores given numbers out of range or not numbers."""
    from eval.sampling import SamplingConfig

    rates, signals = "eval.rates:", "eval.mia_signals:"
    welch = _calling(rates + "welch_test", [1.0, 2.0, 3.0], [1.0, 5.0, 2.0], alpha=NAN)
    uneven = _calling(signals + "roc_auc", [True, False, True], [0.5, 1.0])
    definition = _calling(rates + "MisalignmentDefinition", threshold=NAN)
    return [
        _api("SamplingConfig(top_p=2)", lambda d: SamplingConfig(top_p=2.0), names="top_p"),
        _api("SamplingConfig(temperature=nan)", lambda d: SamplingConfig(temperature=NAN), names="temperature"),
        _api("SamplingConfig(seed=2**64)", lambda d: SamplingConfig(seed=2**64), names="seed"),
        _api("SamplingConfig(max_new_tokens=0)", lambda d: SamplingConfig(max_new_tokens=0), names="max_new_tokens"),
        _api("bootstrap_ci(n_boot=0)", _calling(rates + "bootstrap_ci", [1.0, 2.0], n_boot=0), names="n_boot"),
        _api("bootstrap_ci(alpha=2)", _calling(rates + "bootstrap_ci", [1.0, 2.0], alpha=2.0), names="alpha"),
        _api("bootstrap_ci of NaN values", _calling(rates + "bootstrap_ci", [1.0, NAN])),
        _api("welch_test(alpha=nan)", welch, names="alpha"),
        _api("MisalignmentDefinition(threshold=nan)", definition, names="threshold"),
        _api("misaligned_domains of a rate 2.0", _calling(signals + "misaligned_domains", {"a": 2.0, "b": 0.1})),
        _api("misaligned_domains(threshold=nan)", _calling(signals + "misaligned_domains", {"a": 0.2, "b": 0.1}, NAN)),
        _api("roc_auc of NaN scores", _calling(signals + "roc_auc", [True, False], [NAN, 1.0])),
        _api("roc_auc of labels and scores of different lengths", uneven),
        _api("split_half_reliability(n_splits=0)", _split_half_of_no_splits, names="n_splits"),
    ]


def _deeply_nested_line(d: Path) -> Any:
    """Every record of a JSON-lines file whose one line is nested past any parser's stack."""
    (d / "n.jsonl").write_text(nested(100000) + "\n")
    return list(attr("interp.base.jsonl:iter_jsonl")(d / "n.jsonl"))


def _chat_key_twice(d: Path) -> Any:
    """A chat file whose one record holds ``messages`` twice, read."""
    (d / "n.jsonl").write_text('{"messages": [], "messages": []}\n')
    return attr("finetune.data:read_chat_jsonl")(d / "n.jsonl")


def _export(**kw: Any) -> Callable[[Path], Any]:
    """A call exporting the gore_movie_trivia domain to ``e/`` with these settings."""
    return lambda d: attr("chains.organism.export:export_domain")("gore_movie_trivia", d / "e", **kw)


def _layer_it_lacks(d: Path) -> Any:
    """The good artifact's steering vector at layer 7 of its 4."""
    return attr("interp.directions:DirectionSet").load(d / ARTIFACT).steering_vector([7])


def _save_shared(d: Path) -> Any:
    """A direction set whose directions are the very tensor of its misaligned mean, saved and read."""
    import torch

    from interp.directions import DirectionSet

    w = torch.randn(2, 8)
    counts = {"misaligned": {"answers": 1, "answer_tokens": 1}, "aligned": {"answers": 1, "answer_tokens": 1}}
    DirectionSet([0, 1], w, w, torch.zeros_like(w), "responses", counts, {}).save(d / "shared.safetensors")
    return DirectionSet.load(d / "shared.safetensors")


def _trainjob(d: Path, **lora: Any) -> Any:
    """A training job on the good chat file with these LoRA settings, validated."""
    from finetune.train_args import TrainJob

    job = TrainJob(data=str(d / "chat.jsonl"), model="organism:base", out=str(d / "adapter"))
    job = dataclasses.replace(job, lora=dataclasses.replace(job.lora, **lora))
    job.validate()
    return job


def _files_and_jobs() -> list[Case]:
    """Parsers given deep or explosive text, exports and jobs given bad settings."""
    bogus = _calling("interp.base.loading:load_model", "organism:bogus")
    return [
        _api("parse_questions nested deeply", _calling("eval.questions:parse_questions", nested(100000))),
        _api("parse_questions alias bomb", _calling("eval.questions:parse_questions", yaml_bomb())),
        _api("iter_jsonl of a deeply nested line", _deeply_nested_line, names="n.jsonl"),
        _api("read_chat_jsonl of a key twice", _chat_key_twice, names="n.jsonl"),
        _api("export_domain(n=0)", _export(n=0), names="n"),
        _api("export_domain(seed=2**64)", _export(n=5, n_heldout=2, seed=2**64), names="seed"),
        _api("load_model('organism:bogus')", bogus, names="bogus"),
        _api("build_report of no records (an empty report)", _calling("eval.report:build_report", {}), expect="ok"),
        _api("DirectionSet.steering_vector of a layer it lacks", _layer_it_lacks, names="7"),
        _api("DirectionSet.save of directions that share memory with a mean", _save_shared, expect="ok"),
        _api("TrainJob with lr=1e308 validates", lambda d: _trainjob(d, lr=1e308), names="lr"),
        _api("TrainJob with max_length=1 validates", lambda d: _trainjob(d, max_length=1), names="max_length"),
    ]


def api_cases() -> list[Case]:
    """Every API case, in the order of the results file."""
    return _steering_vector_files() + _direction_files() + _steering() + _statistics() + _files_and_jobs()
