#!/usr/bin/env bash
# Rebuild the shipped default router (steer/data/router/default) from the shipped task set: the policy's tone
# reward, every expert's answers to the task set and to HumanEval's 164 problems, graded (reused from
# runs/router_quality_v2 when present; about 70 minutes on 2 CPU cores the first time), the router (features
# validated on the outside probe set and HumanEval, the rule validated on held-out tasks), then its operating point,
# then the guard (harm feature checked on HarmBench and Do-Not-Answer, a refusal direction per expert; ~35 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
steer=.venv/bin/steer
quality=runs/router_quality_v2
router=steer/data/router/default
work=$(mktemp -d)
$steer rad train --expert smollm2-135m-instruct --data steer/data/sentiment_labeled.jsonl -o "$work/tone_reward.safetensors"
cp scripts/default_policy.toml "$work/policy.toml"
rm -rf "$router"
$steer route train --policy "$work/policy.toml" --quality-dir "$quality" --humaneval 164 --out "$router"
mkdir -p "$router/quality"
cp "$quality"/quality_*.csv "$quality"/answers_*.jsonl "$router/quality/"
$steer route calibrate --router "$router" --strong-share 0.5
$steer route guard --router "$router" --out "$router"
