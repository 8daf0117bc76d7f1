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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.letters import LetterPrompt, build_prompts
from analysis.metrics import letter_metrics
from analysis.quality import letter_quality
from experts.errors import SteerlabError
from experts.expert import Expert
from experts.generate import GenerationSettings, row_seed
from experts.likelihood import continuation_nll
from steer.rad.decoding import reward_decoding
from steer.rad.rewards import Reward, load_reward
from steer.scale.checkpoint import MANIFEST, claim_folder, read_rows, run_shards
from steer.scale.jobs import Executor, Shard, carried_files, worker_expert
from steer.vectors.apply import Steering, apply
from steer.vectors.vector import SteeringVector

log = logging.getLogger(__name__)
LETTERS = "letters.jsonl"
GREEDY = -1  # sample index of the greedy letter
OPERATORS = ("ablate", "counter")  # project the direction out, or push each gender towards the other


@dataclass(frozen=True)
class AuditConfig:
    """What identifies a letters run (two runs with different values must not share a folder)."""

    expert: str
    size: str = "small"
    samples: int = 1
    greedy: bool = True
    seed: int = 0
    max_new_tokens: int = 160
    temperature: float = 0.8
    top_p: float = 0.95
    template: str | None = None
    names_per_gender: int | None = None
    vector: str | None = None
    coefs: tuple[float, ...] = (0.0,)
    operator: str = "ablate"
    # Not position 0: SmolLM2's attention sink there has a residual ~100x the others, and removing a
    # direction from it (projections in the thousands) wrecks generation.
    positions: str = "from:1"
    reward: str | None = None  # reward file for reward-augmented decoding (a second mitigation)
    betas: tuple[float, ...] = ()
    top_k: int = 20

    def __post_init__(self) -> None:
        if self.betas and not self.reward:
            raise SteerlabError("--beta values need a --reward")
        if self.operator not in OPERATORS:
            raise SteerlabError(f"unknown audit operator {self.operator!r}; choose one of {', '.join(OPERATORS)}")
        if any(c != 0 for c in self.coefs) and not self.vector:
            raise SteerlabError("steering coefficients other than 0 need a --vector")
        if self.samples < 0 or (self.samples == 0 and not self.greedy):
            raise SteerlabError(f"samples must be >= 0 with greedy letters, or >= 1 without; got {self.samples}")

    def conditions(self) -> list[tuple[str, float]]:
        steered = [(f"{self.operator}@{c:g}", c) for c in self.coefs if c != 0]
        return [("unsteered", 0.0)] + steered + [(f"rad@{b:g}", b) for b in self.betas if b != 0]


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
    return {**asdict(config), "coefs": list(config.coefs), "betas": list(config.betas)}


def open_run(config: AuditConfig, out: Path, expert: Expert) -> AuditRun:
    """Create or resume the run in `out`; refuse a folder holding another run's results."""
    prompts = build_prompts(config.size, config.template, config.names_per_gender)  # bad settings fail before any write
    claim_folder(out, _identity(config), expert.fingerprint, LETTERS)
    return AuditRun(config, out, prompts, expert.fingerprint)


def _coefs_for(rows: Sequence[tuple[LetterPrompt, int]], coef: float, operator: str) -> list[float]:
    """Ablation removes the direction alike for everyone; counter-steering pushes each gender
    towards the other (+c for female rows along the male-minus-female direction, -c for male)."""
    if operator == "counter":
        return [coef if p.gender == "female" else -coef for p, _ in rows]
    return [coef] * len(rows)


def plan_shards(run: AuditRun, batch_size: int = 16) -> list[Shard]:
    """Every missing (condition, prompt, sample) letter, in batches of one condition and one decoding mode."""
    config = run.config
    done = {(r["condition"], r["prompt_id"], r["sample"]) for r in read_rows(run.letters_path)}
    sample_ids = ([GREEDY] if config.greedy else []) + list(range(config.samples))
    todo = [(label, coef, p.prompt_id, s) for label, coef in config.conditions() for s in sample_ids for p in run.prompts
            if (label, p.prompt_id, s) not in done]
    if done:
        log.info("resuming: %d letters written, %d to go", len(done), len(todo))
    groups: dict[tuple[str, float, bool], list] = {}
    for label, coef, prompt_id, sample in todo:
        groups.setdefault((label, coef, sample == GREEDY), []).append([prompt_id, sample])
    return [{"condition": label, "coef": coef, "greedy": greedy, "items": items[start : start + batch_size]}
            for (label, coef, greedy), items in groups.items() for start in range(0, len(items), batch_size)]


@dataclass(frozen=True)
class _Loaded:
    expert: Expert
    vector: SteeringVector | None
    reward: Reward | None
    prompts: dict[str, LetterPrompt]
    formatted: dict[str, str]


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
        paths = {"vector": run.config.vector, "reward": run.config.reward}
        return cls(run.config, tuple(run.prompts), run.fingerprint, {k: Path(v).read_bytes() for k, v in paths.items() if v})

    def setup(self, expert: Expert | None = None) -> _Loaded:
        expert = worker_expert(self.config.expert, self.fingerprint, expert)
        with carried_files(self.files) as paths:
            vector = SteeringVector.load(paths["vector"], expert) if "vector" in paths else None
            reward = load_reward(paths["reward"], expert) if "reward" in paths else None
        formatted = expert.format_prompts([p.text for p in self.prompts])
        return _Loaded(expert, vector, reward, {p.prompt_id: p for p in self.prompts},
                       dict(zip([p.prompt_id for p in self.prompts], formatted)))

    def run(self, state: _Loaded, shard: Shard) -> list[dict[str, Any]]:
        config, expert = self.config, state.expert
        label, coef = shard["condition"], shard["coef"]
        chunk = [(state.prompts[prompt_id], sample) for prompt_id, sample in shard["items"]]
        settings = GenerationSettings(max_new_tokens=config.max_new_tokens, do_sample=not shard["greedy"],
                                    temperature=config.temperature, top_p=config.top_p, seed=config.seed)
        seeds = [row_seed(config.seed, p.text, s) for p, s in chunk]
        texts_in = [state.formatted[p.prompt_id] for p, _ in chunk]
        if label.startswith("rad@"):
            with reward_decoding(expert, state.reward, coef, config.top_k) as hook:
                ids, reasons = expert.generate_batch(texts_in, settings, seeds, logits_hook=hook)
        elif coef and state.vector is not None:
            operator = "add" if config.operator == "counter" else config.operator
            steering = Steering(state.vector, coef=_coefs_for(chunk, coef, config.operator), operator=operator,
                                positions=config.positions)
            with apply(expert, steering, force=True):
                ids, reasons = expert.generate_batch(texts_in, settings, seeds)
        else:
            ids, reasons = expert.generate_batch(texts_in, settings, seeds)
        return [{"condition": label, "coef": coef, **p.to_dict(), "sample": s, "seed": seed,
                 "letter": expert.tokenizer.decode(t, skip_special_tokens=True), "token_ids": t, "finish_reason": why}
                for (p, s), seed, t, why in zip(chunk, seeds, ids, reasons)]


def generate_letters(expert: Expert | None, run: AuditRun, batch_size: int = 16, progress: bool = True,
                     executor: Executor | None = None) -> None:
    """Generate every missing letter on `executor` (default: this process), appending rows as shards finish."""
    run_shards(executor, LetterJob.for_run(run), plan_shards(run, batch_size), expert, run.letters_path,
               progress=progress, desc="letters")


def score_letters(expert: Expert | None, rows: list[dict[str, Any]], mode: str = "words") -> pd.DataFrame:
    """One row per letter with its metrics, the letter-quality gate's checks (`gate_*`) and (given an
    expert) perplexity under the unsteered expert."""
    frame = pd.DataFrame([{**{k: v for k, v in r.items() if k != "token_ids"},
                           **letter_metrics(r["letter"], r["name"], r["gender"], mode),
                           **{f"gate_{k}": v for k, v in letter_quality(r["letter"], r["name"], r["gender"],
                                                                        r["finish_reason"]).items()}} for r in rows])
    if expert is not None and len(frame):
        nll = continuation_nll(expert, expert.format_prompts([r["text"] for r in rows]), [r["token_ids"] for r in rows])
        frame["perplexity"] = [math.exp(x) for x in nll]  # nan stays nan
    return frame


def run_audit(config: AuditConfig, out: Path, *, batch_size: int = 16, progress: bool = True,
              expert: Expert | None = None, executor: Executor | None = None) -> Path:
    """Generate (or resume) on `executor` (default: this process), score and report; returns report.md's path."""
    from analysis.report import build_report

    expert = expert or Expert.load(config.expert)
    if config.vector:  # a vector or reward made for another expert is refused before anything is written
        SteeringVector.load(config.vector, expert)
    if config.reward:
        load_reward(config.reward, expert)
    run = open_run(config, out, expert)
    generate_letters(expert, run, batch_size=batch_size, progress=progress, executor=executor)
    frame = score_letters(expert, read_rows(run.letters_path))
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    return build_report(out, frame, manifest, seed=config.seed)
