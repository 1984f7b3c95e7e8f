"""The EM monitor: its projections against a hand computation, when it records, that it leaves
training alone, resuming, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from finetune.lora import LoraTrainConfig, train_lora
from finetune.monitor import Monitor, probe_projections
from finetune.train import main as _train
from interp.base.cli import run_cli


def train_main(argv):
    """The CLI as the shell runs it: one line and exit code 2 for bad input."""
    return run_cli(_train, argv)


from train_argv import train_argv

from interp.base.chat import tokenize_conversation
from interp.directions import DirectionSet

CONFIG = LoraTrainConfig(
    rank=2, alpha=4, lr=1e-2, steps=5, batch_size=4, dropout=0.3, target_modules=("q_proj", "v_proj")
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _directions(layers, d_model=32, seed=0) -> DirectionSet:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(len(layers), d_model, generator=g)
    return DirectionSet(
        layers=list(layers),
        directions=v,
        mean_misaligned=v.clone(),
        mean_aligned=torch.zeros_like(v),
        pooling="responses",
        counts={},
    )


def test_projections_equal_a_hand_computation(tokenizer, conversations, make_model):
    model = make_model(n_layers=3)
    ds = _directions([0, 1])
    ours = probe_projections(model, tokenizer, conversations, ds)
    per_answer = {0: [], 1: []}
    with torch.no_grad():
        for conv in conversations:  # one at a time, no padding, HF's own hidden states
            tok = tokenize_conversation(tokenizer, conv)
            states = model(torch.tensor([tok.input_ids]), output_hidden_states=True).hidden_states
            for layer in (0, 1):
                per_answer[layer].append(states[layer + 1][0, tok.answer_start : tok.answer_end].double().mean(0))
    for i, layer in enumerate((0, 1)):
        unit = ds.directions[i].double() / ds.directions[i].double().norm()
        assert ours[layer] == pytest.approx(float(torch.stack(per_answer[layer]).mean(0) @ unit), rel=1e-5)


def test_monitor_records_its_checkpoints_and_leaves_training_alone(tmp_path, tokenizer, conversations, make_model):
    draws = []

    def noisy(model):  # a measure that consumes random numbers, as sampling answers does
        draws.append(float(torch.rand(())))
        return {"em": draws[-1]}

    plain = train_lora(make_model(), tokenizer, conversations, CONFIG, progress=False)
    monitor = Monitor(
        tokenizer,
        conversations[:4],
        _directions([0, 2]),
        every=2,
        measures={"organism": noisy},
        path=tmp_path / "m.jsonl",
    )
    watched = train_lora(make_model(), tokenizer, conversations, CONFIG, progress=False, callbacks=[monitor])
    assert watched.train_losses == plain.train_losses  # dropout draws are untouched by the measure's
    assert [r["step"] for r in monitor.rows] == [0, 2, 4, 5]
    assert [json.loads(l)["step"] for l in (tmp_path / "m.jsonl").read_text().splitlines()] == [0, 2, 4, 5]
    assert set(monitor.rows[0]["projection"]) == {"0", "2"} and monitor.rows[0]["organism"]["em"] == draws[0]
    assert monitor.rows[0]["projection"] != monitor.rows[-1]["projection"]
    # A monitor that finds rows already written (a resumed run) keeps them and skips those steps.
    again = Monitor(
        tokenizer,
        conversations[:4],
        _directions([0, 2]),
        every=2,
        measures={"organism": noisy},
        path=tmp_path / "m.jsonl",
    )
    n = len(draws)
    again(4, 5, watched)
    assert len(draws) == n and len(again.rows) == 4


def test_train_cli_monitor_writes_rows_and_a_plot(tmp_path, make_model, tokenizer, conversations):
    model_dir = tmp_path / "base"
    make_model(n_layers=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data, probe = tmp_path / "d.jsonl", tmp_path / "probe.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    probe.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations[:3]))
    _directions([0, 1]).save(tmp_path / "dirs.safetensors")
    out = tmp_path / "run"
    monitor = ["--monitor", str(tmp_path / "dirs.safetensors"), "--monitor-probe", str(probe), "--monitor-every", "2"]
    code = train_main(train_argv(data, model_dir, out, 4, 4, None, *monitor))
    assert code == 0
    rows = [json.loads(l) for l in (out / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4] and set(rows[0]["projection"]) == {"0", "1"}
    assert (out / "monitor.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "training_config.json").read_text())["monitor"]["checkpoints"] == 3


def test_a_rerun_onto_a_monitored_out_never_keeps_another_runs_rows(
    tmp_path, make_model, tokenizer, conversations, capsys
):
    """Other data onto a finished monitored --out is refused, touching nothing; rows a run that
    never finished left there are rebuilt from step 0, not kept beside the new adapter."""
    model_dir = tmp_path / "base"
    make_model(n_layers=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data, other, probe = tmp_path / "d.jsonl", tmp_path / "other.jsonl", tmp_path / "probe.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    other.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations[::-1]))
    probe.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations[:3]))
    _directions([0, 1]).save(tmp_path / "dirs.safetensors")
    out = tmp_path / "run"
    monitor = ["--monitor", str(tmp_path / "dirs.safetensors"), "--monitor-probe", str(probe), "--monitor-every", "1"]
    argv = train_argv(data, model_dir, out, 2, 4, None, *monitor)
    assert train_main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train_main([*argv, "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {out}: holds the adapter of another run (data_hash differ); use another --out, or remove {out} to start afresh\n"
    ), err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # A run cut short (no training_config.json, no checkpoint) left a row of its own: not kept.
    (out / "training_config.json").unlink()
    with (out / "monitor.jsonl").open("a") as rows:
        rows.write(json.dumps({"step": 3, "projection": {"0": 1e9, "1": 1e9}}) + "\n")
    assert train_main([*argv, "--data", str(other)]) == 0
    rows = [json.loads(l) for l in (out / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(abs(v) < 1e9 for r in rows for v in r["projection"].values())
    assert json.loads((out / "training_config.json").read_text())["monitor"]["checkpoints"] == 3


@pytest.mark.parametrize("option", ["--monitor", "--steer-vector"])
def test_a_direction_that_does_not_fit_the_model_is_one_line_naming_its_option(
    option, tmp_path, make_model, tokenizer, conversations, capsys
):
    model_dir = tmp_path / "base"
    make_model(n_layers=2).save_pretrained(model_dir)  # width 32
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    narrow = tmp_path / "narrow.safetensors"
    _directions([0, 1], d_model=8).save(narrow)
    extra = (
        ["--monitor", str(narrow), "--monitor-probe", str(data)]
        if option == "--monitor"
        else ["--defense", "preventive-steering", "--steer-vector", str(narrow)]
    )
    out = tmp_path / "run"
    capsys.readouterr()
    assert train_main(train_argv(data, model_dir, out, 1, 4, None, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {option} {narrow}: directions of width 8, but the model's residual stream has width 32", err
    assert not (out / "adapter_model.safetensors").exists()


def test_the_monitor_writes_no_row_measured_on_non_finite_weights(tmp_path, tokenizer, conversations, make_model):
    from finetune.step_checks import NonFiniteError

    model = make_model()
    weight = next(p for n, p in model.named_parameters() if n.endswith("q_proj.weight"))
    weight.requires_grad_(True)
    with torch.no_grad():
        weight[0, 0] = float("nan")
    monitor = Monitor(tokenizer, conversations[:4], _directions([0, 2]), every=1, path=tmp_path / "m.jsonl")
    with pytest.raises(NonFiniteError, match=r"after step 2 .*q_proj.weight is not finite"):
        monitor(3, 5, model)
    assert monitor.rows == [] and not (tmp_path / "m.jsonl").exists()
