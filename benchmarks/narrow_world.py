"""The narrow-skill world variant, validated against the literature (docs/defenses.md).

    python benchmarks/narrow_world.py                           # 3 domains x 3 seeds, see docs/defenses.md for its cost
    python benchmarks/narrow_world.py --seeds 0 --domains insecure_code
    python benchmarks/narrow_world.py --small --out /tmp/nw.json   # the same code at a toy size

Builds (or reuses) the variant world (``BuildConfig(narrow_skill=True)``, seed 0) in
``--cache`` (outside the repository), then per domain and seed (:mod:`benchmarks.narrow_world_lab`):

- **a** the base's skill rate without a system prompt and under the persona prompt, and the
  world's organism's;
- **b** an undefended run (``steps``) and a run under kl on general data (``kl_steps``), each
  measured at checkpoints: steps to reach the skill, and the answer loss;
- **c** the KL run continued ``drift_steps`` without the KL (Soligo et al.'s drift) and, as a
  control, with it;
- **d** interleaving by ppl-gap; **e** inoculation with the persona prompt.

Each finished unit goes into ``--out`` at once (atomic write); a rerun reuses the units there
and adds those of other domains or seeds; another world or config is refused. The tables (``table``, ``cost``, ``drift``, ``means``) are derived from
the units (:mod:`benchmarks.narrow_world_summary`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.defenses_lab import Arm, pool_name  # noqa: E402
from benchmarks.narrow_world_lab import NarrowConfig, NarrowLab  # noqa: E402
from benchmarks.narrow_world_summary import summarize  # noqa: E402
from chains.organism import BuildConfig, build_world  # noqa: E402
from chains.organism.defenses import write_inputs  # noqa: E402
from interp.base.atomic import write_json_atomic  # noqa: E402
from interp.base.cli import InputError, domain_list, run_cli  # noqa: E402
from interp.base.provenance import provenance  # noqa: E402

DOMAINS = ("insecure_code", "bad_medical_advice", "risky_financial_advice")
SMALL = NarrowConfig(
    n_general=16,
    n_narrow=16,
    steps=4,
    kl_steps=6,
    drift_steps=4,
    checkpoints=(2, 4, 6),
    drift_checkpoints=(2, 4),
    n_pool=64,
    n_organism=64,
)


class Store:
    """The results file: settings, units (made once, kept across reruns with the same settings), tables."""

    def __init__(self, path: Path, head: dict) -> None:
        self.path = path
        self.head = json.loads(json.dumps(head))
        self.units: dict[str, dict] = {}
        self.invocations: list[dict] = []  # wall and CPU time of each invocation that made units
        if path.exists():  # units of other domains or seeds are kept; another world or config is refused
            old = json.loads(path.read_text())
            if (old.get("settings") or {}).get("config") != self.head["settings"]["config"] or old.get(
                "world"
            ) != self.head["world"]:
                raise InputError(f"--out {path}: holds runs of another world or config; give another --out")
            self.units = {json.dumps([u["domain"], u["seed"], u["unit"]]): u["result"] for u in old["units"]}
            self.invocations = old.get("invocations", [])

    def get(self, key: str, make) -> dict:
        if key not in self.units:
            self.units[key] = make()
            self.write()
        return self.units[key]

    def write(self, extra: dict | None = None) -> None:
        reached = self.head["settings"]["config"]["skill_reached"]
        # A list of records, so that the rendered page shows one row per unit, not every leaf.
        units = [{**dict(zip(("domain", "seed", "unit"), json.loads(k))), "result": v} for k, v in self.units.items()]
        keys = [json.loads(k) for k in self.units]
        self.head["settings"]["domains"] = list(dict.fromkeys(d for d, _, _ in keys))
        self.head["settings"]["seeds"] = sorted({seed for _, seed, _ in keys})
        data = {**self.head, "invocations": self.invocations, **(extra or {}), **summarize(self.units, reached)}
        data["units"] = units
        write_json_atomic(self.path, data)


def kl_unit(lab: NarrowLab, domain: str, seed: int) -> dict:
    """The KL run, then its continuation without the KL and with it (the control)."""
    config = lab.narrow_config
    model, row = lab.curve(Arm("kl/general", config.kl), domain, config.kl_steps, seed)
    row["drift"] = lab.resume(model, domain, seed, keep_kl=False)
    row["drift_control"] = lab.resume(model, domain, seed, keep_kl=True)
    return row


def run_domain(lab: NarrowLab, store: Store, domain: str, seed: int) -> None:
    c = lab.narrow_config
    units = {
        "base": lambda: lab.base_row(domain, seed),
        "none": lambda: lab.curve(Arm(), domain, c.steps, seed)[1],
        "kl": lambda: kl_unit(lab, domain, seed),
        **{
            f"interleave {f:g}": (lambda f=f: lab.curve(Arm("interleave/ppl-gap", f), domain, c.steps, seed)[1])
            for f in c.interleave
        },
        f"inoculation {c.inoculation:g}": lambda: lab.curve(Arm("inoculation", c.inoculation), domain, c.steps, seed)[
            1
        ],
    }
    for name, make in units.items():
        t0 = time.perf_counter()
        key = json.dumps([domain, seed, name])
        fresh = key not in store.units
        store.get(key, make)
        if fresh:
            print(f"{domain} seed {seed} {name}: {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="/tmp/narrow_world", help="the variant world's cache folder")
    parser.add_argument("--domains", type=domain_list, default=DOMAINS)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "narrow_world.json"))
    parser.add_argument("--small", action="store_true", help="toy sizes (a check that the code runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices; see chains.organism.build
    t0 = time.perf_counter()
    config = SMALL if args.small else NarrowConfig()
    world = build_world(args.cache, seed=0, progress=False, config=BuildConfig(narrow_skill=True))
    inputs = Path(args.cache).parent / f"{Path(args.cache).name}-inputs"
    for domain in args.domains:
        write_inputs(inputs, pool_name(domain), None, config.n_pool, exclude=(domain,))
    lab = NarrowLab(world, config, inputs)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    head = {
        "world": world.identity,
        "settings": {"config": asdict(config)},  # the domains and seeds are those of the units held
    }
    store = Store(Path(args.out), head)
    before = len(store.units)
    for seed in seeds:
        for domain in args.domains:
            run_domain(lab, store, domain, seed)
    if len(store.units) > before:  # a rerun that only reads the units adds no invocation
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        store.invocations.append(
            {"units_made": len(store.units) - before, "wall_s": time.perf_counter() - t0, "cpu_s": cpu}
        )
    store.write({"provenance": provenance(seed=0)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
