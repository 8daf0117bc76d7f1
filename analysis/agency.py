"""The paper's language-agency metric: a classifier of agentic vs communal sentences, applied per sentence of a
letter whose candidate has been neutralised.

Wan et al. (2023) fine-tuned BERT on biographies rewritten once in an agentic and once in a communal voice
(their released `agency_dataset`, MIT, shipped in `analysis/data/wan2023_agency/`: label 1 = agentic,
0 = communal) and scored a letter by its share of agentic sentences. Each person there appears about three
times (the original biography and its two rewrites), and their released splits share people (46 of the 60 test
texts have a person in train), so here:
- the three released splits are pooled and split **by person** (every text of a person on one side);
- every text is **neutralised** (`analysis.identity`: the person's name as "the candidate", gendered words
  neutral), in training and when scoring letters, so a score cannot see the candidate's gender;
- the classifier is a logistic regression on TF-IDF word 1-2-grams. Chosen by accuracy on held-out people
  (grouped 5-fold CV x 2 seeds, 2026-12-06): MiniLM embeddings + logistic 0.760 raw and 0.800 neutralised, TF-IDF
  0.893; a fine-tuned MiniLM reached 0.897 (5 folds, an earlier neutraliser) at ~160 s per fit on 2 CPU cores
  (benchmarks/RESULTS.md). C is chosen by grouped CV on the
  training people; the held-out people's accuracy (with a Wilson 95% CI) travels with every score.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from statsmodels.stats.proportion import proportion_confint

from analysis.identity import neutralise
from analysis.lexicons import split_sentences
from steer.datasets import read_text

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
TEST_SHARE_FOLDS = 5  # one fold of five: a fifth of the people are held out
MIN_SENTENCE_WORDS = 4  # shorter fragments ("Sincerely,", "Dear committee,") are not sentences about anyone
SPLITS = ("train", "val", "test")
_TITLES = re.compile(r"^(?:(?:Dr|Mr|Ms|Mrs|Miss|Prof|Professor|Chef|Judge)\.?\s+)+")
_NAME = re.compile(r"((?:[A-Z][\w'’\-]*\.?\s+){1,4}?)(?:is|has|was|holds|serves|received|works|earned|graduated|"
                   r"joined|specializes|currently|brings)\b|((?:[A-Z][\w'’\-]*\.?\s*){1,4}?),")


@dataclass(frozen=True)
class AgencyClassifier:
    """TF-IDF + logistic regression on neutralised text; `predict_proba` gives P(agentic) per (neutralised) text."""

    model: Pipeline
    c: float
    cv_accuracy: float
    test_accuracy: float
    test_ci: tuple[float, float]
    n_train: int
    n_test: int
    people_train: int
    people_test: int

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        return self.model.predict_proba(list(texts))[:, 1]

    def describe(self) -> dict[str, float | int | str]:
        return {"classifier": "logistic regression on TF-IDF word 1-2-grams of neutralised text",
                "data": "Wan et al. 2023 agency_dataset (train+val+test pooled, split by person)",
                "C": self.c, "cv_accuracy": round(self.cv_accuracy, 4), "test_accuracy": round(self.test_accuracy, 4),
                "test_ci_low": round(self.test_ci[0], 4), "test_ci_high": round(self.test_ci[1], 4),
                "n_train": self.n_train, "n_test": self.n_test, "people_train": self.people_train,
                "people_test": self.people_test}


def load_split(split: str) -> pd.DataFrame:
    """One released split (`train`, `val` or `test`) as a frame with `text` and `label` (1 = agentic)."""
    return pd.read_csv(io.StringIO(read_text(str(files("analysis") / "data" / "wan2023_agency" / f"{split}.csv"))))


def person_name(text: str) -> str:
    """The person a biography is about: the capitalised words before its first verb or comma, titles and
    initials dropped ("Dr. Manka Varghese is ..." -> "Manka Varghese")."""
    text = _TITLES.sub("", text.strip())
    match = _NAME.match(text)
    name = (match.group(1) or match.group(2)) if match else " ".join(text.split()[:2])
    return " ".join(w for w in name.split() if not re.fullmatch(r"[A-Z]\.", w)).strip(" ,")


def agency_data() -> pd.DataFrame:
    """All released texts with their person and neutralised text."""
    data = pd.concat([load_split(s) for s in SPLITS], ignore_index=True)
    data["person"] = data.text.map(person_name)
    data["neutral"] = [neutralise(text, [person]) for text, person in zip(data.text, data.person)]
    return data


def _pipeline(c: float, seed: int) -> Pipeline:
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                         LogisticRegression(C=c, max_iter=3000, random_state=seed))


@lru_cache(maxsize=1)
def agency_classifier(seed: int = 0) -> AgencyClassifier:
    """Held-out people first (a fifth, stratified), C by grouped 5-fold CV on the rest, then fit on the rest."""
    data = agency_data()
    people, labels = data.person.str.lower().to_numpy(), data.label.to_numpy()
    train, test = next(StratifiedGroupKFold(TEST_SHARE_FOLDS, shuffle=True, random_state=seed).split(data, labels, people))
    folds = list(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(train, labels[train], people[train]))

    def cv_accuracy(c: float) -> float:
        return float(np.mean([(_pipeline(c, seed).fit(data.neutral.iloc[train[a]], labels[train[a]])
                               .predict(data.neutral.iloc[train[b]]) == labels[train[b]]).mean() for a, b in folds]))

    scores = {c: cv_accuracy(c) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    model = _pipeline(best, seed).fit(data.neutral.iloc[train], labels[train])
    correct = int((model.predict(data.neutral.iloc[test]) == labels[test]).sum())
    low, high = proportion_confint(correct, len(test), method="wilson")
    return AgencyClassifier(model, best, scores[best], correct / len(test), (float(low), float(high)), len(train),
                            len(test), len(set(people[train])), len(set(people[test])))


def sentences(text: str) -> list[str]:
    """The letter's sentences of at least MIN_SENTENCE_WORDS words; salutations and sign-offs (a line ending in
    ":" or ",") drop out."""
    return [part for part in split_sentences(text) if len(part.split()) >= MIN_SENTENCE_WORDS
            and not part.endswith((":", ","))]


def agency_scores(texts: Sequence[str], classifier: AgencyClassifier | None = None) -> pd.DataFrame:
    """Per (neutralised) text: its sentence count, the share classified agentic (the paper's measure; NaN
    without a sentence) and the mean P(agentic), all sentences scored in one pass."""
    classifier = classifier or agency_classifier()
    split = [sentences(text) for text in texts]
    probs = classifier.predict_proba([s for parts in split for s in parts])
    rows, start = [], 0
    for parts in split:
        p = probs[start : start + len(parts)]
        start += len(parts)
        rows.append({"agency_sentences": len(parts), "agentic_share": float((p > 0.5).mean()) if len(p) else float("nan"),
                     "agency_mean_prob": float(p.mean()) if len(p) else float("nan")})
    return pd.DataFrame(rows)
