"""The probe judge (``--judge probe:WEIGHTS``): a causal LM reads the judge prompt, and an ensemble
of the distilled judge's heads maps its hidden states at the prompt's last token
(:mod:`eval.judges.probe_features`) to GPT-4o's ``aligned`` and ``coherent`` (0-100) and P(EM),
the scores made consistent with P(EM) as the distilled judge's are.

The weights (``probe-judge-v1`` safetensors) come from ``benchmarks/judge_probe.py
--train-weights``: heads fitted on every row's features, with the model's identity (a GGUF
file's sha256), its layers, prompts, token limit and dtype, and the EM threshold in their
metadata. The judge reads the prompt as they were made: the same layers and prompts; a GGUF
model whose sha256 differs from the one the heads were fitted on is refused. The model is the
path the weights record unless ``model`` names another copy. Like the distilled judge it never
emits REFUSAL / CODE labels: ``label`` is always None.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eval.judges.distilled import HeadJudge, consistent_scores
from eval.judges.distilled_encoder import OfflineJudgeError
from eval.judges.distilled_heads import Head, predict
from eval.judges.distilled_weights import FORMAT_PROBE, load_heads, save_heads
from eval.judges.probe_features import chunk_features, prompt_ids
from interp.base.cli import InputError


def model_identity(model: str) -> dict:
    """What names the model's weights: a GGUF file's sha256 and name (not its path, which differs
    between machines), else the loader's record of the folder or hub id."""
    from interp.base.loading import model_source

    src = model_source(model)
    return {"model_sha256": src["model_sha256"], "file": Path(model).name} if "model_sha256" in src else src


def save_probe_heads(path: str | Path, heads: Sequence[Head], model: str, settings: dict, metadata: dict) -> None:
    """Write a probe judge: ``heads`` fitted on ``model``'s features made with ``settings``
    (``layers``, ``prompts``, ``max_tokens``, ``dtype``), plus ``metadata`` (threshold, provenance)."""
    meta = {"model_path": str(model), "model": model_identity(model), **settings, **metadata}
    save_heads(path, heads, meta, fmt=FORMAT_PROBE)


class ProbeJudge(HeadJudge):
    """The probe judge (module doc): ``judge(records)`` -> judged records, ``label`` always None."""

    def __init__(
        self,
        weights: str | Path,
        model: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        batch_tokens: int = 8192,
    ) -> None:
        from interp.base.loading import load_model

        self.weights = Path(weights)
        self.heads, self.meta = load_heads(self.weights, fmt=FORMAT_PROBE)
        self.spec = f"probe:{self.weights}"
        self.model_path = model or self.meta["model_path"]
        fitted = json.loads(self.meta["model"])
        if not Path(self.model_path).exists() and "model_sha256" in fitted:
            raise OfflineJudgeError(
                f"{self.weights}: its model {self.model_path} is not here; fetch {fitted['file']} (sha256 "
                f"{fitted['model_sha256']}) and give it with --judge-model PATH"
            )
        found = model_identity(self.model_path)
        if "model_sha256" in fitted and found.get("model_sha256") != fitted["model_sha256"]:
            raise OfflineJudgeError(
                f"{self.weights}: heads fitted on the features of {fitted['file']} (sha256 {fitted['model_sha256'][:12]}...), "
                f"not of {self.model_path} (sha256 {str(found.get('model_sha256'))[:12]}...)"
            )
        try:
            self.model, self.tokenizer = load_model(self.model_path, dtype=dtype or self.meta["dtype"], device=device)
        except InputError as e:
            raise InputError(f"--judge {self.spec}: {e}") from None
        self.layers = json.loads(self.meta["layers"])
        self.prompts = json.loads(self.meta["prompts"])
        self.max_tokens = int(self.meta["max_tokens"])
        self.threshold = float(self.meta["em_threshold"])
        self.batch_tokens = batch_tokens
        self.source = {"weights": self.weights.name}

    def scores(self, questions: Sequence[str], answers: Sequence[str]) -> dict[str, np.ndarray]:
        """``aligned``, ``coherent`` (0-100, EM-consistent) and ``em`` (P(EM)) for each pair."""
        cols = {"question": list(questions), "answer": list(answers)}
        seqs, _ = prompt_ids(self.tokenizer, cols, self.prompts, self.max_tokens)
        x = chunk_features(self.model, seqs, np.arange(len(answers)), self.layers, self.batch_tokens)
        if not torch.isfinite(x).all():
            raise InputError(f"--judge {self.spec}: non-finite hidden states; try --dtype float32")
        p = predict(self.heads, x.numpy())
        p["aligned"], p["coherent"] = consistent_scores(p["aligned"], p["coherent"], p["em"], self.threshold)
        return p
