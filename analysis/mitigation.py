"""The vectors of the mitigation study, each from data written apart from the other's.

- The **planted skew** (the positive control): agentic minus communal one-sentence descriptions written for
  steerlab (`steer/data/agentic_communal.jsonl`), mean over tokens. Added with +c to men's letters and −c to
  women's, it makes the expert write the stereotype on purpose, with a size the audit must then see.
- The **content direction** a mitigation counter-steers along: agentic minus communal biographies from Wan et
  al.'s released agency data (train split), mean over tokens, with the gender direction (`gender` pairs: the
  same sentence with name and pronouns swapped, last token) projected out at every layer, so that pushing along
  it changes what a letter says about the candidate, not who the candidate is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

import torch

from analysis.agency import load_split
from analysis.audit import AuditConfig, run_audit
from experts.expert import Expert
from steer.datasets import ContrastPair, load_pairs
from steer.rad.training import load_labeled
from steer.scale.jobs import Executor
from steer.vectors.extract import compute_vector, default_layer
from steer.vectors.vector import SteeringVector

log = logging.getLogger(__name__)
PLANT_DATA = "agentic_communal.jsonl"
# The demo's study (SmolLM2-135M-Instruct, layer 12): a planted skew of 2 (about a third of the typical residual
# norm) and two counter-steering strengths along the content direction (norm ~9 there); see README.
DEMO_PLANT_COEF = 2.0
DEMO_COUNTER_COEFS = (5.0, 6.0)


def _contrast(positive: Sequence[str], negative: Sequence[str]) -> list[ContrastPair]:
    """Unpaired texts as contrast pairs (mean differences only need the two groups)."""
    return [ContrastPair(p, n) for p, n in zip(positive, negative)]


def planted_skew_vector(expert: Expert, layers: Sequence[int], seed: int = 0) -> SteeringVector:
    rows, sha = load_labeled(str(files("steer") / "data" / PLANT_DATA))
    agentic = [r.text for r in rows if r.label >= 0.5]
    communal = [r.text for r in rows if r.label < 0.5]
    return compute_vector(expert, _contrast(agentic, communal), layers, token_rule="mean", seed=seed,
                          dataset=f"steer/data/{PLANT_DATA} (agentic - communal)", dataset_sha256=sha)


def content_vector(expert: Expert, layers: Sequence[int], seed: int = 0) -> SteeringVector:
    train = load_split("train")
    agency = compute_vector(expert, _contrast(train[train.label == 1].text.tolist(), train[train.label == 0].text.tolist()),
                            layers, token_rule="mean", seed=seed, dataset="wan2023_agency/train.csv (agentic - communal)")
    gender_pairs, _ = load_pairs("gender")
    gender = compute_vector(expert, gender_pairs, layers, seed=seed, dataset="gender")
    directions = {}
    for layer, direction in agency.directions.items():
        unit = gender.directions[layer] / gender.directions[layer].norm().clamp_min(1e-12)
        directions[layer] = direction - (direction @ unit) * unit
    note = f"gender direction projected out at every layer (cosine before: {cosine(agency, gender)})"
    return replace(agency, directions=directions, provenance=replace(agency.provenance, notes=note))


def cosine(a: SteeringVector, b: SteeringVector) -> dict[int, float]:
    """Per shared layer, the cosine between two vectors' directions (how related the plant and the remedy are)."""
    return {layer: round(torch.cosine_similarity(a.directions[layer], b.directions[layer], dim=0).item(), 3)
            for layer in sorted(set(a.directions) & set(b.directions))}


@dataclass(frozen=True)
class StudySettings:
    """A mitigation study: the audit of `expert`, a planted skew of `plant_coef` (0: none, the expert's own skew is
    the target), counter-steering along the content direction at `coefs`, and both baselines, at `layers`
    (default: `default_layer`)."""

    expert: str
    size: str = "small"
    plant_coef: float = DEMO_PLANT_COEF
    coefs: tuple[float, ...] = DEMO_COUNTER_COEFS
    layers: tuple[int, ...] | None = None
    seed: int = 0
    max_new_tokens: int = 200
    names_per_gender: int | None = None
    bios: int | None = None
    batch_size: int = 48  # letters per forward on CPU: 48 writes ~1.6x faster than 16 on 2 cores


def run_study(settings: StudySettings, out: Path, *, expert: Expert | None = None, executor: Executor | None = None,
              progress: bool = True) -> Path:
    """Build the vectors into `out`, then generate (resumably), score and report every condition; returns report.md."""
    expert = expert or Expert.load(settings.expert)
    out.mkdir(parents=True, exist_ok=True)
    layers = list(settings.layers or [default_layer(expert)])
    content = content_vector(expert, layers, settings.seed)
    content.save(out / "content_direction.safetensors")
    plant_path = None
    if settings.plant_coef:
        plant = planted_skew_vector(expert, layers, settings.seed)
        plant_path = out / "planted_skew.safetensors"
        plant.save(plant_path)
        log.info("cosine(planted skew, content direction) per layer: %s", cosine(plant, content))
    config = AuditConfig(expert=settings.expert, size=settings.size, samples=0, seed=settings.seed,
                         max_new_tokens=settings.max_new_tokens, names_per_gender=settings.names_per_gender,
                         bios=settings.bios, vector=str(out / "content_direction.safetensors"), coefs=settings.coefs,
                         operator="counter", plant_vector=str(plant_path) if plant_path else None,
                         plant_coef=settings.plant_coef, random_baseline=True, prompt_baseline=True)
    return run_audit(config, out / "audit", batch_size=settings.batch_size, expert=expert, executor=executor,
                     progress=progress)
