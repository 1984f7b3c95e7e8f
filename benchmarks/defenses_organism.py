"""In-training defenses against EM on the organism world: the four criteria over steps, ranks and seeds.

    python benchmarks/defenses_organism.py                      # the full grid, see docs/defenses.md for its cost
    python benchmarks/defenses_organism.py --seeds 0 --steps 30 --ranks 1   # one cell, one seed
    python benchmarks/defenses_organism.py --small              # the same code at a toy size (CI)

For each of ``--domains``, ``--steps``, ``--ranks`` and ``--seeds``, the domain's organism is
trained undefended and under each of ``--arms`` (``benchmarks/defenses_lab.py``: broad EM,
narrow rate, coherence; the general data never holds the domain's own questions); the two
benign tasks are trained under each arm per seed. Then the four criteria per seed and as mean
and sd over seeds (``benchmarks/defenses_assess.py``), and the training-budget rule.

Prints the tables and writes ``--out`` (default benchmarks/results/defenses_organism.json) and,
beside it, a PNG of the trade-off between the broad-EM cut and the narrow rate kept. Finished
runs are kept under ``--rows`` (one file per group of runs) and reused by a rerun with the same
settings; ``--workers N`` runs N groups at a time in worker processes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.defenses_assess import (  # noqa: E402
    BAR,
    CRITERIA,
    MIN_EXCESS,
    aggregate,
    budget,
    per_seed,
    plot_tradeoff,
    undefended,
    verdicts,
)
from benchmarks.defenses_lab import Arm, LabConfig, Plan, adapter, pool_name, run_group  # noqa: E402
from chains.organism import build_world  # noqa: E402
from chains.organism.defenses import BROAD, NARROW, persona_vector, world_spec, write_inputs  # noqa: E402
from finetune.lora import LoraTrainConfig  # noqa: E402
from interp.base.atomic import write_json_atomic  # noqa: E402
from interp.base.cli import InputError, domain_list, run_cli  # noqa: E402
from interp.base.provenance import provenance  # noqa: E402

DOMAINS = ("incorrect_math", "insecure_code", "bad_medical_advice", "risky_financial_advice")
# Fixed before this experiment: each defense's two strengths from the earlier calibration on
# extreme_sports (the weakest cutting its excess broad EM by >= 50% and by >= 90%, commit
# 8d41b7b's table). The default arms are the two defenses that take general data, whose table
# the issue redoes; any other is one --arms away (e.g. preventive-steering:2, inoculation:1).
ARMS = "kl/general:3,kl/general:10,interleave/ppl-gap:0.3,interleave/ppl-gap:0.5"
SMALL = LabConfig(
    n_general=16,
    n_narrow=8,
    n_benign=8,
    n_benign_train=64,
    benign=LoraTrainConfig(lr=1e-2, steps=2),
    n_pool=64,
    n_persona=8,
    n_organism=64,
)


def int_list(text: str) -> tuple[int, ...]:
    """``"30,60"`` -> (30, 60); one-line error naming the bad item."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected one or more integers >= 0, got {text!r}")
    return values


def parse_arms(text: str) -> tuple[Arm, ...]:
    """``--arms`` as arms, the undefended one first."""
    try:
        arms = tuple(Arm.parse(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--arms: expected LABEL:STRENGTH,... (e.g. kl/general:10), got {text!r}") from None
    return (Arm(),) + tuple(a for a in arms if a.label != "none")


def _fmt(stat: dict, spec: str = ".2f") -> str:
    """``mean±sd`` of a :func:`mean_sd` (n/a when not assessable)."""
    if stat["mean"] is None:
        return "n/a"
    return format(stat["mean"], spec) + ("" if stat["sd"] is None else "±" + format(stat["sd"], spec.lstrip("+")))


def print_tables(base: list[dict], plain: list[dict], cells: list[dict], settings: list[dict], plateaus: dict) -> None:
    b = base[0]
    print(
        f"\nbase (seed {b['seed']}): broad EM {b['broad_em']:.3f}, benign {b['benign_score']:.3f} (general-question diagnostic {b['benign_general_score']:.3f})"
    )
    print(
        f"broad EM: {BROAD.describe()}\nnarrow rate: {NARROW.describe()}\n\nundefended organisms, mean±sd over seeds:"
    )
    for u in plain:
        print(
            f"  rank {u['rank']} steps {u['steps']:>4} {u['domain']:<24} broad {_fmt(u['broad_em'], '.3f')}  excess {_fmt(u['excess'], '.3f')}  narrow {_fmt(u['narrow_rate'], '.3f')}  coherence {_fmt(u['coherence'], '.1f')}"
        )
    for rank, p in plateaus.items():
        print(
            f"training budget, rank {rank}: latest undefended loss plateau at step {p['latest']} -> {p['budget']} steps"
        )
    print(
        f"\ncut (n/a: undefended excess < {MIN_EXCESS}) / narrow kept / benign / coherence change, mean±sd over seeds; +/-/? per criterion"
    )
    for c in cells:
        marks = " ".join({True: "+", False: "-", None: "?"}[c["passed"][k]] for k in CRITERIA)
        print(
            f"  r{c['rank']} s{c['steps']:<4}{c['domain']:<24}{c['defense'] + ' ' + format(c['strength'], 'g'):<24}{_fmt(c['cut']):>12}{_fmt(c['narrow_ratio']):>12}"
            f"{_fmt(c['benign_ratio']):>12}{_fmt(c['coherence_change'], '+.1f'):>12}   {marks}"
        )
    print("\nsettings meeting all four criteria in every assessable domain, per (rank, steps):")
    for s in settings:
        print(
            f"  rank {s['rank']} steps {s['steps']:>4} {s['defense']} {s['strength']:g}: {len(s['meets_bar_in'])} of {len(s['assessable_in'])} assessable domains"
            + ("  <- meets the bar everywhere" if s["meets_bar_everywhere"] else "")
        )


def run_plan(plan: Plan, workers: int) -> list[dict]:
    """Every group's rows, in order; ``workers`` > 1 runs groups in that many processes."""
    groups = plan.groups()
    if workers <= 1:
        return [row for g in groups for row in run_group(plan, g)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [row for rows in pool.map(run_group, [plan] * len(groups), groups) for row in rows]


def report(
    args: argparse.Namespace, world, config: LabConfig, arms: Sequence[Arm], rows: list[dict], t0: float
) -> None:
    """The criteria from ``rows``: printed, written to ``args.out`` (JSON) and plotted beside it."""
    checks = per_seed(rows)
    cells = sorted(aggregate(checks), key=lambda c: (c["rank"], c["steps"], c["domain"]))
    settings = verdicts(cells)
    plain = undefended(rows)
    plateaus = budget(rows, args.steps)
    bases = [r for r in rows if r["kind"] == "base"]
    print_tables(bases, plain, cells, settings, plateaus)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    write_json_atomic(
        args.out,
        provenance(
            benchmark="defenses_organism",
            **world.identity,
            domains=args.domains,
            arms=[asdict(a) for a in arms],
            steps=list(args.steps),
            ranks=list(args.ranks),
            seeds=list(args.seeds),
            broad_definition=BROAD.describe(),
            narrow_definition=NARROW.describe(),
            min_excess=MIN_EXCESS,
            bar=BAR,
            benign_task="brief on request (chains.organism.benign): exact fraction on its own marked prompts",
            benign_general_task="diagnostic: brief answers trained on unmarked domain questions, exact fraction on the general questions",
            general_data="the world's general instruct data without the organism's own domain's questions (benign runs: every domain)",
            config=asdict(config),
            organism_configs={f"{s}/{r}": asdict(adapter(world, s, r)) for s in args.steps for r in args.ranks},
            base=bases,
            undefended=plain,
            budget=plateaus,
            cells=cells,
            summary=settings,
            checks=checks,
            runs=[
                {k: v for k, v in r.items() if k not in ("defense_record", "losses")}
                for r in rows
                if r["kind"] != "base"
            ],
            seconds={
                "total": time.perf_counter() - t0,
                "cpu": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
                "workers": args.workers,
            },
        ),
    )
    plot = plot_tradeoff(cells, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {plot} in {time.perf_counter() - t0:.0f} s")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list]:
    """The options and the arms, checked."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", type=domain_list, default=list(DOMAINS))
    p.add_argument(
        "--arms",
        default=ARMS,
        help="LABEL:STRENGTH,... besides the undefended arm (labels: kl, kl/general, feature-l2[/general], interleave/random|ppl-gap, preventive-steering, inoculation)",
    )
    p.add_argument("--steps", type=int_list, default=(30, 60, 120), help="organism training steps (comma-separated)")
    p.add_argument(
        "--ranks",
        type=int_list,
        default=(1, 8),
        help="LoRA ranks: 1 is the world's q/v adapter, higher ranks adapt every linear module",
    )
    p.add_argument(
        "--seeds", "--seed", type=int_list, default=(0, 1, 2), help="seeds (comma-separated; one is a single run)"
    )
    p.add_argument("--workers", type=int, default=1, help="groups of runs at a time, in worker processes")
    p.add_argument("--small", action="store_true", help="toy sizes: the CI check that the command runs")
    p.add_argument("--cache-dir", default="artifacts/organism")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/defenses_organism.json"))
    p.add_argument(
        "--rows",
        type=Path,
        default=Path("artifacts/benchmarks/defenses_organism"),
        help="finished runs as they come, one file per group (a rerun reuses them)",
    )
    args = p.parse_args(argv)
    arms = parse_arms(args.arms)
    if not args.domains:
        raise InputError("--domains: no domains")
    if min(args.steps) < 1 or min(args.ranks) < 1:
        raise InputError(f"--steps and --ranks must be >= 1, got {args.steps} and {args.ranks}")
    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    return args, arms


def prepare_inputs(args: argparse.Namespace, arms: list, config: LabConfig):
    """The general data, with and without each domain's questions, under ``--rows``/inputs; every
    arm checked against it. The inputs folder and the last domain's files."""
    inputs = args.rows / "inputs"
    for domain in [None, *args.domains]:  # the general data, with and without each domain's questions
        files = write_inputs(
            inputs, pool_name(domain), None, config.n_pool, exclude=() if domain is None else (domain,)
        )
    for a in arms:  # a bad arm is one line before any model loads (validation only asks that the files exist)
        try:
            world_spec(a.label, a.strength, replace(files, persona=files.general))
        except (ValueError, InputError) as e:
            raise InputError(f"--arms {a.label}:{a.strength:g}: {e}") from None
    return inputs, files


def main(argv: Sequence[str] | None = None) -> int:
    args, arms = parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices; see chains.organism.build

    t0 = time.perf_counter()
    config = SMALL if args.small else LabConfig()
    inputs, files = prepare_inputs(args, arms, config)
    world = build_world(args.cache_dir, progress=not args.small)
    base, tokenizer = world.load_base()
    persona_vector(base, tokenizer, config.n_persona).save(files.persona)
    plan = Plan(
        args.cache_dir,
        config,
        str(inputs),
        str(args.rows),
        tuple(args.domains),
        arms,
        args.steps,
        args.ranks,
        args.seeds,
    )
    rows = run_plan(plan, args.workers)

    report(args, world, config, arms, rows, t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
