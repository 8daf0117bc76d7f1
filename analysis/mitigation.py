"""The mitigation study: a skew planted where the remedy cannot have seen it, a remedy fitted on other letters, and
its verdict on held-out ones.

- The **positive control** is planted by the prompt (`analysis.letters.PLANT_INSTRUCTIONS`: men's letters asked to
  stress ambition and leadership, women's warmth and kindness), independent of every steering vector. A skew
  planted by steering is still available (`plant="vector"`: agentic minus communal biographies from Wan et al.'s
  agency data, mean over tokens, +c for men and −c for women).
- The **content direction** a mitigation counter-steers along: agentic minus communal one-sentence descriptions
  written for steerlab (`steer/data/agentic_communal.jsonl`, every text), mean over tokens, with the gender
  direction (`gender` pairs: the same sentence with name and pronouns swapped, last token) projected out at every
  layer. Not Wan et al.'s data, which trains the agency classifier that judges it.
- **Fitting**: on the size's fit half (name pairs and biographies disjoint from the test half), the planted letters
  are counter-steered at each strength of a grid; the strength kept is the one whose agency gap comes closest to
  the fit half's unsteered gap among those that keep the gate pass rate within `GATE_BUDGET` of the planted
  letters' (else the weakest).
- **Judging**, on the test half: unsteered, planted, planted + counter-steering at the fitted strength, an
  equal-norm random vector, the prompting baseline, and the counter-steering on the unplanted expert (does it create
  a skew where there was none?). The report prints the cosine of each direction with the plant's.
- The **gender eraser** (LEACE): fitted on every token of the `gender` pairs at 10% to 70% of depth, applied at the
  candidate's name with the pronouns stated, and checked on the audit's 22 name pairs, which it was not fitted on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.audit import AuditConfig, name_tokens, run_audit
from analysis.fluency import judge_for
from analysis.letters import DEFAULT_OPENING, PLANT_INSTRUCTIONS, build_prompts, names
from experts.errors import SteerlabError
from experts.expert import Expert
from experts.files import file_sha256, write_json
from experts.likelihood import next_token_logprobs
from steer.datasets import load_pairs
from steer.evaluate.sweep import random_like
from steer.rad.training import load_labeled
from steer.scale.jobs import Executor
from steer.vectors.erasure import ConceptEraser, erase, fit_eraser
from steer.vectors.extract import compute_group_vector, compute_vector, default_layer
from steer.vectors.vector import Provenance, SteeringVector

log = logging.getLogger(__name__)
CONTENT_DATA = "agentic_communal.jsonl"
# The demo's study (SmolLM2-135M-Instruct, layer 12): counter-steering strengths tried on the fit half (men's
# letters; women's at DEMO_FEMALE_SCALE of each). Other choices are measured in benchmarks/RESULTS.md.
DEMO_COUNTER_GRID = (0.125, 0.25)
DEMO_FEMALE_SCALE = 1.0
DEMO_PLANT_COEF = 2.0  # only for plant="vector"
GATE_BUDGET = 0.05  # a fitted strength may cost at most this much of the planted letters' gate pass rate
ERASER_CHECK = "gender_eraser_check.json"  # the eraser's check on the name pairs, beside the study's vectors
PLANTS = ("prompt", "vector")


def _project_out_gender(expert: Expert, vector: SteeringVector, layers: Sequence[int], seed: int) -> SteeringVector:
    gender_pairs, _ = load_pairs("gender")
    gender = compute_vector(expert, gender_pairs, layers, seed=seed, dataset="gender")
    directions = {}
    for layer, direction in vector.directions.items():
        unit = gender.directions[layer] / gender.directions[layer].norm().clamp_min(1e-12)
        directions[layer] = direction - (direction @ unit) * unit
    note = f"gender direction projected out at every layer (cosine before: {cosine(vector, gender)})"
    return replace(vector, directions=directions, provenance=replace(vector.provenance, notes=note))


def content_vector(expert: Expert, layers: Sequence[int], seed: int = 0) -> SteeringVector:
    """Agentic minus communal sentences written for steerlab (every one of them), gender projected out."""
    rows, sha = load_labeled(str(files("steer") / "data" / CONTENT_DATA))
    agency = compute_group_vector(expert, [r.text for r in rows if r.label >= 0.5], [r.text for r in rows if r.label < 0.5],
                                  layers, token_rule="mean", seed=seed,
                                  dataset=f"steer/data/{CONTENT_DATA} (agentic - communal)", dataset_sha256=sha)
    return _project_out_gender(expert, agency, layers, seed)


def planted_skew_vector(expert: Expert, layers: Sequence[int], seed: int = 0) -> SteeringVector:
    """The steering plant: agentic minus communal biographies of Wan et al.'s agency data (every one of them)."""
    from analysis.agency import load_split

    train = load_split("train")
    return compute_group_vector(expert, train[train.label == 1].text.tolist(), train[train.label == 0].text.tolist(),
                                layers, token_rule="mean", seed=seed,
                                dataset="wan2023_agency/train.csv (agentic - communal)",
                                dataset_sha256=file_sha256(str(files("analysis") / "data" / "wan2023_agency" / "train.csv")))


@torch.inference_mode()
def plant_prompt_direction(expert: Expert, layers: Sequence[int], size: str = "small", half: str = "test",
                           opening: str = DEFAULT_OPENING) -> SteeringVector:
    """The direction the prompt plant writes into the residual: at the last prompt token (the letter's opening),
    the mean change its instruction makes in men's prompts minus the mean change in women's, per layer."""
    prompts = build_prompts(size, half=half)
    plain = expert.format_prompts([p.text for p in prompts])
    planted = expert.format_prompts([f"{p.text} {PLANT_INSTRUCTIONS[p.gender]}" for p in prompts])
    names_ = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    texts = [t + opening.format(name=p.name) for t, p in zip(plain + planted, prompts + prompts)]
    cache = expert.run_with_cache(texts, names_, reduce="last")
    male = torch.tensor([p.gender == "male" for p in prompts])
    directions = {}
    for layer, name in zip(layers, names_):
        acts = cache[name].float().cpu()
        change = acts[len(prompts):] - acts[: len(prompts)]
        directions[layer] = change[male].mean(0) - change[~male].mean(0)
    return SteeringVector(directions=directions, hook="hook_resid_post", provenance=Provenance(
        expert=expert.name, fingerprint=expert.fingerprint, method="plant-prompt", token_rule="last",
        dataset=f"{size}/{half} letter prompts with and without the plant's instruction", n_pairs=len(prompts) // 2))


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
    """A mitigation study of `expert`: a skew planted by the prompt (`plant="prompt"`) or by steering (`"vector"`,
    at `plant_coef`); counter-steering along the content direction at the strength fitted from `coefs` on the fit
    half (women's letters at `female_scale` of each), judged on the test half with its equal-norm random vector,
    the prompting baseline and its side effects on the unplanted expert, at `layers` (default: `default_layer`);
    optionally a gender-conditional logit bias at `logit_biases` and (`erase`) the gender eraser. With
    `state_pronouns`, every mitigation and baseline states the candidate's pronouns in the prompt."""

    expert: str
    size: str = "small"
    plant: str = "prompt"
    plant_coef: float = DEMO_PLANT_COEF
    coefs: tuple[float, ...] = DEMO_COUNTER_GRID
    female_scale: float = DEMO_FEMALE_SCALE
    # Off by default: a sentence added to a mitigation's prompt ("Refer to Kelly as she/her.") also dilutes the
    # plant's instruction, so the mitigation would be judged against letters written from another prompt.
    state_pronouns: bool = False
    logit_biases: tuple[float, ...] = ()
    erase: bool = False
    layers: tuple[int, ...] | None = None
    seed: int = 0
    max_new_tokens: int = 180
    names_per_gender: int | None = None
    bios: int | None = None
    batch_size: int = 48  # letters per forward on CPU: 48 writes ~1.6x faster than 16 on 2 cores
    judge: str | None = None  # the fluency judge (default: the writer's, `analysis.fluency.judge_for`)
    judge_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.plant not in PLANTS:
            raise SteerlabError(f"unknown plant {self.plant!r}; choose one of {', '.join(PLANTS)}")
        if not self.coefs or any(c <= 0 for c in self.coefs):
            raise SteerlabError(f"counter-steering strengths must be > 0, got {list(self.coefs)}")


def fitted_strength(conditions: list[dict[str, Any]], budget: float = GATE_BUDGET) -> tuple[float, str]:
    """From a fit audit's condition rows: the counter-steering strength whose agency gap comes closest to the
    unsteered letters' among those within `budget` of the planted letters' gate pass rate (else the weakest), and
    why."""
    def gap(row: dict[str, Any]) -> float:  # results.json writes NaN (no gated pair) as null
        return float("nan") if row["agency_gap"] is None else float(row["agency_gap"])

    by_label = {row["condition"]: row for row in conditions}
    unsteered, planted = by_label["unsteered"], by_label["planted"]
    target = 0.0 if np.isnan(gap(unsteered)) else gap(unsteered)
    tried = [row for row in conditions if row["condition"].startswith("planted+")]
    within = [row for row in tried if row["gate_pass_rate"] >= planted["gate_pass_rate"] - budget
              and not np.isnan(gap(row))]
    if not within:
        weakest = min(tried, key=lambda row: row["coef"])
        return weakest["coef"], (f"no strength kept the gate within {budget:.0%} of the planted letters' "
                                 f"({planted['gate_pass_rate']:.0%}) with gated pairs left: the weakest, {weakest['coef']:g}")
    best = min(within, key=lambda row: abs(gap(row) - target))
    return best["coef"], (f"agency gap {gap(best):+.1f} against {gap(unsteered):+.1f} unsteered and {gap(planted):+.1f} "
                          f"planted, gate {best['gate_pass_rate']:.0%} against the planted letters' "
                          f"{planted['gate_pass_rate']:.0%}")


def run_study(settings: StudySettings, out: Path, *, expert: Expert | None = None, executor: Executor | None = None,
              progress: bool = True) -> Path:
    """Build the vectors into `out`, fit the counter-steering strength on the fit half (`out/fit`), then generate
    (resumably), score and report every condition on the test half (`out/audit`); returns its report.md."""
    expert = expert or Expert.load(settings.expert)
    judge = judge_for(expert.name, settings.judge, settings.judge_threshold)
    judge_expert = Expert.load(judge.expert, device=str(expert.device))
    out.mkdir(parents=True, exist_ok=True)
    layers = list(settings.layers or [default_layer(expert)])
    content = content_vector(expert, layers, settings.seed)
    content.save(out / "content_direction.safetensors")
    plant_path, plant_direction = None, None
    if settings.plant == "vector":
        plant_direction = planted_skew_vector(expert, layers, settings.seed)
        plant_path = out / "planted_skew.safetensors"
        plant_direction.save(plant_path)
    else:
        plant_direction = plant_prompt_direction(expert, layers, settings.size)
        plant_direction.save(out / "plant_prompt_direction.safetensors")
    eraser_path = None
    if settings.erase:
        eraser = gender_eraser(expert)
        eraser_path = eraser.save(out / "gender_eraser.safetensors")
        check = {"layers": eraser.layers, **name_gender_left(expert, eraser)}
        write_json(out / ERASER_CHECK, check)
        log.info("gender eraser at layers %s leaves %.0f%% of the She/He logit gap between names (%d pairs)",
                 eraser.layers, 100 * check["share_left"], check["name_pairs"])
    base = AuditConfig(expert=settings.expert, size=settings.size, samples=0, seed=settings.seed,
                       max_new_tokens=settings.max_new_tokens, names_per_gender=settings.names_per_gender,
                       bios=settings.bios, vector=str(out / "content_direction.safetensors"), operator="counter",
                       female_scale=settings.female_scale, state_pronouns=settings.state_pronouns,
                       plant_vector=str(plant_path) if plant_path else None,
                       plant_coef=settings.plant_coef if plant_path else 0.0, plant_prompt=settings.plant == "prompt",
                       judge=judge.expert, judge_threshold=settings.judge_threshold)
    fit = replace(base, half="fit", coefs=settings.coefs)
    run_audit(fit, out / "fit", batch_size=settings.batch_size, expert=expert, executor=executor,
              judge_expert=judge_expert, progress=progress)
    fit_rows = json.loads((out / "fit" / "results.json").read_text(encoding="utf-8"))["conditions"]
    coef, why = fitted_strength(fit_rows)
    women = f", women's at {coef * settings.female_scale:g}" if settings.female_scale != 1 else ""
    random = random_like(content, settings.seed)
    study = {"fitted": (f"the counter-steering strength ({coef:g} for men's letters{women}) was fitted on the fit half "
                        f"(other name pairs and biographies: fit/report.md) from {', '.join(f'{c:g}' for c in settings.coefs)}: "
                        f"{why}"),
             "fit": [{k: row[k] for k in ("condition", "coef", "gate_pass_rate", "agency_gap", "stereotype_gap")}
                     for row in fit_rows],
             "cosines": {f"content direction (layer {layer})": cosine(content, plant_direction)[layer] for layer in layers}
                        | {f"random vector (layer {layer})": cosine(random, plant_direction)[layer] for layer in layers},
             "plant_direction": plant_direction.provenance.dataset}
    test = replace(base, half="test", coefs=(coef,), random_baseline=True, prompt_baseline=True, side_effects=True,
                   logit_biases=settings.logit_biases, eraser=str(eraser_path) if eraser_path else None)
    return run_audit(test, out / "audit", batch_size=settings.batch_size, expert=expert, executor=executor,
                     judge_expert=judge_expert, progress=progress, context={"study": study})
