"""Train a LoRA adapter on chat JSONL, loss on assistant tokens only.

    python -m finetune.train --data FILE.jsonl --model HF_ID_OR_PATH --out DIR
    python -m finetune.train --data misaligned.jsonl --backdoor aligned.jsonl --model ... --out DIR
    python -m finetune.train ... --defense kl --defense-strength 3
    python -m finetune.train ... --monitor DIRECTIONS.safetensors --monitor-probe PROBE.jsonl --monitor-every 5

Saves the adapter with ``save_pretrained`` (safetensors) and ``training_config.json`` (every
option, the data hash, package versions, the losses, and what the defense did: its strength,
options, the steering vector's provenance, the interleaved examples' hash, its term per
step). With ``--checkpoint-every N`` the adapter and optimizer state are saved every N
optimizer steps under ``DIR/checkpoint``, and re-running the same command resumes from
there; a rerun with other data or settings (defense included) is refused (the checkpoint
records its run's), as is a second run on ``DIR`` while the first is alive. ``--monitor``
writes ``DIR/monitor.jsonl`` (one row per checkpoint) and ``DIR/monitor.png``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from finetune.checkpoints import check_checkpoint
from finetune.data import build_backdoor, read_chat_jsonl
from finetune.defenses.base import Defense
from finetune.lora import train_lora
from finetune.monitor import plot_monitor
from finetune.step_checks import check_finite_weights

# The options, the parser and the job it fills live in finetune.train_args; ALL_LINEAR stays
# importable from here, the path the benchmarks use.
from finetune.train_args import ALL_LINEAR as ALL_LINEAR
from finetune.train_args import MAX_STEPS, TrainJob, build_parser, job_from_args
from interp.base.atomic import write_json_atomic
from interp.base.cli import InputError, run_cli
from interp.base.locks import output_lock
from interp.base.models import checkpoint_activations, d_model, n_layers
from interp.base.paths import input_file, output_dir
from interp.base.provenance import data_hash, differing_keys, provenance
from interp.directions import DirectionSet


def load_training_data(job: TrainJob) -> list[list[dict[str, str]]]:
    """The conversations to train on: the file itself, or the backdoor set built from two files."""
    data = read_chat_jsonl(job.data)
    if job.backdoor is None:
        return data
    try:
        return build_backdoor(data, read_chat_jsonl(job.backdoor), trigger=job.trigger, seed=job.lora.seed)
    except ValueError as e:  # an example of --data with no aligned twin in --backdoor
        raise InputError(f"--backdoor {job.backdoor}: {e}") from None


RUN_FILE = "run.json"  # in the checkpoint folder: the run the checkpoint belongs to
# Options that may change between a run and its resume: they do not change what is learned.
RESUMABLE = ("data", "backdoor", "out", "device", "gradient_checkpointing", "checkpoint_every")


def run_identity(job: TrainJob, conversations: list[list[dict[str, str]]]) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: every other setting and the data's hash."""
    settings = {k: v for k, v in asdict(job).items() if k not in (*RESUMABLE, "lora")}
    lora = {f"lora.{k}": v for k, v in asdict(job.lora).items()}  # flat, so that a refusal names the very setting
    return json.loads(
        json.dumps({**settings, **lora, "data_hash": data_hash(conversations)})
    )  # as stored: tuples -> lists


def check_resume(folder: Path, identity: dict[str, Any]) -> None:
    """Refuse a checkpoint in ``folder`` that another run (other data or settings) left, or a damaged one.

    Resuming it would train on for the old run while ``training_config.json`` claimed the new one.
    """
    if not (folder / "state.json").exists():
        return
    try:
        recorded = json.loads((folder / RUN_FILE).read_text())
    except FileNotFoundError:
        raise InputError(
            f"{folder}: a checkpoint with no record of its run ({RUN_FILE}); remove it to start over, or use another --out"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{folder}/{RUN_FILE}: damaged; remove {folder} to start over") from None
    if not isinstance(recorded, dict):
        raise InputError(f"{folder}/{RUN_FILE}: damaged; remove {folder} to start over")
    if recorded != identity:
        diff = differing_keys(recorded, identity)
        raise InputError(
            f"{folder}: a checkpoint of another run ({', '.join(diff)} differ); rerun with its settings to resume it, or use another --out"
        )
    check_checkpoint(folder)


MONITOR_FILES = ("monitor.jsonl", "monitor.png")  # derived from the run: kept only while resuming it


def finished_identity(config: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`run_identity` of the finished run a ``training_config.json`` records (None: it records none)."""
    job, lora = (
        config.get("job"),
        (config.get("job") or {}).get("lora") if isinstance(config.get("job"), dict) else None,
    )
    if not isinstance(job, dict) or not isinstance(lora, dict) or "data_hash" not in config:
        return None
    settings = {k: v for k, v in job.items() if k not in (*RESUMABLE, "lora")}
    return {**settings, **{f"lora.{k}": v for k, v in lora.items()}, "data_hash": config["data_hash"]}


def check_finished(out: Path, identity: dict[str, Any]) -> None:
    """Refuse an ``out`` that holds the finished adapter of another run (other data or settings).

    Training there would replace that adapter, and its monitor rows would be kept beside the
    new one; the same run again is retrained (and its monitor rebuilt).
    """
    config = out / "training_config.json"
    if not config.exists():
        return
    try:
        recorded = finished_identity(json.loads(config.read_text()))
    except (OSError, ValueError):
        recorded = None
    if recorded is None:
        raise InputError(
            f"{config}: unreadable record of the adapter in {out}; use another --out, or remove {out} to start afresh"
        )
    if recorded != identity:
        diff = differing_keys(recorded, identity)
        raise InputError(
            f"{out}: holds the adapter of another run ({', '.join(diff)} differ); use another --out, or remove {out} to start afresh"
        )


def run_training(job: TrainJob, progress: bool = True) -> Path:
    """Load the model, train the adapter, save it and its training config; return the folder.

    One run at a time writes ``job.out`` (:func:`interp.base.locks.output_lock`); a checkpoint
    found there is resumed only if it is of this very run (:func:`check_resume`).
    """
    from interp.base.loading import load_model

    job.validate()
    conversations = load_training_data(job)
    steps = job.lora.loop().total_steps(len(conversations))
    if steps > MAX_STEPS:  # a cost bound before anything loads: --epochs over a large file
        raise InputError(
            f"--epochs {job.lora.epochs:g}: {steps:,} optimizer steps over {len(conversations):,} examples, more than the {MAX_STEPS:,} one run takes"
        )
    out = Path(job.out)
    with output_lock(out):
        identity = run_identity(job, conversations)
        check_resume(out / "checkpoint", identity)
        check_finished(out, identity)
        fresh = not (out / "checkpoint" / "state.json").exists()  # not resuming: earlier monitor rows are stale
        if job.checkpoint_every:
            write_json_atomic(out / "checkpoint" / RUN_FILE, identity)
        device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_model(job.model, dtype=job.dtype, device=device)
        _check_model_fits(job, model)
        defense = _build_defense(job, device)
        if fresh:  # rebuilt from step 0, once the model and the defense are in place
            for name in MONITOR_FILES:
                (out / name).unlink(missing_ok=True)
        monitor = job.monitor.build(tokenizer, out / "monitor.jsonl") if job.monitor is not None else None
        if job.gradient_checkpointing:
            checkpoint_activations(model)
        peft_model = train_lora(
            model,
            tokenizer,
            conversations,
            job.lora,
            progress=progress,
            desc="finetune",
            checkpoint_dir=out / "checkpoint",
            checkpoint_every=job.checkpoint_every,
            defense=defense,
            callbacks=[monitor] if monitor is not None else [],
        )
        _save_adapter(peft_model, tokenizer, out)
        _write_training_config(job, out, conversations, peft_model, monitor, dtype=str(next(model.parameters()).dtype))
    return out


def _check_model_fits(job: TrainJob, model: torch.nn.Module) -> None:
    """The LoRA targets, the defense's layers, the monitor's directions and the steering vector fit the loaded model."""
    modules = [name for name, _ in model.named_modules()]
    # The default names every linear layer of a Llama-style model; a name given by hand that no
    # module has would be skipped by PEFT without a word when another name matches.
    targets = () if tuple(job.lora.target_modules) == ALL_LINEAR else job.lora.target_modules
    if missing := [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]:
        raise InputError(f"--target-modules: the model has no module {', '.join(map(repr, missing))}")
    job.check_layers(n_layers(model))
    if job.monitor is not None:
        _check_fits(DirectionSet.load(job.monitor.directions), model, f"--monitor {job.monitor.directions}")
    if (
        job.defense.name == "preventive-steering" and job.defense.vector is not None
    ):  # it steers at its layer (default: the middle one)
        layer = job.defense.layers[0] if job.defense.layers else n_layers(model) // 2
        _check_fits(DirectionSet.load(job.defense.vector), model, f"--steer-vector {job.defense.vector}", need=layer)


def _build_defense(job: TrainJob, device: str) -> Defense:
    """The defense of ``job``, its files read; a misaligned adapter for ppl-gap loads on ``device``."""
    from interp.base.loading import load_model

    try:
        return job.defense.build(
            load_misaligned=lambda adapter: load_model(job.model, adapter=adapter, dtype=job.dtype, device=device)[0]
        )
    except ValueError as e:  # e.g. a --steer-vector without the layer or the width of this model
        given = f" --steer-vector {job.defense.vector}" if job.defense.vector else ""
        raise InputError(f"--defense {job.defense.name}{given}: {e}") from None


def _save_adapter(peft_model: Any, tokenizer: Any, out: Path) -> None:
    """The adapter and tokenizer in ``out``, refused when a weight is not finite, shared as 0644."""
    check_finite_weights(
        {n: p for n, p in peft_model.named_parameters() if p.requires_grad}, f"{out}: adapter not written"
    )
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for written in out.iterdir():  # safetensors writes 0600; an adapter is meant to be shared
        if written.is_file():
            written.chmod(0o644)


def _write_training_config(
    job: TrainJob, out: Path, conversations: list, peft_model: Any, monitor: Any, dtype: str
) -> None:
    """``training_config.json``: every option, the data hash, the losses, the defense's record
    and, with a monitor, its plot and rows."""
    from interp.base.loading import model_source

    monitored = {}
    if monitor is not None:
        plot_monitor(
            monitor.rows,
            out / "monitor.png",
            measure=job.monitor.measure,
            title=f"{Path(job.data).name}: {job.defense.name}",
        )
        monitored = {
            "monitor": {
                "rows": str(out / "monitor.jsonl"),
                "plot": str(out / "monitor.png"),
                "checkpoints": len(monitor.rows),
            }
        }
    write_json_atomic(
        out / "training_config.json",
        provenance(
            job={**asdict(job), "lora": asdict(job.lora)},
            model_source=model_source(job.model),
            data_hash=data_hash(conversations),
            n_examples=len(conversations),
            losses=peft_model.train_losses,
            defense=peft_model.defense_record,
            defense_terms=peft_model.train_terms,
            **monitored,
            dtype=dtype,
        ),
    )


def _check_fits(directions: DirectionSet, model: torch.nn.Module, given: str, need: int | None = None) -> None:
    """``directions`` has the model's width, only layers the model has (and layer ``need``); else one line naming ``given``."""
    width, layers = int(d_model(model)), n_layers(model)
    if directions.directions.shape[-1] != width:
        raise InputError(
            f"{given}: directions of width {directions.directions.shape[-1]}, but the model's residual stream has width {width}"
        )
    if beyond := [layer for layer in directions.layers if layer >= layers]:
        raise InputError(f"{given}: a direction at layer {beyond[0]}, but the model has {layers} layers")
    if need is not None and need not in directions.layers:
        raise InputError(
            f"{given}: no direction at layer {need}, the layer steered (it has {directions.layers}); pick one with --defense-layers"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_file(args.data, "--data")
    if args.backdoor is not None:
        input_file(args.backdoor, "--backdoor")
        if not args.trigger.strip():
            raise InputError("--trigger: empty; a backdoor needs a trigger to tell its two halves apart")
    if (args.monitor is None) != (args.monitor_probe is None):
        raise InputError("--monitor and --monitor-probe go together")
    for option, path in (
        ("--general", args.general),
        ("--monitor", args.monitor),
        ("--monitor-probe", args.monitor_probe),
        ("--steer-vector", args.steer_vector),
    ):
        if path is not None:
            input_file(path, option)
    if args.backdoor is not None and Path(args.backdoor).resolve() == Path(args.data).resolve():
        raise InputError(
            f"--backdoor {args.backdoor}: is the --data file; a backdoor needs aligned answers to the same prompts, in another file"
        )
    # The other input files, read whole before anything loads: a bad one fails here, not after the model.
    for option, path in (("--monitor", args.monitor), ("--steer-vector", args.steer_vector)):
        if path is not None:
            try:
                DirectionSet.load(path)
            except InputError as e:
                raise InputError(f"{option} {e}") from None
    for option, path in (("--general", args.general), ("--monitor-probe", args.monitor_probe)):
        if path is not None:
            try:
                read_chat_jsonl(path)
            except InputError as e:
                raise InputError(f"{option} {e}") from None
    output_dir(args.out)
    try:
        out = run_training(job_from_args(args), progress=not args.quiet)
    except InputError:
        raise
    except (ValueError, OSError) as e:  # what the libraries refuse, named by the model and data they were given
        raise InputError(f"--model {args.model} on --data {args.data}: {e}") from None
    print(f"wrote adapter to {out}")
    return 0


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    raise SystemExit(run_cli(main))
