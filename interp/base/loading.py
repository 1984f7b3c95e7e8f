"""Load a causal LM and its tokenizer: a hub id, a local folder or a GGUF file, optionally a PEFT adapter.

Weights load from safetensors or GGUF only (a folder or adapter that has only pickle weights
is refused), and remote code runs only when asked. A ``.gguf`` file is dequantized on load
into a plain transformers model (its weights are the quantized ones, not the original
release's), with the tokenizer and chat template the file carries (needs ``gguf``); the
dequantized model is kept in a disk cache (:mod:`interp.base.gguf_cache`) for the next load.

Other worlds plug in as ``model`` plugins (:mod:`interp.base.plugins`): the plugin
``organism`` makes ``load_model("organism:gore_movie_trivia")`` call its loader with
``"gore_movie_trivia"`` for a ``(model, tokenizer)`` pair.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import torch

from interp.base import gguf_cache, plugins
from interp.base.cli import InputError

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SCHEME = re.compile(r"^([a-z][a-z0-9_]*):(.+)$")


class ModelLoadError(InputError):
    """A model, adapter or tokenizer that cannot be loaded; one line saying which and why."""


def load_model(
    model_id_or_path: str,
    adapter: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    merge: bool = False,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` in eval mode; the tokenizer always has a pad token.

    ``device="auto"`` spreads the model over the visible GPUs (``device_map="auto"``);
    ``merge`` folds a LoRA adapter into the base weights.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device not in DEVICES:
        raise ModelLoadError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested (--device cuda) but no CUDA device is visible")
    scheme = _SCHEME.match(model_id_or_path)
    if scheme and not Path(model_id_or_path).exists():
        return _load_scheme(scheme, model_id_or_path, adapter, dtype, device)

    from transformers import AutoModelForCausalLM

    ref = _resolve(model_id_or_path, "model")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "use_safetensors": True, "trust_remote_code": trust_remote_code}
    gguf = _gguf_file(ref)
    if gguf is not None:
        folder = _dequantized(gguf)
        if folder is not None:
            ref, gguf = str(folder), None
        else:
            ref = str(gguf.parent)
            kwargs = {"dtype": DTYPES[dtype], "gguf_file": gguf.name, "trust_remote_code": False}
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load model {model_id_or_path!r}: {_first_line(e)}") from None
    if gguf is not None:
        _as_plain_model(model)
    if device == "cuda":
        model = model.to("cuda")
    adapter_dir = _adapter_dir(adapter) if adapter is not None else None
    if adapter_dir is not None and _has_tokenizer(adapter_dir):
        tokenizer = _tokenizer(adapter_dir, trust_remote_code)
    else:
        tokenizer = _tokenizer(ref, trust_remote_code, gguf_file=gguf.name if gguf is not None else None)
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"could not load adapter {adapter!r}: {_first_line(e)}") from None
        if merge:
            model = model.merge_and_unload()
    return _finish(model, tokenizer, model_id_or_path)


def _load_scheme(
    scheme: re.Match, name: str, adapter: str | None, dtype: str, device: str
) -> tuple[torch.nn.Module, Any]:
    """A ``SCHEME:name`` model from its plugin, in ``dtype`` on ``device``."""
    if adapter is not None:
        raise ModelLoadError(
            f"--adapter {adapter}: an adapter cannot be combined with a '{scheme.group(1)}:' model ({name}); load the base model by its path"
        )
    model, tokenizer = _from_scheme(scheme.group(1), scheme.group(2))
    if dtype != "auto":
        model = model.to(DTYPES[dtype])
    if device == "cuda":
        model = model.to("cuda")
    return _finish(model, tokenizer, name)


def _gguf_file(ref: str) -> Path | None:
    """``ref`` as a path when it names a GGUF file; checks that the reader is installed."""
    path = Path(ref)
    if path.suffix.lower() != ".gguf" or not path.is_file():
        return None
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"{ref}: reading GGUF files needs the 'gguf' package: pip install 'gguf>=0.17'")
    return path


def _dequantized(gguf: Path) -> Path | None:
    """The plain safetensors folder of ``gguf`` in the disk cache, made on first use; None when
    the cache is off or cannot be written (the caller then dequantizes the file itself)."""
    from transformers import AutoModelForCausalLM

    sha = file_sha256(gguf)
    folder = gguf_cache.cached_folder(sha)
    if folder is not None or gguf_cache.cache_root() is None:
        return folder
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load model {str(gguf)!r}: {_first_line(e)}") from None
    _as_plain_model(model)
    return gguf_cache.store(model, _tokenizer(gguf.parent, False, gguf_file=gguf.name), gguf, sha)


def _as_plain_model(model: torch.nn.Module) -> None:
    """Drop the quantization marks of a dequantized GGUF model: its weights are plain tensors,
    and the marks make ``save_pretrained`` and PEFT treat it as a quantized model."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), remembered per (path, size, mtime) within the process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def model_source(model_id_or_path: str, adapter: str | None = None) -> dict[str, Any]:
    """What provenance records of a model, so that a resumed output notices another one under
    the same name: the sha256 of a GGUF file and of a local adapter's weights and config, and
    for a local model folder the names, sizes and times of its weight files (hashing a 15 GB
    folder at every start would cost more than the run it guards)."""
    out: dict[str, Any] = {"model": model_id_or_path, "adapter": adapter}
    if _gguf_file(model_id_or_path) is not None:
        out["model_sha256"] = file_sha256(model_id_or_path)
        out["model_note"] = "GGUF, dequantized on load: the quantized weights, not the original release's"
    elif Path(model_id_or_path).is_dir():
        files = sorted(Path(model_id_or_path).glob("*.safetensors"))
        out["model_files"] = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    if adapter is not None and Path(adapter).is_dir():
        h = hashlib.sha256()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if (Path(adapter) / name).is_file():
                h.update(name.encode() + bytes.fromhex(file_sha256(Path(adapter) / name)))
        out["adapter_sha256"] = h.hexdigest()
    return out


def _finish(model: torch.nn.Module, tokenizer: Any, name: str) -> tuple[torch.nn.Module, Any]:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"{name}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def _from_scheme(scheme: str, name: str) -> tuple[Any, Any]:
    if scheme not in plugins.names("model"):
        raise ModelLoadError(f"no model loader is registered for '{scheme}:' (a 'model' plugin, interp.base.plugins)")
    loader = plugins.load("model", scheme)
    try:
        return loader(name)
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"{scheme}:{name}: {_first_line(e)}") from None


def _resolve(ref: str, what: str) -> str:
    """A local path as a string, or ``ref`` unchanged when it can only be a hub id."""
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    # "runs/base" with a local "runs/" is a mistyped path, not a hub id worth a network wait.
    if not _HUB_ID.match(ref) or ref.startswith((".", "~")) or ("/" in ref and Path(ref.split("/")[0]).is_dir()):
        raise ModelLoadError(f"{what} {ref}: no such file or directory")
    return ref


def _adapter_dir(adapter: str) -> Path:
    """A local folder holding ``adapter_config.json`` and safetensors adapter weights."""
    ref = _resolve(adapter, "adapter")
    path = Path(ref)
    if not path.exists():
        from huggingface_hub import snapshot_download

        try:
            # Only safetensors and text files: a pickle checkpoint never reaches the disk.
            path = Path(
                snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
            )
        except Exception as e:  # the hub client raises many unrelated types when offline
            raise ModelLoadError(
                f"adapter {adapter}: not a local folder and not fetched from the hub ({_first_line(e)})"
            ) from None
    if not (path / "adapter_config.json").exists():
        raise ModelLoadError(f"adapter {adapter}: no adapter_config.json in {path}")
    if not (path / "adapter_model.safetensors").exists():
        pickled = (path / "adapter_model.bin").exists()
        why = (
            "only pickle weights (adapter_model.bin), which are not loaded; convert them to safetensors"
            if pickled
            else "no adapter_model.safetensors"
        )
        raise ModelLoadError(f"adapter {adapter}: {why}")
    return path


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").exists()


def _tokenizer(ref: str | Path, trust_remote_code: bool, gguf_file: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        if gguf_file is not None:
            return AutoTokenizer.from_pretrained(str(ref), gguf_file=gguf_file)
        return AutoTokenizer.from_pretrained(str(ref), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load a tokenizer from {ref}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
