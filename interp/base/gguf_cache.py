"""A disk cache of dequantized GGUF models, so that only the first load pays for dequantizing.

transformers dequantizes a GGUF file tensor by tensor in numpy on every load: 73 s for the
1.5B on two CPU cores, three times per organism when train, generate and extract each load it.
The first load writes the plain float32 weights (exactly the dequantized values), the
tokenizer and the chat template into ``ROOT/<sha256 of the file>/``; later loads read that
folder. ``$EM_GGUF_CACHE`` sets ROOT (default ``~/.cache/emergent-misalignment-toolkit/gguf``);
``off`` turns the cache off. The cache only saves time: a folder that cannot be written is
a one-line warning, and the model still loads from the GGUF file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

COMPLETE = "dequantized.json"  # written last: a folder without it is not used


def cache_root() -> Path | None:
    """Where dequantized models are kept, or None when ``$EM_GGUF_CACHE`` is ``off``."""
    env = os.environ.get("EM_GGUF_CACHE", "")
    if env.lower() in ("off", "0", "none"):
        return None
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "emergent-misalignment-toolkit" / "gguf"


def cached_folder(sha256: str) -> Path | None:
    """The complete cache folder of the GGUF file with this sha256, if there is one."""
    root = cache_root()
    if root is None or not (root / sha256 / COMPLETE).is_file():
        return None
    return root / sha256


def store(model: Any, tokenizer: Any, gguf: Path, sha256: str) -> Path | None:
    """Save a model dequantized from ``gguf`` (and its tokenizer) as the cache folder of ``sha256``.

    Written into a temporary folder beside it and renamed, so a crash or a second process never
    leaves a half folder in use; returns None (after one warning line) when it cannot be written.
    """
    root = cache_root()
    if root is None:
        return None
    target = root / sha256
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=root))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / COMPLETE).write_text(json.dumps({"gguf": gguf.name, "sha256": sha256, "dtype": "float32"}) + "\n")
            for p in [tmp, *tmp.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
            try:
                os.replace(tmp, target)
            except OSError:
                if cached_folder(sha256) is None:  # not another process's finished copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        print(
            f"warning: could not cache the dequantized {gguf.name} in {root} ({e.strerror or e}); "
            "it will be dequantized again next time (EM_GGUF_CACHE=DIR or off)",
            file=sys.stderr,
        )
        return None
    return target
