"""The letters audit end to end on the real default expert: its letters are letters."""

import json

import pytest

from analysis.audit import AuditConfig, run_audit

pytestmark = pytest.mark.slow


def test_audit_runs_and_its_letters_pass_the_gate_on_smollm2(smollm2, tmp_path):
    config = AuditConfig(expert=smollm2.name, names_per_gender=2, bios=2, samples=0)
    report = run_audit(config, tmp_path, progress=False, expert=smollm2)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["lexicons"]) == 9 and results["manifest"]["fingerprint"] == smollm2.fingerprint
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 8  # 2 name pairs x 2 biographies, greedy only
    # measured on the demo's 48 unsteered letters: 90% pass (finished, third person, right pronouns, no loop)
    assert sum(s["gate_passes"] for s in scores) >= 5
    assert "## Summary" in report.read_text() and results["skew"][0]["gap"] == "agency"
