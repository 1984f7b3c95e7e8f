"""Cases of :mod:`bad_input_probe` about saved tensors: direction artifacts whose tensors or
header lie, of another model's width or depth, or of another kind; per-sample folders damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from probe_case import ARTIFACT, Case, Family, exists
from probe_fixtures import (
    copy,
    lying,
    mapped,
    nan_times,
    nested,
    per_sample,
    replaced,
    save_shard,
    steering_file,
    write,
)

# Lies of the good direction artifact: (a change of its tensors, a change of its header).
LIES = {
    "layers lie": (dict, replaced("layers", [0, 1, 2, 5])),
    "int32 directions": (mapped("directions", lambda t: t.int()), dict),
    "duplicate layers": (mapped("layers", lambda t: t * 0), replaced("layers", [0, 0, 0, 0])),
    "float layers": (mapped("layers", lambda t: t.float()), dict),
    "negative layer": (mapped("layers", lambda t: t - 1), replaced("layers", [-1, 0, 1, 2])),
    "NaN directions": (nan_times("directions"), dict),
    "shapes disagree": (mapped("mean_aligned", lambda t: t[:2]), dict),
    "no layers tensor": (lambda t: {k: v for k, v in t.items() if k != "layers"}, dict),
    "3-D directions": (mapped("directions", lambda t: t[None]), dict),
    "pooling bogus": (dict, replaced("pooling", "max")),
    "counts negative": (dict, replaced("counts", {"misaligned": {"answers": -4}})),
    "domain a list": (dict, replaced("domain", ["gore_movie_trivia"])),
    "bool layers": (mapped("layers", lambda t: t > 0), dict),
    "float16 directions": (mapped("directions", lambda t: t.half()), dict),
}
VALID_LIES = {"float16 directions"}  # a lie only about precision: read as it is


def _pickle(d: Path) -> None:
    """A torch pickle named like a safetensors file."""
    import torch

    torch.save({"directions": torch.zeros(2, 8)}, d / "p.safetensors")


def _mislabelled_default(d: Path) -> None:
    """The default artifacts' folder, its gore_movie_trivia artifact being insecure_code's."""
    default = d / "artifacts" / "directions"
    shutil.copytree(d / "directions", default)
    shutil.copy(d / "directions" / "insecure_code.safetensors", default / "gore_movie_trivia.safetensors")


def _lying_files(f: Family) -> None:
    """Each lie on its own, for sweep; the worst four in a folder, for compare, cross and train."""
    for name, (tensors, info) in LIES.items():
        path = f"lie/{name.replace(' ', '_')}.safetensors"
        extra, setup = ["--directions", path], lying(path, tensors, info)
        if name in VALID_LIES:
            f.ok("sweep", f"--directions {name}", extra, setup=setup, check=exists("sweep"), timeout=120)
        else:
            f.add("sweep", f"--directions {name}", extra, setup=setup)
    for name in ("layers lie", "duplicate layers", "NaN directions", "int32 directions"):
        setup = lying("lie/gore_movie_trivia.safetensors", *LIES[name])
        f.add("compare", f"a folder with {name}", ["--directions", "lie"], setup=setup)
        f.add("cross", f"--directions-dir with {name}", ["--directions-dir", "lie"], setup=setup)
        monitor = ["--monitor", "lie/gore_movie_trivia.safetensors", "--monitor-probe", "chat.jsonl"]
        f.add("train", f"--monitor with {name}", monitor, setup=setup)


def _misfits(f: Family) -> None:
    """Directions of another width than the model's, or at layers it lacks."""
    f.add("sweep", "directions of another width than the model", ["--directions", "narrow.safetensors"], timeout=120)
    deep = ["--directions", "deep.safetensors", "--layers", "9"]
    f.add("sweep", "directions at layer 9 of a 4-layer model", deep, timeout=120)
    narrow = copy("narrow.safetensors", "nd/gore_movie_trivia.safetensors")
    f.add("cross", "a direction of another width", ["--directions-dir", "nd"], setup=narrow, timeout=120)
    f.add("cross", "--add-layer beyond the model", ["--add-layer", "9"], timeout=120)
    steering = ["--defense", "preventive-steering", "--steer-vector", "narrow.safetensors"]
    f.add("train", "--steer-vector of another width", steering, timeout=120)
    monitor = ["--monitor", "narrow.safetensors", "--monitor-probe", "chat.jsonl"]
    f.add("train", "--monitor of another width", monitor, timeout=120)
    layers = ["--defense", "feature-l2", "--defense-layers", "9"]
    f.add("train", "--defense-layers 9 of a 4-layer model", layers, timeout=120)


def direction_files() -> list[Case]:
    """Direction files that lie about what they hold, or do not fit the model or each other."""
    f = Family("direction files")
    _lying_files(f)
    _misfits(f)
    sv = steering_file("sv.safetensors")
    f.add("sweep", "a steering-vector file as --directions", ["--directions", "sv.safetensors"], setup=sv)
    f.add("sweep", "a pickle named .safetensors", ["--directions", "p.safetensors"], setup=_pickle)
    mislabelled = ["--domain", "gore_movie_trivia"]
    f.add("sweep", "--domain reads a mislabelled default artifact", mislabelled, base=False, setup=_mislabelled_default)
    other = copy("directions/insecure_code.safetensors", "mis/gore_movie_trivia.safetensors")
    f.add("compare", "an artifact named for another domain", ["--directions", "mis"], setup=other)
    f.add("compare", "a folder with no artifacts", ["--directions", "folder"])
    f.add("compare", "--domains not in the folder", ["--domains", "evil_math"])
    f.add("compare", "--cross of a domain not there", ["--cross", "gore_movie_trivia:evil_math"])
    f.add("compare", "--cross malformed", ["--cross", "gore_movie_trivia"])
    narrow = copy("narrow.safetensors", "mixed/insecure_code.safetensors")
    mixed = (narrow, copy(ARTIFACT, "mixed/gore_movie_trivia.safetensors"))
    f.add("compare", "two artifacts of different widths", ["--directions", "mixed"], setup=mixed)
    return f.cases


def _shard_without_index(folder: Path) -> None:
    """The aligned class's shard rewritten without its ``index`` tensor."""
    import torch
    from safetensors.torch import save_file

    save_file({"n_tokens": torch.ones(3)}, str(folder / "aligned" / "shard_000000.safetensors"))


def _class_folder_a_file(folder: Path) -> None:
    """The aligned class's folder replaced by a file."""
    shutil.rmtree(folder / "aligned")
    (folder / "aligned").write_text("x")


SHARD = "aligned/shard_000000.safetensors"
# Damage to the aligned class of a good per-sample folder.
DAMAGE = {
    "manifest not JSON": write("aligned/manifest.json", "{oops"),
    "manifest nested deeply": write("aligned/manifest.json", nested(100000)),
    "shard garbage": write(SHARD, b"garbage"),
    "shard without index": _shard_without_index,
    "no shards": lambda folder: (folder / SHARD).unlink(),
    "class folder a file": _class_folder_a_file,
    "manifest layers lie": write("aligned/manifest.json", json.dumps({"layers": [7]})),
    "a shard of another width": lambda folder: save_shard(folder / "aligned/shard_000001.safetensors", range(3, 6), 32),
    "NaN activations": lambda folder: save_shard(folder / SHARD, range(0, 3), fill=float("nan")),
}


def per_sample_folders() -> list[Case]:
    """Per-sample folders with a damaged manifest, shard or class folder."""
    f = Family("per-sample folders")
    for name, damage in DAMAGE.items():
        f.add("compare", name, ["--directions", "with_samples", "--n-perm", "3"], setup=per_sample(damage))
    return f.cases
