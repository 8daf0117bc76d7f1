"""Edit a trained router without retraining it: add a feature (a probe on the same reader, with no weight in the
decision model, so it changes no choice of expert) or remove one the decision model does not use, and add rules
and routes. The caller runs the checks first (`steer.router.rule_check`, `steer.router.route_check`, the guard's
own in `steer.guard`)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from experts.errors import SteerlabError
from steer.router.features import FeatureSet
from steer.router.router import Route, Router, Rule


def add_feature(router: Router, feature: FeatureSet) -> Router:
    """The router with `feature`'s probes appended (read from the same reader, at the router's sites or new ones,
    which the router then reads too); they carry zero weight in every expert's grade model, so choices stay as they
    were, and rules may fire on them."""
    mine = router.features
    if feature.reader_fingerprint != mine.reader_fingerprint:
        raise SteerlabError(f"the feature reads {feature.reader!r} (weights {feature.reader_fingerprint}); this router "
                            f"reads {mine.reader!r} (weights {mine.reader_fingerprint})")
    clash = sorted(set(feature.names) & set(mine.names))
    if clash:
        raise SteerlabError(f"the router already has feature(s) {', '.join(clash)}")
    sites = list(mine.sites) + [s for s in dict.fromkeys(feature.sites) if s not in mine.sites]
    added = [replace(f, site=sites.index(feature.sites[f.site])) for f in feature.features]
    features = replace(mine, features=mine.features + added, sites=tuple(sites),
                       directions=torch.cat([mine.directions, feature.directions]),
                       biases=torch.cat([mine.biases, feature.biases]))
    k = len(feature.features)
    return replace(router, features=features, coef=np.hstack([router.coef, np.zeros((len(router.experts), k))]),
                   feature_mean=np.r_[router.feature_mean, np.zeros(k)], feature_scale=np.r_[router.feature_scale, np.ones(k)])


def remove_feature(router: Router, name: str) -> Router:
    """The router without feature `name`, the rules and routes that fire on it and any site only it read. Only a
    feature without weight in the decision model (one added by `add_feature`) may go: the decision model's choices
    stay as they were. The rules' files stay in the folder until it is saved over."""
    mine = router.features
    if name not in mine.names:
        raise SteerlabError(f"the router has no feature {name!r}; it has {', '.join(mine.names)}")
    j = mine.names.index(name)
    if np.any(router.coef[:, j] != 0):
        raise SteerlabError(f"feature {name!r} carries weight in the router's decision model; retrain to remove it")
    keep = [i for i in range(len(mine.features)) if i != j]
    used = sorted({0} | {mine.features[i].site for i in keep})
    features = replace(mine, features=[replace(mine.features[i], site=used.index(mine.features[i].site)) for i in keep],
                       directions=mine.directions[keep], biases=mine.biases[keep],
                       sites=tuple(mine.sites[s] for s in used))
    return replace(router, features=features, coef=router.coef[:, keep], feature_mean=router.feature_mean[keep],
                   feature_scale=router.feature_scale[keep], rules=[r for r in router.rules if r.when != name],
                   routes=[r for r in router.routes if r.when != name])


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


def add_route(router: Router, route: Route) -> Router:
    """The router with `route` first among its routes (checked as at load); a route on the same feature replaces
    the old one."""
    return replace(router, routes=[route, *(r for r in router.routes if r.when != route.when)])
