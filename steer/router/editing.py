"""Edit a trained router without retraining it: add a feature (a probe on the same reader layer, with no weight in
the decision model, so it changes no choice of expert) and add rules. The caller runs the rule's checks first
(`steer.router.rule_check`, the guard's own in `steer.guard`)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from experts.errors import SteerlabError
from steer.router.features import FeatureSet
from steer.router.router import Router, Rule


def add_feature(router: Router, feature: FeatureSet) -> Router:
    """The router with `feature`'s probes appended (read from the same reader and layer); they carry zero weight in
    every expert's grade model, so choices stay as they were, and rules may fire on them."""
    mine = router.features
    if (feature.reader_fingerprint, feature.layer) != (mine.reader_fingerprint, mine.layer):
        raise SteerlabError(f"the feature reads {feature.reader!r} (weights {feature.reader_fingerprint}) at layer "
                            f"{feature.layer}; this router reads {mine.reader!r} (weights {mine.reader_fingerprint}) "
                            f"at layer {mine.layer}")
    clash = sorted(set(feature.names) & set(mine.names))
    if clash:
        raise SteerlabError(f"the router already has feature(s) {', '.join(clash)}")
    features = replace(mine, features=mine.features + feature.features,
                       directions=torch.cat([mine.directions, feature.directions]),
                       biases=torch.cat([mine.biases, feature.biases]))
    k = len(feature.features)
    return replace(router, features=features, coef=np.hstack([router.coef, np.zeros((len(router.experts), k))]),
                   feature_mean=np.r_[router.feature_mean, np.zeros(k)], feature_scale=np.r_[router.feature_scale, np.ones(k)])


def add_rule(router: Router, rule: Rule, source: Path | None = None) -> Router:
    """The router with `rule` appended (checked as at load); `source`: the rule's file, copied into the router's
    folder as `rule.file`. A rule on the same file and expert replaces the old one."""
    if router.folder is None:
        raise SteerlabError("add_rule needs a router loaded from (or saved to) a folder")
    if source is not None:
        target = router.folder / rule.file
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    kept = [r for r in router.rules if (r.file, r.expert) != (rule.file, rule.expert)]
    return replace(router, rules=[*kept, rule])
