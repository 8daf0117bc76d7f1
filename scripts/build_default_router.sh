#!/usr/bin/env bash
# Rebuild the shipped default router (steer/data/router/default) from the shipped task set:
# the policy's gender vector and tone reward, the experts' quality tables (reused from
# runs/router_quality when present), then the router. About 15 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
steer=.venv/bin/steer
work=$(mktemp -d)
$steer vector compute --expert smollm2-135m-instruct --pairs gender --layers 6-19 -o "$work/gender.safetensors"
$steer rad train --expert smollm2-135m-instruct --data steer/data/sentiment_labeled.jsonl -o "$work/tone_reward.safetensors"
cp scripts/default_policy.toml "$work/policy.toml"
$steer route train --policy "$work/policy.toml" --quality-dir runs/router_quality --out steer/data/router/default
mkdir -p steer/data/router/default/quality
cp runs/router_quality/quality_*.csv steer/data/router/default/quality/
