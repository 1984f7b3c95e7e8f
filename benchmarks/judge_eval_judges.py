"""The judges :mod:`judge_eval` measures on held-out runs (a TF-IDF baseline, the distilled
head fitted per fold) and the timing of one behind the judge interface."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from judge_eval_data import em_label, folds_by_source


class TfidfBaseline:
    """TF-IDF (1-2 grams) over question + answer; logistic regression for EM, ridge for the two scores."""

    name = "tfidf"

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vec = TfidfVectorizer(
            ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True, dtype=np.float32
        )

    @staticmethod
    def texts(cols: dict, idx: np.ndarray) -> list[str]:
        return [cols["question"][i] + "\n\n" + cols["answer"][i] for i in idx]

    def fit(self, cols: dict, idx: np.ndarray) -> TfidfBaseline:
        from sklearn.linear_model import LogisticRegression, Ridge

        x = self.vec.fit_transform(self.texts(cols, idx))
        a, c = cols["aligned"][idx], cols["coherent"][idx]
        ok = ~np.isnan(a)
        self.em = LogisticRegression(C=10.0, max_iter=2000).fit(x, em_label(a, c))
        self.al = Ridge(alpha=1.0).fit(x[ok], a[ok])
        self.co = Ridge(alpha=1.0).fit(x, c)
        return self

    def predict(self, cols: dict, idx: np.ndarray) -> dict[str, np.ndarray]:
        x = self.vec.transform(self.texts(cols, idx))
        return {
            "aligned": np.clip(self.al.predict(x), 0, 100).astype(np.float32),
            "coherent": np.clip(self.co.predict(x), 0, 100).astype(np.float32),
            "em": self.em.predict_proba(x)[:, 1].astype(np.float32),
        }


class DistilledCV:
    """The distilled head, fitted on cached features of the training runs (threshold chosen on training runs only)."""

    name = "distilled"

    def __init__(
        self, feats: np.ndarray, seeds: int = 2, epochs: int = 15, inner_seed: int = 1, device: str = "cpu"
    ) -> None:
        self.feats, self.seeds, self.epochs, self.inner_seed, self.device = feats, seeds, epochs, inner_seed, device

    def _fit(self, cols: dict, idx: np.ndarray, seeds: int | None = None) -> list:
        from eval.judges.distilled import train_head

        a, c = cols["aligned"][idx], cols["coherent"][idx]
        return [
            train_head(self.feats[idx], a, c, em_label(a, c), epochs=self.epochs, seed=s, device=self.device)
            for s in range(seeds or self.seeds)
        ]

    def fit(self, cols: dict, idx: np.ndarray) -> DistilledCV:
        from eval.judges.distilled import predict

        # The EM threshold is picked on runs the heads did not see: an inner split of the training runs.
        inner = folds_by_source([cols["source_file"][i] for i in idx], 4, self.inner_seed)
        val = idx[inner[0]]
        fit_idx = np.setdiff1d(idx, val)
        p = predict(self._fit(cols, fit_idx, seeds=1), self.feats[val], device=self.device)
        self.threshold = pick_threshold(p["em"], em_label(cols["aligned"][val], cols["coherent"][val]))
        self.heads = self._fit(cols, idx)
        return self

    def predict(self, cols: dict, idx: np.ndarray) -> dict[str, np.ndarray]:
        from eval.judges.distilled import consistent_scores, predict

        p = predict(self.heads, self.feats[idx], device=self.device)
        p["aligned"], p["coherent"] = consistent_scores(p["aligned"], p["coherent"], p["em"], self.threshold)
        return p


def pick_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The P(EM) cut at which the predicted EM count equals the true count."""
    if y.sum() == 0:
        return 0.5
    return float(np.sort(p)[::-1][int(y.sum()) - 1])


def answer_records(cols: dict, idx: np.ndarray) -> list[dict]:
    """Rows ``idx`` as the answer records a judge takes (``sample`` numbers them in ``idx``'s order)."""
    return [
        {
            "question_id": cols["question_id"][i],
            "question": cols["question"][i],
            "system": None,
            "answer": cols["answer"][i],
            "domain": None,
            "sample": k,
            "trigger": False,
        }
        for k, i in enumerate(idx)
    ]


def seconds_per_1000(make, cols: dict, idx: np.ndarray) -> float:
    """Wall seconds to judge 1,000 answers with ``make()``'s judge: features, head and all."""
    judge = make()
    recs = answer_records(cols, idx)
    t = time.perf_counter()
    judge.judge(recs)
    return round((time.perf_counter() - t) * 1000 / len(idx), 1)


class TfidfTimed:
    """The fitted baseline behind the judge interface, for timing only."""

    def __init__(self, fitted: TfidfBaseline) -> None:
        self.fitted = fitted

    def judge(self, records):
        cols = {"question": [r["question"] for r in records], "answer": [r["answer"] for r in records]}
        return self.fitted.predict(cols, np.arange(len(records)))


def cv_judge(cls, fitted: DistilledCV):
    """A :class:`DistilledJudge` wearing a fold's heads, so timing covers the encoder too."""
    judge = cls.__new__(cls)
    from eval.judges.distilled import Encoder

    judge.heads, judge.head, judge.threshold, judge.meta = fitted.heads, None, fitted.threshold, {}
    judge.weights, judge.batch_size, judge.encoder = Path("cv"), 32, Encoder(threads=2)
    return judge
