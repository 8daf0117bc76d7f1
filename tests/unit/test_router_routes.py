"""Routes: a feature above its threshold sends a request to a named expert, whatever the decision model chose;
checked before it ships (`steer.router.route_check`)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from experts.errors import SteerlabError
from steer.errors import BadVectorFileError
from steer.router.editing import add_feature, add_route, remove_feature
from steer.router.features import Feature, FeatureSet, Site, read
from steer.router.router import Route, Router


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from experts.expert import Expert
    from steer.router.tiny import train_tiny_router

    folder = tmp_path_factory.mktemp("router")
    router, tasks = train_tiny_router(folder, per_domain=4)
    return folder, router, tasks, Expert.load("tiny-llama")


def marker_feature(reader, marked: list[str], others: list[str], name: str = "marked") -> FeatureSet:
    """A feature at the prompt's last token of layer 0 that fires on `marked` and on none of `others`."""
    site = Site(0, "last")
    h = read(reader, [*marked, *others], site).activations.double()
    target = torch.tensor([1.0] * len(marked) + [-1.0] * len(others), dtype=torch.float64)
    direction = torch.linalg.lstsq(h, target[:, None], driver="gelsd").solution[:, 0]  # fewer rows than dimensions
    scores = h @ direction
    assert scores[: len(marked)].min() > 0.5 and scores[len(marked):].max() < -0.5
    return FeatureSet([Feature(name, "test marker", 1.0, 1.0)], direction.float()[None], torch.tensor([0.0]),
                      reader.name, reader.fingerprint, (site,))


def test_a_route_overrides_the_choice_where_its_feature_fires_and_says_so(trained, tmp_path):
    folder, _, tasks, reader = trained
    router = Router.load(folder)
    queries = [t.query for t in tasks[:8]]
    before = router.decide(reader, queries)
    # the route sends two queries to the expert the decision model did not choose for the first: it changes one
    target = next(e for e in router.experts if e != before[0].expert)
    marked = queries[:2]
    others = [q for q in queries if q not in marked]
    routed = add_route(add_feature(router, marker_feature(reader, marked, others)), Route("marked", 0.0, target))
    after = routed.decide(reader, queries)
    for q, b, a in zip(queries, before, after):
        if q in marked:
            assert a.expert == target and a.routed_by == "marked" and not a.abstained
            assert a.model_choice == b.expert and "route: marked fired" in a.explain()
            assert ("reward" in {x.kind for x in a.adjustments}) == (target == "tiny-llama")  # the new expert's rules
        else:  # untouched: the same choice, the same trace (less the added feature's reading)
            assert a.expert == b.expert and a.routed_by == a.model_choice == ""
            assert a.scores == b.scores and a.adjustments == b.adjustments
    chosen = routed.choose(routed.read(reader, queries).activations)
    assert list(chosen) == [routed.experts.index(d.expert) for d in after]
    other = [e for e in routed.experts if e != target][0]
    pinned = routed.decide(reader, marked, pinned=[other, None])
    assert pinned[0].expert == other and pinned[0].routed_by == ""  # a request naming its expert keeps it
    assert pinned[1].expert == target and pinned[1].routed_by == "marked"
    import shutil

    out = routed.save(shutil.copytree(folder, tmp_path / "routed"))
    again = Router.load(out)
    assert again.routes == [Route("marked", 0.0, target)]
    assert [d.to_dict() for d in again.decide(reader, queries)] == [d.to_dict() for d in after]
    assert remove_feature(again, "marked").routes == []


def test_routes_are_checked_at_load_and_old_files_load_without_them(trained, tmp_path):
    import shutil

    folder, _, _, reader = trained
    router = Router.load(folder)
    with pytest.raises(SteerlabError, match="route names expert 'qwen'; this router routes to tiny-llama, tiny-gemma"):
        replace(router, routes=[Route("gendered_subject", 0.0, "qwen")])
    with pytest.raises(SteerlabError, match="route names feature 'nope'"):
        replace(router, routes=[Route("nope", 0.0, "tiny-gemma")])
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    meta = json.loads((copy / "router.json").read_text())
    meta.pop("routes", None)
    (copy / "router.json").write_text(json.dumps(meta))
    assert Router.load(copy).routes == []
    meta["routes"] = [{"when": "gendered_subject", "to": "tiny-gemma"}]
    (copy / "router.json").write_text(json.dumps(meta))
    with pytest.raises(BadVectorFileError, match="is not a steerlab router"):
        Router.load(copy)


def test_the_route_check_refuses_a_route_to_an_expert_that_writes_the_same(trained, monkeypatch):
    """Negative control: the route's expert has the decision model's expert's weights, so the judge cannot prefer
    it; the check refuses it. And a route that fires on too few requests cannot be checked."""
    from experts.expert import Expert
    from steer.router import route_check
    from steer.router.route_check import check_route

    folder, _, tasks, reader = trained
    router = Router.load(folder)
    queries = [f"The little {animal} walked to the river and" for animal in
               ("fox", "bear", "crow", "snail", "goat", "mouse", "heron", "otter", "lynx", "hare", "wolf", "seal")]
    chosen = router.decide(reader, queries)
    source = chosen[0].expert
    # three experts: the route's one is a copy of the chosen one; a third judges
    three = replace(router, experts=[*router.experts, "copy"], intercept=np.r_[router.intercept, -50.0],
                    coef=np.vstack([router.coef, np.zeros_like(router.coef[:1])]),
                    fingerprints={**router.fingerprints, "copy": "x"})
    feature = marker_feature(reader, queries, [t.query for t in tasks[:6]])
    staged = add_feature(three, feature)
    loaded = {name: Expert.load(name) for name in router.experts}
    loaded["copy"] = loaded[source]
    monkeypatch.setattr(route_check, "MIN_FIRED", 3)
    fired_rows = [q for q, d in zip(queries, chosen) if d.expert == source]
    check = check_route(staged, Route("marked", 0.0, "copy"), reader, loaded, fired_rows, tasks[:6])
    assert check.n_fired == len(fired_rows) and check.nll_change == 0.0 and not check.ships
    assert "does not find its expert's continuations more natural" in check.why
    with pytest.raises(SteerlabError, match="route refused"):
        route_check.install_route(staged, Route("marked", 0.0, "copy"), check)
    monkeypatch.setattr(route_check, "MIN_FIRED", 50)
    with pytest.raises(SteerlabError, match="at least 50 are needed"):
        check_route(staged, Route("marked", 0.0, "copy"), reader, loaded, fired_rows, tasks[:6])


def test_continuation_data_are_written_apart_and_the_threshold_sits_in_the_gap():
    import difflib

    from steer.router import continuation as c

    train, outside = c._written(c.TRAIN, "train"), c._written(c.OUTSIDE, "outside")
    assert int(train.labels.sum()) >= 60 and int((1 - train.labels).sum()) >= 30 and int(outside.labels.sum()) >= 40
    closest = max(difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()
                  for a in train.queries for b in outside.queries)
    assert closest < 0.7  # no outside request is a near copy of a training one
    y = np.r_[np.zeros(50), np.ones(50)]
    assert c.training_threshold(np.r_[np.linspace(-5, -1, 50), np.linspace(3, 7, 50)], y) == pytest.approx(1.0)
    overlap = np.r_[np.linspace(-5, 2, 50), np.linspace(0, 7, 50)]  # no gap: the instructions' edge
    assert c.training_threshold(overlap, y) == pytest.approx(float(np.quantile(overlap[:50], 0.98, method="higher")))
    groups = ["outside:fragment"] * 4 + ["router-test"] * 50
    scores = np.r_[np.full(4, 3.0), np.full(49, -3.0), 1.0]  # one router task of 50 fires: 2%, allowed
    labels = c.Labelled(["q"] * 54, np.r_[np.ones(4), np.zeros(50)], groups)
    assert c.check_outside(scores, labels, 0.0).ships
    scores[-2] = 1.0  # two fire: 4% > 2%
    check = c.check_outside(scores, labels, 0.0)
    assert not check.ships and "fires on 4.0% of router-test" in check.why
