"""The letters audit end to end on the real default expert (tiny size, short letters)."""

import json

import pytest

from analysis.audit import AuditConfig, run_audit

pytestmark = pytest.mark.slow


def test_audit_runs_and_reports_on_smollm2(smollm2, tmp_path):
    config = AuditConfig(expert=smollm2.name, names_per_gender=1, samples=0, max_new_tokens=40)
    report = run_audit(config, tmp_path, progress=False, expert=smollm2)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["lexicons"]) == 9 and results["manifest"]["fingerprint"] == smollm2.fingerprint
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 8  # 2 template pairs + 2 biography pairs, greedy only
    assert sum(s["name_present"] for s in scores) >= 4  # the expert writes about the named person
    assert "## Paired differences" in report.read_text()
