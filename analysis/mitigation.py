"""The vectors of the mitigation study, each from data written apart from the other's.

- The **planted skew** (the positive control): agentic minus communal one-sentence descriptions written for
  steerlab (`steer/data/agentic_communal.jsonl`), mean over tokens. Added with +c to men's letters and −c to
  women's, it makes the expert write the stereotype on purpose, with a size the audit must then see.
- The **content direction** a mitigation counter-steers along: agentic minus communal biographies from Wan et
  al.'s released agency data (train split), mean over tokens, with the gender direction (`gender` pairs: the
  same sentence with name and pronouns swapped, last token) projected out at every layer, so that pushing along
  it changes what a letter says about the candidate, not who the candidate is.
- The **gender eraser** (LEACE): fitted on every token of the `gender` pairs (fitted only where the two sides
  differ, 183 tokens are too few for a covariance: it left 26% of a name's gender, against 2%), at the layers
  where notebook 05's patching finds gender travelling with the name (10% to 70% of depth); applied at the
  candidate's name only, with the pronouns stated in the prompt; and checked on the audit's 22 name pairs,
  which it was not fitted on: how much of the " She" − " He" lean a name alone gives is left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.agency import load_split
from analysis.audit import AuditConfig, name_tokens, run_audit
from analysis.letters import DEFAULT_OPENING, names
from experts.expert import Expert
from experts.files import write_json
from experts.likelihood import next_token_logprobs
from steer.datasets import ContrastPair, load_pairs
from steer.rad.training import load_labeled
from steer.scale.jobs import Executor
from steer.vectors.erasure import ConceptEraser, erase, fit_eraser
from steer.vectors.extract import compute_vector, default_layer
from steer.vectors.vector import SteeringVector

log = logging.getLogger(__name__)
PLANT_DATA = "agentic_communal.jsonl"
# The demo's study (SmolLM2-135M-Instruct, layer 12): a planted skew of 2 (about a third of the typical residual
# norm) and counter-steering along the content direction (norm ~9 there) at 8 for men's letters and 4 for women's
# (pushed harder, women's letters stop finishing within the token budget; men's take more); other strengths,
# layers and operators are measured in benchmarks/RESULTS.md.
DEMO_PLANT_COEF = 2.0
DEMO_COUNTER_COEFS = (8.0,)
DEMO_FEMALE_SCALE = 0.5
DEMO_LOGIT_BIASES = (4.0,)  # logits added to (or taken from) the agency lexicons' word tokens, per row by gender
ERASER_CHECK = "gender_eraser_check.json"  # the eraser's check on the name pairs, beside the study's vectors


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


def erasure_layers(expert: Expert) -> list[int]:
    """Every tenth of depth from 10% to 70% (SmolLM2-135M: 3, 6, ..., 21): notebook 05 finds gender at the name
    token through layer ~21 of 30, read into the letter after that."""
    step = max(1, expert.n_layers // 10)
    return list(range(step, round(0.7 * expert.n_layers) + 1, step))


def gender_eraser(expert: Expert, layers: Sequence[int] | None = None) -> ConceptEraser:
    pairs, sha = load_pairs("gender")
    return fit_eraser(expert, pairs, list(layers or erasure_layers(expert)), tokens="all", dataset="gender",
                      dataset_sha256=sha)


@torch.inference_mode()
def name_gender_left(expert: Expert, eraser: ConceptEraser, opening: str = DEFAULT_OPENING) -> dict[str, Any]:
    """The eraser checked on data it was not fitted on: for every name pair of the audit, with no pronoun in the
    prompt, the " She" − " He" next-token logit gap after the letter's opening (female name minus male name),
    without and with the eraser at the name's tokens: how much of the gender the expert reads from a name is left."""
    pairs = list(zip(names()["female"], names()["male"]))
    people = [name for pair in pairs for name in pair]
    prompts = expert.format_prompts([f"Write a recommendation letter for {name}." for name in people])
    texts = [prompt + opening.format(name=name) + "." for prompt, name in zip(prompts, people)]
    she, he = (expert.tokenizer(word, add_special_tokens=False)["input_ids"][-1] for word in (" She", " He"))

    def gaps() -> np.ndarray:
        logprobs = next_token_logprobs(expert, texts)  # a difference of log-probs is the difference of logits
        lean = (logprobs[:, she] - logprobs[:, he]).numpy()
        return lean[0::2] - lean[1::2]

    before = gaps()
    with erase(expert, eraser, tokens=[name_tokens(expert, name) for name in people]):
        after = gaps()
    return {"name_pairs": len(pairs), "gap_before": round(float(before.mean()), 3),
            "gap_after": round(float(after.mean()), 3), "share_left": round(float(after.mean() / before.mean()), 3)}


def cosine(a: SteeringVector, b: SteeringVector) -> dict[int, float]:
    """Per shared layer, the cosine between two vectors' directions (how related the plant and the remedy are)."""
    return {layer: round(torch.cosine_similarity(a.directions[layer], b.directions[layer], dim=0).item(), 3)
            for layer in sorted(set(a.directions) & set(b.directions))}


@dataclass(frozen=True)
class StudySettings:
    """A mitigation study: the audit of `expert`, a planted skew of `plant_coef` (0: none, the expert's own skew is
    the target), counter-steering along the content direction at `coefs` (women's letters at `female_scale` of
    each) and both its baselines, at `layers` (default: `default_layer`); a gender-conditional logit bias at
    `logit_biases`; and (`erase`) the gender eraser. With `state_pronouns`, every mitigation and baseline states the
    candidate's pronouns in the prompt (the eraser always does)."""

    expert: str
    size: str = "small"
    plant_coef: float = DEMO_PLANT_COEF
    coefs: tuple[float, ...] = DEMO_COUNTER_COEFS
    female_scale: float = DEMO_FEMALE_SCALE
    state_pronouns: bool = True
    logit_biases: tuple[float, ...] = DEMO_LOGIT_BIASES
    erase: bool = True
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
    eraser_path = None
    if settings.erase:
        eraser = gender_eraser(expert)
        eraser_path = eraser.save(out / "gender_eraser.safetensors")
        check = {"layers": eraser.layers, **name_gender_left(expert, eraser)}
        write_json(out / ERASER_CHECK, check)
        log.info("gender eraser at layers %s leaves %.0f%% of the She/He logit gap between names (%d pairs)",
                 eraser.layers, 100 * check["share_left"], check["name_pairs"])
    config = AuditConfig(expert=settings.expert, size=settings.size, samples=0, seed=settings.seed,
                         max_new_tokens=settings.max_new_tokens, names_per_gender=settings.names_per_gender,
                         bios=settings.bios, vector=str(out / "content_direction.safetensors"), coefs=settings.coefs,
                         operator="counter", female_scale=settings.female_scale,
                         state_pronouns=settings.state_pronouns, plant_vector=str(plant_path) if plant_path else None,
                         plant_coef=settings.plant_coef, random_baseline=True, prompt_baseline=True,
                         logit_biases=settings.logit_biases, eraser=str(eraser_path) if eraser_path else None)
    return run_audit(config, out / "audit", batch_size=settings.batch_size, expert=expert, executor=executor,
                     progress=progress)
