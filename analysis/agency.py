"""The paper's language-agency metric: a classifier of agentic vs communal sentences, applied per sentence.

Wan et al. (2023) fine-tuned BERT on biographies rewritten once in an agentic and once in a communal voice
(their released `agency_dataset`, MIT, shipped in `analysis/data/wan2023_agency/`: label 1 = agentic,
0 = communal) and scored a letter by its share of agentic sentences. Here the classifier is a logistic
regression over all-MiniLM-L6-v2 embeddings (the encoder steerlab ships): C is chosen on the released
validation split, and the held-out test accuracy (with a Wilson 95% CI) travels with every score.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from statsmodels.stats.proportion import proportion_confint

from analysis.lexicons import split_sentences
from experts.files import write_json
from experts.loading import cache_root
from steer.datasets import read_text
from steer.evaluate.encoder import minilm_embeddings

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
MIN_SENTENCE_WORDS = 4  # shorter fragments ("Sincerely,", "Dear committee,") are not sentences about anyone


@dataclass(frozen=True)
class AgencyClassifier:
    """Logistic regression on MiniLM embeddings; `predict_proba` gives P(agentic) per text."""

    model: LogisticRegression
    c: float
    val_accuracy: float
    test_accuracy: float
    test_ci: tuple[float, float]
    n_train: int
    n_test: int

    def predict_proba(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        return self.model.predict_proba(minilm_embeddings(list(texts), progress=progress))[:, 1]

    def describe(self) -> dict[str, float | int | str]:
        return {"classifier": "logistic regression on all-MiniLM-L6-v2 embeddings", "data": "Wan et al. 2023 agency_dataset",
                "C": self.c, "val_accuracy": round(self.val_accuracy, 4), "test_accuracy": round(self.test_accuracy, 4),
                "test_ci_low": round(self.test_ci[0], 4), "test_ci_high": round(self.test_ci[1], 4),
                "n_train": self.n_train, "n_test": self.n_test}


SPLITS = ("train", "val", "test")


def _split_text(split: str) -> str:
    return read_text(str(files("analysis") / "data" / "wan2023_agency" / f"{split}.csv"))


def load_split(split: str) -> pd.DataFrame:
    """One released split (`train`, `val` or `test`) as a frame with `text` and `label` (1 = agentic)."""
    return pd.read_csv(io.StringIO(_split_text(split)))


def _to_json(classifier: AgencyClassifier) -> dict:
    return {"c": classifier.c, "coef": classifier.model.coef_[0].tolist(), "intercept": float(classifier.model.intercept_[0]),
            "val_accuracy": classifier.val_accuracy, "test_accuracy": classifier.test_accuracy,
            "test_ci": list(classifier.test_ci), "n_train": classifier.n_train, "n_test": classifier.n_test}


def _from_json(data: dict) -> AgencyClassifier:
    model = LogisticRegression(C=data["c"])
    model.coef_, model.intercept_ = np.array([data["coef"]]), np.array([data["intercept"]])
    model.classes_ = np.array([0, 1])
    return AgencyClassifier(model, data["c"], data["val_accuracy"], data["test_accuracy"], tuple(data["test_ci"]),
                            data["n_train"], data["n_test"])


@lru_cache(maxsize=1)
def agency_classifier(seed: int = 0) -> AgencyClassifier:
    """The classifier, trained once per machine and kept (as JSON) in the steerlab cache, keyed by the data."""
    key = hashlib.sha256("".join(_split_text(s) for s in SPLITS).encode() + f"|{seed}".encode()).hexdigest()[:16]
    path = cache_root() / "agency" / f"classifier-{key}.json"
    if path.exists():
        return _from_json(json.loads(path.read_text(encoding="utf-8")))
    classifier = train_agency_classifier(seed)
    write_json(path, _to_json(classifier))
    return classifier


def train_agency_classifier(seed: int = 0) -> AgencyClassifier:
    """Train on the released train split, pick C on val, measure accuracy on the untouched test split."""
    train, val, test = (load_split(s) for s in SPLITS)
    x_train, x_val, x_test = (minilm_embeddings(frame.text.tolist()) for frame in (train, val, test))

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x_train, train.label)

    scores = {c: fit(c).score(x_val, val.label) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    model = fit(best)
    correct = int((model.predict(x_test) == test.label.to_numpy()).sum())
    low, high = proportion_confint(correct, len(test), method="wilson")
    return AgencyClassifier(model, best, scores[best], correct / len(test), (float(low), float(high)), len(train), len(test))


def sentences(text: str) -> list[str]:
    """The letter's sentences of at least MIN_SENTENCE_WORDS words; salutations and sign-offs (a line ending in
    ":" or ",") drop out."""
    return [part for part in split_sentences(text) if len(part.split()) >= MIN_SENTENCE_WORDS
            and not part.endswith((":", ","))]


def agency_scores(texts: Sequence[str], classifier: AgencyClassifier | None = None, progress: bool = False) -> pd.DataFrame:
    """Per text: its sentence count, the share classified agentic (the paper's measure; NaN without a
    sentence) and the mean P(agentic), all sentences embedded in one pass."""
    classifier = classifier or agency_classifier()
    split = [sentences(text) for text in texts]
    probs = classifier.predict_proba([s for parts in split for s in parts], progress=progress)
    rows, start = [], 0
    for parts in split:
        p = probs[start : start + len(parts)]
        start += len(parts)
        rows.append({"agency_sentences": len(parts), "agentic_share": float((p > 0.5).mean()) if len(p) else float("nan"),
                     "agency_mean_prob": float(p.mean()) if len(p) else float("nan")})
    return pd.DataFrame(rows)
