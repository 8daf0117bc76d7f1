"""Assertions shared by unit and integration tests."""

import torch


def assert_capture_matches_bridge(expert, prompts, *, atol: float, rtol: float) -> None:
    """Every fast hook name, captured from a padded batch, equals the bridge's run on each prompt alone."""
    names = expert.hook_names()
    cache = expert.run_with_cache(prompts, names)
    for row, prompt in enumerate(prompts):
        _, reference = expert.bridge.run_with_cache(expert.tokenize([prompt]).input_ids)
        for name in names:
            torch.testing.assert_close(cache.unpadded(name)[row], reference[name][0], atol=atol, rtol=rtol, msg=name)


def guard_tiny_router(router, flagged: str, spared: list[str], out):
    """`router` (a tiny one, loaded from its folder) with a guard installed in `out`: a harm feature read at a site
    the router does not read (the prompt's last token at layer 0) that fires on `flagged` and on none of `spared`,
    and a refusal vector per expert (8 × ones at layer 1, strength 4)."""
    from experts.expert import Expert
    from steer.guard import FEATURE
    from steer.guard.build import Guard, install_guard
    from steer.guard.direction import Candidate, ChosenDirection
    from steer.guard.feature import HarmFeature, OutsideCheck
    from steer.router.features import Feature, FeatureSet, Site, read
    from steer.vectors.vector import Provenance, SteeringVector

    reader = Expert.load(router.features.reader)
    site = Site(0, "last")
    h = read(reader, [flagged, *spared], site).activations
    direction = h[0] - h[1:].mean(0)
    scores = h @ direction
    bias = -float(scores[0] + scores[1:].max()) / 2  # fires above the midpoint of the flagged and the nearest spared
    features = FeatureSet([Feature(FEATURE, "harm", 1.0, 1.0)], direction[None], torch.tensor([bias]),
                          reader.name, reader.fingerprint, (site,))
    directions = {}
    for name in router.experts:
        expert = Expert.load(name)
        vector = SteeringVector({1: 8 * torch.ones(expert.d_model)}, provenance=Provenance(
            expert=name, fingerprint=expert.fingerprint, method="refusal:answers"))
        directions[name] = ChosenDirection(vector, 4.0, [Candidate("answers", 1, 0.3, 4.0, 1.0, 1.0, 4)], 0.0)
    check = OutsideCheck(0.99, {"safe_scary": 0.0, "ordinary": 0.0}, {}, {}, True, "passes")
    return install_guard(router, Guard(HarmFeature(features, 0.0, 1.0), check, directions), out)
