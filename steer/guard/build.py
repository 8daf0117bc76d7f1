"""Build the guard into a router folder: the harm feature (trained on the guard's training requests, shipped only if
it passes outside), a refusal direction per expert with its strength (chosen on training requests), and one rule
per expert: where the harm feature fires and that expert is chosen, steer it along its refusal direction.
Requests may not weaken the guard unless the operator sets `request_max`."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from experts.errors import SteerlabError
from experts.files import file_sha256
from steer.guard import FEATURE
from steer.guard.data import TRAIN, outside_requests, training_requests
from steer.guard.direction import ChosenDirection, choose_direction
from steer.guard.feature import HarmFeature, OutsideCheck, check_outside, train_harm_feature
from steer.router.editing import add_feature, add_rule, remove_feature
from steer.router.features import Site, candidate_sites, read
from steer.router.router import Router, Rule

if TYPE_CHECKING:
    from experts.expert import Expert

# harmful training requests held apart (a seeded random draw) from the direction's fit, to choose its layer and strength
N_SELECT = 40


def vector_file(expert: str) -> str:
    return f"refusal_{expert}.safetensors"


@dataclass(frozen=True)
class Guard:
    feature: HarmFeature
    outside: OutsideCheck
    directions: dict[str, ChosenDirection]


def read_outside(reader: Expert, sites: tuple[Site, ...], seed: int = 0, progress: bool = False,
                 sample: int | None = None) -> tuple[dict[str, Tensor], dict[str, np.ndarray], dict]:
    """Every outside set read at `sites`: (the activations by set, a row mask per harmful source, the sets).
    `sample`: at most this many harmful and ordinary requests each (a seeded draw, stratified by source)."""
    sets = {name: s.sample(sample, seed) for name, s in outside_requests(seed).items()}
    h = {name: read(reader, s.queries, sites, progress=progress).activations for name, s in sets.items()}
    groups = sets["harmful"].group
    masks = {g: np.array([x == g for x in groups]) for g in sorted(set(groups))}
    return h, masks, sets


def build_guard(router: Router, reader: Expert, experts: dict[str, Expert], *, seed: int = 0,
                progress: bool = True) -> Guard:
    """Train the harm feature on the router's reader (its site chosen on training requests), check it outside,
    choose each expert's refusal direction."""
    router.check_reader(reader)
    train = training_requests(seed)
    sites = candidate_sites(reader, router.features.layer)
    h = read(reader, train.queries, sites, progress=progress).activations
    feature = train_harm_feature(reader, sites, train, h, seed, progress=progress)
    h_out, masks, _ = read_outside(reader, feature.features.sites, seed, progress=progress)
    outside = check_outside({k: feature.scores(v) for k, v in h_out.items()}, masks, feature.threshold)
    if not outside.ships:  # before the expensive part: a guard without its feature is not installed
        raise SteerlabError("the harm feature is not shipped: " + "; ".join(
            outside.lines(feature.threshold, str(feature.features.sites[0]))))
    harmful = [q for q, y in zip(train.queries, train.harmful) if y]
    harmless = [q for q, y in zip(train.queries, train.harmful) if not y]
    order = np.random.default_rng(seed).permutation(len(harmful))
    select, fit = [harmful[i] for i in order[:N_SELECT]], [harmful[i] for i in order[N_SELECT:]]
    directions = {name: choose_direction(expert, fit, harmless, select, dataset=str(TRAIN.name), progress=progress)
                  for name, expert in experts.items()}
    return Guard(feature, outside, directions)


def without_guard(router: Router) -> Router:
    """The router with its guard (the harm feature, its rules and its record) taken out; choices are unchanged."""
    if FEATURE not in router.features.names:
        return router
    stripped = remove_feature(router, FEATURE)
    return replace(stripped, notes={k: v for k, v in stripped.notes.items() if k != "guard"})


def refuse_existing_guard(router: Router, replace_guard: bool) -> None:
    """A router that has a guard gets a new one only when asked (`replace_guard`, the CLI's --replace)."""
    if FEATURE in router.features.names and not replace_guard:
        raise SteerlabError(f"the router in {router.folder} already has a guard (feature {FEATURE!r}); add --replace "
                            "to build a new one in its place")


def install_guard(router: Router, guard: Guard, out: Path, request_max: float = 0.0, replace_guard: bool = False) -> Router:
    """Copy the router to `out` (unless it is there) and add the harm feature and one rule per expert; refuses a
    feature that failed its outside check. `request_max`: the largest strength a request may ask for (0, the
    default: a request cannot weaken or strengthen the guard). `replace_guard`: a router that has a guard gets this
    one instead (otherwise it is refused)."""
    if not guard.outside.ships:
        raise SteerlabError(f"the harm feature is not shipped: {guard.outside.why}")
    if router.folder is None:
        raise SteerlabError("install_guard needs a router loaded from its folder (Router.load)")
    if Path(router.folder).resolve() != out.resolve():
        shutil.copytree(router.folder, out, dirs_exist_ok=True)
    refuse_existing_guard(router, replace_guard)
    router = without_guard(router)
    measured = guard.feature.features
    measured = replace(measured, features=[replace(measured.features[0], outside_auroc=guard.outside.auroc)])
    edited = replace(add_feature(router, measured), folder=out)
    for name, chosen in guard.directions.items():
        path = out / vector_file(name)
        chosen.vector.save(path)
        rule = Rule(when=FEATURE, kind="steer", file=vector_file(name), strength=chosen.strength,
                    above=guard.feature.threshold, expert=name, target="refusal", direction=1, request_max=request_max)
        edited = add_rule(edited, rule)
    record = {"threshold": guard.feature.threshold, "cv_auroc": guard.feature.cv_auroc, "c": guard.feature.c,
              "site": str(guard.feature.features.sites[0]),
              "sites_on_training": [asdict(s) for s in guard.feature.site_scores],
              "outside": {"auroc": guard.outside.auroc, "fpr": guard.outside.fpr, "tpr": guard.outside.tpr,
                          "n": guard.outside.n, "why": guard.outside.why},
              "training_data_sha256": file_sha256(TRAIN),
              "directions": {name: chosen.record() for name, chosen in guard.directions.items()}}
    edited = replace(edited, notes={**edited.notes, "guard": record})
    edited.save(out)
    return edited
