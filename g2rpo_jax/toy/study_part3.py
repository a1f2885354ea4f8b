"""Part 3 of the toy study (issue 32): does guided RL gain on SFT where imitation is weaker?

Every run is scored as in parts 1–2 and by pass@k (k = 1, 4, 8; PASS_AT_N samples per held-out
problem at T = 1, the unbiased estimator). Three settings beside the clean baselines:

- `sft_plateau`: SFT on the clean traces until held-out sampled accuracy stops rising
  (`PlateauRule`), once per seed, saved under OUT/plateau/seed<k>/; then `steps` more steps
  of SFT, plain GRPO, fixed-full guidance or G²RPO-A from that model.
- `hard`: every trace written the long way (traces.hard_trace, ≈3× the tokens, the same
  answer); the completion budget and ℓ_max come from the longest hard trace in tokens
  (`hard_lengths`). Plain GRPO reads no trace, so its hard run would be `grpo` itself (the
  completion budget aside): the comparisons reuse `grpo`.
- `guidance.when = unguided_failed` beside G²RPO-A on clean, noisy and hard traces.
"""

import copy
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from g2rpo_jax import evaluation
from g2rpo_jax.models import from_pretrained
from g2rpo_jax.toy import data, demo, study, task, traces
from g2rpo_jax.toy import evaluation as toy_evaluation
from g2rpo_jax.toy.data import Encoder
from g2rpo_jax.toy.study import Budget, HeldOut, Traces, Variant

# Part 3's RL runs sample with the group sampler without its compaction, in one decode
# phase: at the toy's shapes compiling is much of a run, and these programs compile in about
# half the time at the same speed a step (2 cores: a clean G²RPO-A run's first step 34 s vs
# 61 s, then 0.8 s a step either way; on hard traces 41 s vs 81 s, then 2.7 vs 2.4 s).
SAMPLING = {"compact": False, "decode_phases": 1}
# Part 3 reads its runs at the end (greedy, sampled, pass@k): two checks during a run.
EVAL_EVERY = 25
PASS_AT_N = 8  # samples per held-out problem for pass@k
# pass@k reads the first 250 held-out problems: 2,000 samples a run keeps part 3 in its
# 60 minutes (pass@8's standard error stays ≤ 0.032 per run).
PASS_AT_ROWS = 250
PASS_AT_K = (1, 4, 8)


@dataclasses.dataclass(frozen=True)
class PlateauRule:
    """When SFT has stopped raising held-out sampled accuracy: a check every `every` steps
    (T = 1 on the first Budget.eval_rows_during held-out problems, the same sampling keys
    each time, so checks differ by the model only); a check improves when it beats the best
    improving check before it (step 0's the first) by more than `threshold`; the run stops
    after `patience` checks in a row that do not, or at `max_steps`. The learning rate is
    constant after warmup, so where it stops is the data's plateau, not the schedule's."""

    every: int = 10
    threshold: float = 0.01
    patience: int = 3
    max_steps: int = 300

    def __post_init__(self) -> None:
        if self.every < 1 or self.patience < 1 or self.max_steps % self.every:
            raise ValueError(f"{self}: every, patience ≥ 1 and max_steps a multiple of every")

    def stops(self, accuracies: Sequence[float]) -> bool:
        """Whether the run stops after the last of these checks, the first at step 0."""
        best, waiting = accuracies[0], 0
        for accuracy in accuracies[1:]:
            if accuracy > best + self.threshold:
                best, waiting = accuracy, 0
            else:
                waiting += 1
        return waiting >= self.patience


_ON_FAILURE = {"guidance.when": "unguided_failed"}
_ON_FAILURE_LABEL = "guided only where the unguided candidates failed"
_HARD = "hard traces (≈3× the tokens)"
_NOISY = f"{study.NOISY_FRACTION:.0%} traces wrong"
PLATEAU = Variant(
    "sft_plateau",
    "SFT until held-out sampled accuracy plateaus (the start of the four below)",
    {"final_lr_fraction": 1.0},
    sft_share=1.0,
)
PART3 = (
    *(study.BY_NAME[n] for n in ("sft", "grpo", "fixed_full", "g2rpo_a")),
    Variant("g2rpo_a_on_failure", f"G²RPO-A, {_ON_FAILURE_LABEL}", _ON_FAILURE),
    study.BY_NAME["g2rpo_a_noisy"],
    Variant(
        "g2rpo_a_noisy_on_failure",
        f"G²RPO-A, {_ON_FAILURE_LABEL}, {_NOISY}",
        _ON_FAILURE,
        Traces.NOISY,
    ),
    Variant("sft_hard", f"SFT, {_HARD}", {}, Traces.HARD, 1.0),
    Variant(
        "fixed_full_hard", f"α = 0.5, fixed ℓ = the whole trace, {_HARD}", study.FIXED, Traces.HARD
    ),
    Variant("g2rpo_a_hard", f"G²RPO-A, {_HARD}", {}, Traces.HARD),
    Variant(
        "g2rpo_a_hard_on_failure",
        f"G²RPO-A, {_ON_FAILURE_LABEL}, {_HARD}",
        _ON_FAILURE,
        Traces.HARD,
    ),
    PLATEAU,
    Variant("sft_plateau_then_sft", "SFT plateau, then SFT", {}, sft_share=1.0, from_plateau=True),
    Variant(
        "sft_plateau_then_grpo",
        "SFT plateau, then plain GRPO",
        {"guidance.ratio": 0.0},
        from_plateau=True,
    ),
    Variant(
        "sft_plateau_then_fixed_full",
        f"SFT plateau, then α = 0.5, fixed ℓ = {study.FULL}",
        study.FIXED,
        from_plateau=True,
    ),
    Variant("sft_plateau_then_g2rpo_a", "SFT plateau, then G²RPO-A", {}, from_plateau=True),
)
BY_NAME = {v.name: v for v in PART3}


@dataclasses.dataclass(frozen=True)
class TraceLengths:
    """A trace form's token budgets: `full`, its longest training trace (ℓ_0 = ℓ_max, and the
    fixed-full variants' ℓ); `completion`, the completion budget (the longest trace and EOS)
    on training and held-out problems."""

    full: int
    completion: int


def hard_lengths(encoder: Encoder, train_file: str, held_out: HeldOut) -> TraceLengths:
    """TraceLengths of the hard form, measured with the tokenizer on the hard training file
    and on the held-out sets' hard traces."""
    train = encoder.ids([r["guidance"] for r in data.traced_rows(train_file)])
    tested = encoder.ids([traces.hard_trace(p) for p in held_out.problems])
    full = max(map(len, train))
    return TraceLengths(full, max(full, *map(len, tested)) + 1)


def with_lengths(
    config: ml_collections.ConfigDict, held_out: HeldOut, lengths: TraceLengths
) -> HeldOut:
    """Sets the run's completion budget and ℓ_0 = ℓ_max to `lengths` (config in place); the
    held-out set with the matching completion budget."""
    config.data.max_completion_length = config.eval.max_completion_length = lengths.completion
    config.guidance.initial_length = config.guidance.max_length = lengths.full
    return dataclasses.replace(held_out, max_completion_length=lengths.completion)


def pass_at(model, held_out: HeldOut, seed: int) -> dict:
    """pass@k for each k in PASS_AT_K: PASS_AT_N unguided samples for each of the first
    PASS_AT_ROWS held-out problems at the demo temperature, exactly verified,
    `evaluation.pass_at_k` averaged over problems."""
    problems = [p for p in held_out.problems[:PASS_AT_ROWS] for _ in range(PASS_AT_N)]
    config = toy_evaluation.sampling_config(
        held_out.encoder, held_out.max_completion_length, demo.TEMPERATURE
    )
    # Chunks of one held-out set's size: the shape the sampled evaluation already compiled.
    texts = toy_evaluation.completions(
        model, held_out.encoder, problems, config, seed, chunk=len(held_out.problems)
    )
    right = [task.is_correct(p, t) for p, t in zip(problems, texts, strict=True)]
    correct = np.reshape(right, (-1, PASS_AT_N)).sum(axis=1)
    return {
        f"pass@{k}": float(np.mean([evaluation.pass_at_k(PASS_AT_N, int(c), k) for c in correct]))
        for k in PASS_AT_K
    }


def scores(model, held_out: HeldOut, seed: int) -> dict:
    """Part 3's final evaluation: greedy and sampled accuracy as in parts 1–2 (not on the
    harder set: part 2's question) and pass@k."""
    return study.final_scores(model, held_out, seed, harder=False) | pass_at(model, held_out, seed)


def plateau_dir(out_dir: str, seed: int) -> str:
    return os.path.join(out_dir, "plateau", f"seed{seed}")


def plateau_model(out_dir: str, seed: int) -> str:
    """The folder of the seed's plateau model: the continuations' model.path."""
    return os.path.join(plateau_dir(out_dir, seed), "model")


def part3_config(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `base` with part 3's sampler settings (SAMPLING)."""
    config = copy.deepcopy(base)
    config.sampling.update(SAMPLING)
    return config


def plateau(
    base: ml_collections.ConfigDict,
    seed: int,
    budget: Budget,
    held_out: HeldOut,
    rule: PlateauRule,
    out_dir: str,
) -> dict:
    """The seed's SFT plateau (PLATEAU from base.model.path on base.data.path, `rule`): its
    model under plateau_dir/model and a record in plateau_dir/plateau.json, written last, so
    a run cut short trains again; later calls read them."""
    folder = plateau_dir(out_dir, seed)
    info_file = os.path.join(folder, "plateau.json")
    if os.path.exists(info_file):
        with open(info_file) as f:
            return json.load(f)
    checks = []

    def stop(step: int, sampled: float) -> bool:
        checks.append((step, sampled))
        return rule.stops([a for _, a in checks])

    limits = dataclasses.replace(budget, steps=rule.max_steps, eval_every=rule.every)
    record, model = study.run_sft(base, PLATEAU, seed, limits, held_out, stop)
    shutil.rmtree(folder, ignore_errors=True)
    study.save_model(model, held_out.encoder, plateau_model(out_dir, seed))
    info = {"steps": checks[-1][0], "plateau_checks": checks} | record
    with open(info_file, "w") as f:
        json.dump(info, f)
    return info


def run_part3(
    out_dir: str,
    base: ml_collections.ConfigDict,
    variants,
    seeds,
    budget: Budget,
    train: study.Train,
    rule: PlateauRule = PlateauRule(),
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Every (seed, variant) of part 3 not yet in OUT/results.jsonl, one record each (with
    pass@k; `plateau_step` where the run starts from, or is, the SFT plateau)."""
    base = part3_config(base)
    shared = study.open_study(out_dir, base, variants, budget, final=scores)
    hard = None
    if Traces.HARD in shared.files:
        hard = hard_lengths(shared.held_out.encoder, shared.files[Traces.HARD], shared.held_out)
        log(f"hard traces: {hard}")

    def run_one(variant: Variant, seed: int) -> dict:
        run_base = copy.deepcopy(base)
        run_base.data.path = shared.files[variant.traces]
        held_out = shared.held_out
        if variant.traces is Traces.HARD:
            held_out = with_lengths(run_base, held_out, hard)
        start = {}
        if variant is PLATEAU or variant.from_plateau:
            clean = copy.deepcopy(base)
            clean.data.path = shared.files[Traces.CLEAN]
            start = plateau(clean, seed, budget, shared.held_out, rule, out_dir)
            run_base.model.path = plateau_model(out_dir, seed)
        if variant is PLATEAU:
            record, model = dict(start), from_pretrained(run_base.model.path)[0]
        else:
            workdir = os.path.join(out_dir, "runs", variant.name, f"seed{seed}")
            record, model = study.train_variant(
                run_base, variant, seed, budget, workdir, held_out, train
            )
        if start:
            record["plateau_step"] = start["steps"]
        return record | scores(model, held_out, seed)

    return study.run_each(shared, variants, seeds, budget, run_one, log)
