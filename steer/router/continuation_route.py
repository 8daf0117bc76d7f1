"""Add the continuation route to a router without retraining it: train the continuation feature, check it outside,
check the route to the base expert (`steer.router.route_check`), and write the router only if both pass."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from experts.errors import SteerlabError
from steer.router.continuation import (
    FEATURE,
    ContinuationFeature,
    OutsideCheck,
    check_outside,
    outside_requests,
    train_continuation_feature,
    training_requests,
)
from steer.router.editing import add_feature, remove_feature
from steer.router.features import candidate_sites, read
from steer.router.route_check import RouteCheck, check_route, install_route
from steer.router.router import Route, Router
from steer.router.tasks import task_set


@dataclass(frozen=True)
class ContinuationRoute:
    router: Router  # as written to its folder
    feature: ContinuationFeature
    outside: OutsideCheck
    check: RouteCheck


def add_continuation_route(router: Router, out: Path, expert: str, *, replace_route: bool = False, seed: int = 0,
                           progress: bool = True) -> ContinuationRoute:
    """Copy `router` to `out` (unless it is there) with the continuation feature and a route to `expert`; nothing is
    written when the feature or the route fails its check."""
    from experts.expert import Expert

    if expert not in router.experts:
        raise SteerlabError(f"cannot route to {expert!r}: this router routes to {', '.join(router.experts)}")
    if router.folder is None:
        raise SteerlabError("the continuation route needs a router loaded from its folder (Router.load)")
    if FEATURE in router.features.names:
        if not replace_route:
            raise SteerlabError(f"the router already has a {FEATURE!r} feature; pass --replace to build a new one")
        router = remove_feature(router, FEATURE)
    reader = Expert.load(router.features.reader)
    sites = candidate_sites(reader, router.features.layer)
    train = training_requests(seed)
    feature = train_continuation_feature(reader, sites, train, read(reader, train.queries, sites, progress=progress)
                                         .activations, seed=seed, progress=progress)
    outside = outside_requests(seed)
    at = read(reader, outside.queries, feature.features.sites, progress=progress).activations
    checked = check_outside(feature.scores(at), outside, feature.threshold)
    if not checked.ships:
        raise SteerlabError(f"the continuation feature is not shipped: {checked.why}")
    measured = replace(feature.features, features=[replace(feature.features.features[0], outside_auroc=checked.auroc)])
    edited = add_feature(router, measured)
    route = Route(FEATURE, feature.threshold, expert)
    experts = {name: reader if name == reader.name else Expert.load(name) for name in router.experts}
    held_out = [t for t in task_set(seed=seed) if t.split in ("val", "test")]
    check = check_route(edited, route, reader, experts, outside.group("outside:fragment").queries, held_out, seed=seed,
                        progress=progress)
    final = install_route(edited, route, check)
    final = replace(final, notes={**final.notes, FEATURE: {
        "threshold": feature.threshold, "cv_auroc": feature.cv_auroc, "site": str(feature.features.sites[0]),
        "site_aurocs_on_training": feature.site_aurocs, "seed": seed,
        "outside": {"auroc": checked.auroc, "fires": checked.fires, "n": checked.n}}})
    if Path(router.folder).resolve() != out.resolve():
        shutil.copytree(router.folder, out, dirs_exist_ok=True)
    final = replace(final, folder=out)
    final.save(out)
    return ContinuationRoute(final, feature, checked, check)
