"""Hooks never leak: after every scope, error paths included, the model is as before."""

import pytest
import torch

from experts.hookpoints import HookPoint
from experts.hooks import attach, count_forward_hooks, hook_context


def _logits(expert, text="Kelly is warm"):
    batch = expert.tokenize([text])
    with torch.no_grad():
        return expert.model(input_ids=batch.input_ids).logits


def test_editing_hooks_change_outputs_and_leave_no_trace(tiny):
    before = _logits(tiny)
    points = [tiny.hook_point(n) for n in ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post")]
    for point in points:
        with hook_context(tiny.model, [(point, lambda a: a + 1.0)]):
            assert not torch.equal(_logits(tiny), before)
        assert count_forward_hooks(tiny.model) == 0
    assert torch.equal(_logits(tiny), before)


def test_identity_and_reading_hooks_are_bit_identical(tiny):
    before = _logits(tiny)
    points = [tiny.hook_point(n) for n in tiny.hook_names()]
    with hook_context(tiny.model, [(p, lambda a: a) for p in points] + [(p, lambda a: None) for p in points]):
        assert torch.equal(_logits(tiny), before)


def test_exception_inside_scope_removes_hooks(tiny):
    point = tiny.hook_point("blocks.1.hook_resid_post")

    def explode(activation):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with hook_context(tiny.model, [(point, explode)]):
            _logits(tiny)
    assert count_forward_hooks(tiny.model) == 0


def test_failing_registration_midway_removes_earlier_hooks(tiny):
    good = tiny.hook_point("blocks.0.hook_resid_post")
    bad = HookPoint("blocks.9.hook_resid_post", 9, "model.layers.9", "output")
    with pytest.raises(AttributeError):
        with hook_context(tiny.model, [(good, lambda a: a * 2), (bad, lambda a: a)]):
            pass
    assert count_forward_hooks(tiny.model) == 0
    with pytest.raises(AttributeError):
        attach(tiny.model, [(good, lambda a: a * 2), (bad, lambda a: a)])
    assert count_forward_hooks(tiny.model) == 0


def test_handle_removal_is_idempotent(tiny):
    handle = attach(tiny.model, [(tiny.hook_point("hook_embed"), lambda a: a * 0)])
    assert count_forward_hooks(tiny.model) == 1
    handle.remove()
    handle.remove()
    assert count_forward_hooks(tiny.model) == 0


def test_nested_scopes_remove_only_their_own(tiny):
    outer = tiny.hook_point("blocks.0.hook_resid_post")
    inner = tiny.hook_point("blocks.1.hook_resid_post")
    with hook_context(tiny.model, [(outer, lambda a: None)]):
        with hook_context(tiny.model, [(inner, lambda a: None)]):
            assert count_forward_hooks(tiny.model) == 2
        assert count_forward_hooks(tiny.model) == 1
    assert count_forward_hooks(tiny.model) == 0


def test_input_hooks_work_when_hidden_states_come_as_keyword():
    from experts.hooks import _input_hook

    hidden = torch.randn(1, 3, 8)
    hook = _input_hook(lambda a: a * 0)
    args, kwargs = hook(torch.nn.Identity(), (), {"hidden_states": hidden, "other": 1})
    assert args == () and kwargs["other"] == 1 and torch.equal(kwargs["hidden_states"], hidden * 0)
    args, kwargs = hook(torch.nn.Identity(), (hidden, 2), {})
    assert torch.equal(args[0], hidden * 0) and args[1] == 2
