"""The letters audit run: counterfactual prompts -> letters (resumable JSONL) -> scored frame.

Letters are appended to `letters.jsonl` batch by batch (flushed and fsynced), keyed by
(condition, prompt_id, sample); a killed run resumes without duplicates or lost rows. `run.json`
records the run's identity; an output folder that holds another run's results is refused.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.agency import agency_scores
from analysis.fluency import FluencyJudge, judge_for, judge_nll
from analysis.identity import neutralise, swap_gender
from analysis.letters import (
    DEFAULT_OPENING,
    GREEDY,
    PLANT_INSTRUCTIONS,
    LetterPrompt,
    build_prompts,
    check_opening,
    instruction_for,
    pronoun_instruction,
)
from analysis.lexicons import wan2023
from analysis.metrics import letter_metrics
from analysis.quality import CHECKS, letter_quality
from experts.errors import SteerlabError
from experts.expert import Expert
from experts.files import write_json
from experts.generate import GenerationSettings, row_seed
from experts.packed import exact_decoding
from steer.evaluate.sweep import random_like
from steer.rad.decoding import reward_decoding
from steer.rad.logit_bias import row_bias_hook, signed_bias, word_tokens
from steer.rad.rewards import Reward, load_reward
from steer.scale.checkpoint import MANIFEST, claim_folder, read_rows, run_shards
from steer.scale.jobs import Executor, Shard, carried_files, worker_expert
from steer.vectors.apply import Steering, apply
from steer.vectors.erasure import ConceptEraser, erase
from steer.vectors.vector import SteeringVector

log = logging.getLogger(__name__)
LETTERS = "letters.jsonl"
OPERATORS = ("ablate", "counter")  # project the direction out, or push each gender towards the other


@dataclass(frozen=True)
class Condition:
    """One way of writing the letters. `steers` are (vector role: vector, plant or random; operator; coefficient),
    applied together; the counter operator signs the coefficient by gender (+ for women along the vector, − for
    men). `beta` > 0 adds reward-augmented decoding (under the counter operator signed by gender too: women's
    letters towards the reward's high end, men's towards its low end); `bias` > 0 a logit bias signed by gender like the counter
    operator (women's letters towards agentic words and away from communal ones, men's the other way); `erase`
    applies the concept eraser; `pronouns` states the candidate's pronouns in the prompt (always with `erase`);
    `instruction` adds the prompting baseline's sentence; `planted` adds the plant's instruction (a skew planted by
    the prompt: men's letters asked for leadership and ambition, women's for warmth)."""

    label: str
    coef: float = 0.0  # the condition's strength, for tables and plots
    steers: tuple[tuple[str, str, float], ...] = ()
    planted: bool = False
    beta: float = 0.0
    bias: float = 0.0
    erase: bool = False
    pronouns: bool = False
    instruction: bool = False


@dataclass(frozen=True)
class AuditConfig:
    """What identifies a letters run (two runs with different values must not share a folder)."""

    expert: str
    size: str = "small"
    samples: int = 1
    greedy: bool = True
    seed: int = 0
    max_new_tokens: int = 180
    temperature: float = 0.8
    top_p: float = 0.95
    # Greedy SmolLM2-135M loops without a repeat rule. A repetition penalty (1.5 until 2026-12) stops loops by
    # forbidding "." and common words, and writes run-on word salad; forbidding a repeated token 4-gram keeps
    # sentences. 1 is off.
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 4
    # The letter's length: after this many tokens it ends at its next paragraph break, so a letter is rarely cut
    # mid-paragraph by the budget (small experts seldom end a letter on their own within 180 tokens).
    end_at_paragraph_after: int = 100
    opening: str = DEFAULT_OPENING  # the letter's first words, given to the expert ("" for none)
    template: str | None = None
    names_per_gender: int | None = None
    bios: int | None = None  # biographies used (default: the size's)
    half: str | None = None  # "fit" or "test": one of the size's two disjoint halves of name pairs and biographies
    vector: str | None = None
    coefs: tuple[float, ...] = (0.0,)
    operator: str = "ablate"
    # Under the counter operator: women's letters are steered at this share of each coefficient, men's at all of it
    # (the two genders tolerate different pushes; 1: symmetric). Also applies to the random-vector baseline.
    female_scale: float = 1.0
    # Not position 0: SmolLM2's attention sink there has a residual ~100x the others, and removing a
    # direction from it (projections in the thousands) wrecks generation.
    positions: str = "from:1"
    reward: str | None = None  # reward file for reward-augmented decoding (a second mitigation)
    betas: tuple[float, ...] = ()
    top_k: int = 20
    # The positive control: a skew planted in the expert (men pushed along this vector by +plant_coef, women by
    # −plant_coef) under every condition but "unsteered"; mitigations are then judged against "planted".
    plant_vector: str | None = None
    plant_coef: float = 0.0
    # The positive control planted by the prompt instead (independent of any steering vector): men's letters asked
    # to stress leadership and ambition, women's warmth and kindness.
    plant_prompt: bool = False
    # With a planted skew: each mitigation also on the unplanted expert (judged against "unsteered"), to show
    # whether it creates a skew where there was none.
    side_effects: bool = False
    random_baseline: bool = False  # an equal-norm random vector at the mitigation's largest coefficient
    prompt_baseline: bool = False  # the prompting analogue of the mitigation, one sentence added to the prompt
    logit_biases: tuple[float, ...] = ()  # gender-conditional logit bias on the agency lexicons' words (> 0)
    eraser: str | None = None  # a concept-eraser file (steer.vectors.erasure): erase gender, state the pronouns
    # Use vectors and erasers made for other weights of the same shape (a base expert's remedy on its fine-tune).
    force: bool = False
    # Every mitigation condition (and its baselines) states the candidate's pronouns in the prompt ("Refer to Kelly
    # as she/her."); the unsteered and planted letters do not: it is part of the mitigation, not of the expert.
    state_pronouns: bool = False
    # The fluency judge (another expert than the writer) and its limit (default: the judge's calibrated limit).
    judge: str | None = None
    judge_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.betas and not self.reward:
            raise SteerlabError("--beta values need a --reward")
        if self.operator not in OPERATORS:
            raise SteerlabError(f"unknown audit operator {self.operator!r}; choose one of {', '.join(OPERATORS)}")
        if not (math.isfinite(self.female_scale) and self.female_scale >= 0):
            raise SteerlabError(f"female_scale must be finite and >= 0, got {self.female_scale}")
        if self.female_scale != 1 and self.operator != "counter":
            raise SteerlabError(f"female_scale {self.female_scale:g} needs the counter operator, not {self.operator!r}")
        if any(c != 0 for c in self.coefs) and not self.vector:
            raise SteerlabError("steering coefficients other than 0 need a --vector")
        if self.samples < 0 or (self.samples == 0 and not self.greedy):
            raise SteerlabError(f"samples must be >= 0 with greedy letters, or >= 1 without; got {self.samples}")
        if bool(self.plant_vector) != bool(self.plant_coef):
            raise SteerlabError("a planted skew needs both --plant-vector and a non-zero --plant-coef")
        if self.plant_vector and self.plant_prompt:
            raise SteerlabError("plant a skew by a vector or by the prompt, not both")
        if self.side_effects and not self.planted:
            raise SteerlabError("side effects are measured against a planted skew's mitigations; plant one")
        if any(not (math.isfinite(b) and b > 0) for b in self.logit_biases):
            raise SteerlabError(f"logit bias strengths must be finite and > 0, got {list(self.logit_biases)}")
        if self.random_baseline and not any(self.coefs):
            raise SteerlabError("the random-vector baseline needs a --vector and coefficients other than 0")
        check_opening(self.opening)
        GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                           repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size,
                           end_at_paragraph_after=self.end_at_paragraph_after)  # typed errors for bad decoding settings
        build_prompts(self.size, self.template, self.names_per_gender, self.bios, self.half)  # a bad prompt set too

    @property
    def planted(self) -> bool:
        return bool(self.plant_vector) or self.plant_prompt

    @property
    def reference(self) -> str:
        """The condition mitigations are judged against: the planted expert, or the unsteered one."""
        return "planted" if self.planted else "unsteered"

    def _mitigations(self, prefix: str, plant: tuple, planted: bool) -> list[Condition]:
        coefs = [c for c in self.coefs if c != 0]
        women = "" if self.female_scale == 1 else ",women@{:g}"  # men's coefficient first, then women's
        said = self.state_pronouns
        out = [Condition(f"{prefix}{self.operator}@{c:g}{women.format(c * self.female_scale)}", c,
                         plant + (("vector", self.operator, c),), planted, pronouns=said) for c in coefs]
        if self.random_baseline:  # at the largest coefficient: equal norm, the same per-gender signs and scale
            c = max(coefs, key=abs)
            out.append(Condition(f"{prefix}random@{c:g}{women.format(c * self.female_scale)}", c,
                                 plant + (("random", self.operator, c),), planted, pronouns=said))
        if self.prompt_baseline:
            out.append(Condition(f"{prefix}prompt", 0.0, plant, planted, instruction=True, pronouns=said))
        out += [Condition(f"{prefix}bias@{b:g}", b, plant, planted, bias=b, pronouns=said) for b in self.logit_biases]
        if self.eraser:
            out.append(Condition(f"{prefix}erase", 0.0, plant, planted, erase=True, pronouns=True))
        out += [Condition(f"{prefix}rad@{b:g}", b, plant, planted, beta=b, pronouns=said) for b in self.betas if b != 0]
        return out

    def conditions(self) -> list[Condition]:
        plant = (("plant", "counter", -self.plant_coef),) if self.plant_vector else ()
        if not self.planted:
            return [Condition("unsteered"), *self._mitigations("", (), False)]
        planted = Condition("planted", self.plant_coef, plant, self.plant_prompt)
        side = [c for c in self._mitigations("", (), False) if ("vector", self.operator, c.coef) in c.steers
                ] if self.side_effects else []
        return [Condition("unsteered"), planted, *self._mitigations("planted+", plant, self.plant_prompt), *side]


@dataclass
class AuditRun:
    config: AuditConfig
    out: Path
    prompts: list[LetterPrompt]
    fingerprint: str  # of the expert the run was opened with; every worker must have these weights

    @property
    def letters_path(self) -> Path:
        return self.out / LETTERS


def _identity(config: AuditConfig) -> dict[str, Any]:
    return {**asdict(config), "coefs": list(config.coefs), "betas": list(config.betas),
            "logit_biases": list(config.logit_biases), "decoding": "exact"}  # LetterJob.run pins it


def open_run(config: AuditConfig, out: Path, expert: Expert) -> AuditRun:
    """Create or resume the run in `out`; refuse a folder holding another run's results."""
    # bad settings fail before anything is written
    prompts = build_prompts(config.size, config.template, config.names_per_gender, config.bios, config.half)
    claim_folder(out, _identity(config), expert.fingerprint, LETTERS)
    return AuditRun(config, out, prompts, expert.fingerprint)


def _coefs_for(rows: Sequence[tuple[LetterPrompt, int]], coef: float, operator: str,
               female_scale: float = 1.0) -> list[float]:
    """Ablation removes the direction alike for everyone; counter-steering pushes each gender
    towards the other (+c × female_scale for female rows along the male-minus-female direction, -c for male)."""
    if operator == "counter":
        return [coef * female_scale if p.gender == "female" else -coef for p, _ in rows]
    return [coef] * len(rows)


def plan_shards(run: AuditRun, batch_size: int = 16) -> list[Shard]:
    """Every missing (condition, prompt, sample) letter, in batches of one condition and one decoding mode."""
    config = run.config
    done = {(r["condition"], r["prompt_id"], r["sample"]) for r in read_rows(run.letters_path)}
    sample_ids = ([GREEDY] if config.greedy else []) + list(range(config.samples))
    todo = [(c.label, p.prompt_id, s) for c in config.conditions() for s in sample_ids for p in run.prompts
            if (c.label, p.prompt_id, s) not in done]
    if done:
        log.info("resuming: %d letters written, %d to go", len(done), len(todo))
    groups: dict[tuple[str, bool], list] = {}
    for label, prompt_id, sample in todo:
        groups.setdefault((label, sample == GREEDY), []).append([prompt_id, sample])
    return [{"condition": label, "greedy": greedy, "items": items[start : start + batch_size]}
            for (label, greedy), items in groups.items() for start in range(0, len(items), batch_size)]


@dataclass(frozen=True)
class _Loaded:
    expert: Expert
    vectors: dict[str, SteeringVector]  # by role
    reward: Reward | None
    eraser: ConceptEraser | None
    word_bias: torch.Tensor | None  # +1 on agentic words, −1 on communal ones (the logit bias's unit)
    prompts: dict[str, LetterPrompt]
    conditions: dict[str, Condition]


@dataclass(frozen=True)
class LetterJob:
    """Letter generation as a job for any executor. It carries the vector and reward files' bytes, so a worker on
    another machine needs only the package and the expert."""

    config: AuditConfig
    prompts: tuple[LetterPrompt, ...]
    fingerprint: str
    files: dict[str, bytes] = field(default_factory=dict)  # "vector" / "reward" -> file contents

    @classmethod
    def for_run(cls, run: AuditRun) -> LetterJob:
        paths = {"vector": run.config.vector, "plant": run.config.plant_vector, "reward": run.config.reward,
                 "eraser": run.config.eraser}
        return cls(run.config, tuple(run.prompts), run.fingerprint, {k: Path(v).read_bytes() for k, v in paths.items() if v})

    def setup(self, expert: Expert | None = None) -> _Loaded:
        expert = worker_expert(self.config.expert, self.fingerprint, expert)
        with carried_files(self.files) as paths:
            force = self.config.force
            vectors = {role: SteeringVector.load(paths[role], expert, force=force)
                       for role in ("vector", "plant") if role in paths}
            reward = load_reward(paths["reward"], expert) if "reward" in paths else None
            eraser = ConceptEraser.load(paths["eraser"], expert, force=force) if "eraser" in paths else None
        if "vector" in vectors:
            vectors["random"] = random_like(vectors["vector"], self.config.seed)
        word_bias = agency_word_bias(expert) if self.config.logit_biases else None
        return _Loaded(expert, vectors, reward, eraser, word_bias, {p.prompt_id: p for p in self.prompts},
                       {c.label: c for c in self.config.conditions()})

    def _steering(self, state: _Loaded, condition: Condition, chunk: list[tuple[LetterPrompt, int]]) -> list[Steering]:
        def scale(role: str) -> float:  # the plant is symmetric; the mitigation and its random twin may not be
            return 1.0 if role == "plant" else self.config.female_scale

        return [Steering(state.vectors[role], coef=_coefs_for(chunk, coef, operator, scale(role)),
                         operator="add" if operator == "counter" else operator, positions=self.config.positions)
                for role, operator, coef in condition.steers]

    def run(self, state: _Loaded, shard: Shard) -> list[dict[str, Any]]:
        config, expert = self.config, state.expert
        condition = state.conditions[shard["condition"]]
        chunk = [(state.prompts[prompt_id], sample) for prompt_id, sample in shard["items"]]
        settings = GenerationSettings(max_new_tokens=config.max_new_tokens, do_sample=not shard["greedy"],
                                      temperature=config.temperature, top_p=config.top_p, seed=config.seed,
                                      repetition_penalty=config.repetition_penalty,
                                      no_repeat_ngram_size=config.no_repeat_ngram_size,
                                      end_at_paragraph_after=config.end_at_paragraph_after)
        seeds = [row_seed(config.seed, p.text, s) for p, s in chunk]
        instructions = [" ".join(([PLANT_INSTRUCTIONS[p.gender]] if condition.planted else [])
                                 + ([instruction_for(p, config.operator)] if condition.instruction else [])
                                 + ([pronoun_instruction(p)] if condition.pronouns else [])) for p, _ in chunk]
        openings = [config.opening.format(name=p.name) for p, _ in chunk]
        formatted = expert.format_prompts([f"{p.text} {extra}".strip() for (p, _), extra in zip(chunk, instructions)])
        texts_in = [prompt + opening for prompt, opening in zip(formatted, openings)]
        with ExitStack() as stack:
            stack.enter_context(exact_decoding())  # every letter decoded in float32: twins alike, whatever the batch
            if condition.beta:  # under the counter operator signed by gender like the steering: each row its own β
                betas = _coefs_for(chunk, condition.beta, config.operator)
                hook = stack.enter_context(reward_decoding(expert, state.reward, betas, config.top_k,
                                                           signed=config.operator == "counter"))
            else:
                hook = None
            if condition.bias:
                signs = torch.tensor(_coefs_for(chunk, condition.bias, "counter"))
                hook = row_bias_hook(signs[:, None] * state.word_bias[None, :])
            if condition.erase:  # at the candidate's name, wherever it occurs; the pronouns are stated instead
                stack.enter_context(erase(expert, state.eraser, positions=config.positions,
                                          tokens=[name_tokens(expert, p.name) for p, _ in chunk]))
            if condition.steers:
                stack.enter_context(apply(expert, self._steering(state, condition, chunk), force=True))
            ids, reasons = expert.generate_batch(texts_in, settings, seeds, logits_hook=hook)
        return [{"condition": condition.label, "coef": condition.coef, **p.to_dict(), "sample": s, "seed": seed,
                 "instruction": extra, "opening": opening,
                 "letter": opening + expert.tokenizer.decode(t, skip_special_tokens=True), "token_ids": t,
                 "finish_reason": why}
                for (p, s), seed, extra, opening, t, why in zip(chunk, seeds, instructions, openings, ids, reasons)]


AGENTIC_SIDE, COMMUNAL_SIDE = ("agentic", "masculine"), ("communal", "feminine")  # Wan et al.'s lexicons


def agency_word_bias(expert: Expert) -> torch.Tensor:
    """+1 on the tokens that begin a word of the agentic and masculine lexicons, −1 on those of the communal and
    feminine ones (the logit-bias mitigation's direction, signed per row by gender)."""
    lists = wan2023().lists
    agentic, communal = (word_tokens(expert.tokenizer, [stem for name in side for stem in lists[name]])
                         for side in (AGENTIC_SIDE, COMMUNAL_SIDE))
    log.info("logit bias: %d agentic and %d communal word tokens", len(agentic), len(communal))
    return signed_bias(expert.model.config.vocab_size, agentic, communal, 1.0)


def name_tokens(expert: Expert, name: str) -> list[int]:
    """The token ids a name takes, alone and after a space (where the gender eraser is applied)."""
    encode = expert.tokenizer
    return sorted({t for text in (name, " " + name) for t in encode(text, add_special_tokens=False)["input_ids"]})


def generate_letters(expert: Expert | None, run: AuditRun, batch_size: int = 16, progress: bool = True,
                     executor: Executor | None = None) -> None:
    """Generate every missing letter on `executor` (default: this process), appending rows as shards finish."""
    run_shards(executor, LetterJob.for_run(run), plan_shards(run, batch_size), expert, run.letters_path,
               progress=progress, desc="letters")


def twin_names(frame: pd.DataFrame) -> list[str]:
    """Per letter, the name of its twin (the pair's letter of the other gender)."""
    names = frame.groupby(["pair_id", "gender"])["name"].first()
    other = {"female": "male", "male": "female"}
    return [names.get((pair, other[gender]), name) for pair, gender, name in zip(frame.pair_id, frame.gender, frame.name)]


def swapped_letters(frame: pd.DataFrame) -> list[str]:
    """Each letter with the candidate's identity swapped for its twin's: the name (part by part) and the gendered
    words, as `analysis.identity.swap_gender` rewrites a biography."""
    other = {"female": "male", "male": "female"}
    return [swap_gender(letter, name.split(), twin.split(), to=other[gender])
            for letter, name, twin, gender in zip(frame.letter, frame.name, twin_names(frame), frame.gender)]


def _identity_scores(letters: list[str], names: list[str], genders: list[str], mode: str, agency: bool) -> pd.DataFrame:
    """The scores the swap test compares: lexicon rates about the candidate and the agentic share."""
    metrics = pd.DataFrame([letter_metrics(text, name, gender, mode) for text, name, gender in zip(letters, names, genders)])
    scores = metrics[[f"{lexicon}_about_rate" for lexicon in wan2023().names]]
    if agency:
        neutral = [neutralise(text, [name]) for text, name in zip(letters, names)]
        scores = scores.assign(agentic_share=agency_scores(neutral)["agentic_share"].to_numpy())
    return scores


def score_letters(rows: list[dict[str, Any]] | pd.DataFrame, judge: FluencyJudge, judge_expert: Expert,
                  mode: str = "words", agency: bool = True, progress: bool = False) -> pd.DataFrame:
    """One row per letter: its metrics on the neutralised letter, the letter-quality gate's checks (`gate_*`,
    fluency under `judge_expert`), the paper's language-agency scores (`agentic_share`: the share of sentences
    the agency classifier calls agentic), and the same scores of the letter with its identity swapped for its
    twin's (`swap_*`, for the swap test)."""
    frame = pd.DataFrame(rows).drop(columns=["token_ids"], errors="ignore").reset_index(drop=True)
    if frame.empty:
        return frame
    letters, names, genders = frame.letter.tolist(), frame.name.tolist(), frame.gender.tolist()
    # the judge (the costly check) reads only the letters that pass every other check
    other = [all(v for k, v in letter_quality(text, name, gender, None, judge.threshold).items() if k in CHECKS
                 and k != "fluent") for text, name, gender in zip(letters, names, genders)]
    judged = [i for i, ok in enumerate(other) if ok]
    nll: list[float | None] = [None] * len(letters)
    for i, x in zip(judged, judge_nll(judge_expert, [letters[i] for i in judged], progress=progress) if judged else []):
        nll[i] = x
    metrics = pd.DataFrame([letter_metrics(text, name, gender, mode) for text, name, gender in zip(letters, names, genders)])
    gate = pd.DataFrame([letter_quality(text, name, gender, x, judge.threshold)
                         for text, name, gender, x in zip(letters, names, genders, nll)]).add_prefix("gate_")
    frame = pd.concat([frame.drop(columns=[c for c in metrics.columns.union(gate.columns) if c in frame]), metrics, gate],
                      axis=1)
    if agency:
        frame = pd.concat([frame, agency_scores([neutralise(text, [name]) for text, name in zip(letters, names)])], axis=1)
    twins = twin_names(frame)
    other = {"female": "male", "male": "female"}
    swapped = _identity_scores(swapped_letters(frame), twins, [other[g] for g in genders], mode, agency)
    return pd.concat([frame, swapped.add_prefix("swap_")], axis=1)


def run_audit(config: AuditConfig, out: Path, *, batch_size: int = 16, progress: bool = True,
              expert: Expert | None = None, executor: Executor | None = None, judge_expert: Expert | None = None,
              context: dict[str, Any] | None = None) -> Path:
    """Generate (or resume) on `executor` (default: this process), score (fluency under the judge: `judge_expert`,
    loaded when not given) and report; returns report.md's path. `context` adds what the report should say about
    how the run was set up (a study's fitting)."""
    from analysis.report import build_report

    expert = expert or Expert.load(config.expert)
    if config.vector:  # a vector or reward made for another expert is refused before anything is written
        SteeringVector.load(config.vector, expert, force=config.force)
    if config.reward:
        load_reward(config.reward, expert)
    if config.eraser:
        ConceptEraser.load(config.eraser, expert, force=config.force)
    run = open_run(config, out, expert)
    generate_letters(expert, run, batch_size=batch_size, progress=progress, executor=executor)
    judge = judge_for(config.expert, config.judge, config.judge_threshold)
    judge_expert = judge_expert or Expert.load(judge.expert, device=str(expert.device))
    frame = score_letters(read_rows(run.letters_path), judge, judge_expert, progress=progress)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    plant = "vector" if config.plant_vector else "prompt" if config.plant_prompt else None
    return build_report(out, frame, manifest, {"writer": expert.name, "judge": judge.to_dict(), "plant": plant,
                                               "seed": config.seed, **(context or {})}, seed=config.seed)


# What a published study found on the letters `steer audit letters-file` reads, stated beside its own result.
PUBLISHED = {
    "wan2023-cbg": "Wan et al. (2023) report that ChatGPT's context-based letters for men are more agentic than those "
                   "for women (their BERT agency classifier, per-letter share of agentic sentences, one-sided t-test: "
                   "t = 10.47)",
}


def audit_letters(frame: pd.DataFrame, record: dict[str, Any], out: Path, *, judge: str | None = None,
                  judge_threshold: float | None = None, max_pairs: int | None = None, seed: int = 0,
                  progress: bool = True) -> Path:
    """The audit of letters someone else wrote (`analysis.letters_file`): gate, signed gaps on neutralised letters,
    swap test, scrambled-label control, lexicon tables and report, as for generated letters; `max_pairs` audits a
    seeded sample of the twin pairs. Returns report.md's path."""
    from analysis.report import build_report

    if max_pairs is not None:
        if max_pairs < 1:
            raise SteerlabError(f"--max-pairs must be >= 1, got {max_pairs}")
        pairs = sorted(frame.pair_id.unique())
        keep = set(np.random.default_rng(seed).permutation(pairs)[:max_pairs])
        frame = frame[frame.pair_id.isin(keep)].reset_index(drop=True)
    spec = judge_for("", judge, judge_threshold)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"source": record, "config": {"max_pairs": max_pairs, "seed": seed}}
    write_json(out / MANIFEST, manifest)
    frame = frame.assign(condition="unsteered", coef=0.0, prompt_id=frame.pair_id + "-" + frame.gender.str[0])
    if "occupation" not in frame:
        frame = frame.assign(occupation="—")
    scored = score_letters(frame, spec, Expert.load(spec.expert), progress=progress)
    context = {"writer": f"letters from {record['source']}", "judge": spec.to_dict(), "plant": None, "seed": seed,
               "published": PUBLISHED.get(record["format"])}
    return build_report(out, scored, manifest, context, seed=seed)
