"""Baseline routers on the same splits: random, best single expert, best expert per domain label, a keyword rule,
TF-IDF + logistic regression, and all-MiniLM-L6-v2 sentence embeddings with kNN and logistic
routers. Each returns the chosen expert index per query (random: None, scored by expectation)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from steer.router.tasks import Task


def best_single(q: np.ndarray, train: np.ndarray, n: int) -> np.ndarray:
    return np.full(n, int(q[train].mean(0).argmax()))


def per_domain(q: np.ndarray, tasks: Sequence[Task], train: np.ndarray) -> np.ndarray:
    domains = np.array([t.domain for t in tasks])
    best = {d: int(q[train & (domains == d)].mean(0).argmax()) for d in set(domains[train])}
    fallback = int(q[train].mean(0).argmax())
    return np.array([best.get(d, fallback) for d in domains])


CODE_WORDS = re.compile(r"\b(def|code|function|python|script|program|sql|bash|javascript)\b", re.IGNORECASE)


def keyword_rule(q: np.ndarray, tasks: Sequence[Task], train: np.ndarray) -> np.ndarray:
    """One regular expression: queries that name code go to the expert best on the training queries that match it,
    the rest to the expert best on the training queries that do not (the rule an outside review found as good as
    the router)."""
    match = np.array([bool(CODE_WORDS.search(t.query)) for t in tasks])
    fallback = int(q[train].mean(0).argmax())
    coder = int(q[train & match].mean(0).argmax()) if (train & match).any() else fallback
    other = int(q[train & ~match].mean(0).argmax()) if (train & ~match).any() else fallback
    return np.where(match, coder, other)


def _logistic(x: np.ndarray, q: np.ndarray, train: np.ndarray, val: np.ndarray, seed: int,
              grid: Sequence[float] = (0.1, 1.0, 10.0, 100.0)) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on the oracle label, C chosen on val by routed quality: (choices, probabilities)."""
    from sklearn.linear_model import LogisticRegression

    best = q.argmax(1)
    if len(set(best[train].tolist())) < 2:  # one expert is always best in training: nothing to learn
        proba = np.zeros((x.shape[0], q.shape[1]))
        proba[:, best[train][0]] = 1.0
        return proba.argmax(1), proba
    results = []
    for c in grid:
        model = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(x[train], best[train])
        proba = np.zeros((x.shape[0], q.shape[1]))
        proba[:, model.classes_] = model.predict_proba(x)
        choice = proba.argmax(1)
        results.append((q[val][np.arange(val.sum()), choice[val]].mean(), choice, proba))
    _, choice, proba = max(results, key=lambda r: r[0])
    return choice, proba


def tfidf_logistic(tasks: Sequence[Task], q: np.ndarray, train: np.ndarray, val: np.ndarray, seed: int = 0):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([t.query for i, t in enumerate(tasks) if train[i]])
    return _logistic(vectorizer.transform([t.query for t in tasks]), q, train, val, seed)


def embedding_logistic(emb: np.ndarray, q: np.ndarray, train: np.ndarray, val: np.ndarray, seed: int = 0):
    return _logistic(emb, q, train, val, seed)


def embedding_knn(emb: np.ndarray, q: np.ndarray, train: np.ndarray, val: np.ndarray,
                  grid: Sequence[int] = (1, 3, 5, 10, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Average the quality vectors of the k most similar training queries (cosine); k chosen on val."""
    sims = emb @ emb[train].T
    order = np.argsort(-sims, axis=1)
    q_train = q[train]
    results = []
    for k in grid:
        predicted = q_train[order[:, :k]].mean(1)  # (n, experts) expected quality
        choice = predicted.argmax(1)
        votes = np.stack([(q_train[order[:, :k]].argmax(-1) == e).mean(1) for e in range(q.shape[1])], 1)
        results.append((q[val][np.arange(val.sum()), choice[val]].mean(), choice, votes))
    _, choice, votes = max(results, key=lambda r: r[0])
    return choice, votes
