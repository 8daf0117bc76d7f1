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
