"""The toy study (issue 9): which parts of G²RPO-A matter, against plain GRPO and against
supervised training on the same traces, at a fixed compute budget per run.

Every RL variant is configs/demo.py with a few overrides and the same budget: `steps`
optimizer steps of B = 8 prompts × G = 8 candidates. The control, `sft`, takes the same
number of optimizer steps on B·G = 64 reference traces each (the rows of the same training
file, shuffled), with the same optimizer and learning-rate schedule; it skips sampling, so
it costs less wall time. All runs start from the shipped demo model; seeds change the
sampling keys and the data order. Held-out accuracy is unguided: greedy during training
(every `eval_every` steps, on the first `eval_rows_during` held-out problems), then greedy
and sampled at the demo temperature on all of them, scored by the exact verifier.
"""

import copy
import dataclasses
import enum
import os
import shutil
import time
from collections.abc import Callable
from typing import NamedTuple

import ml_collections
import numpy as np

from g2rpo_jax import checkpoint
from g2rpo_jax.logging_utils import METRICS_FILE, append_jsonl, read_jsonl
from g2rpo_jax.models import from_pretrained, save_pretrained
from g2rpo_jax.report import eval_history
from g2rpo_jax.toy import data, demo, evaluation, sft, task, traces
from g2rpo_jax.toy.data import Encoder, read_problems, write_jsonl
from g2rpo_jax.toy.tokenizer import load_tokenizer

HALF, FULL = 23, 46  # ℓ in tokens: half and all of a 4-digit trace (45–46 tokens)


NOISY_FRACTION = 0.3  # of the training rows whose trace is wrong in the `noisy` setting
COVERAGE = 0.25  # of the training rows that keep a trace in the `coverage` setting
HARDER_DIGITS = demo.RL_DIGITS + 1  # the `harder` held-out set: one digit past the training data
HARDER_MAX_COMPLETION_LENGTH = 58  # a 5-digit trace is 55–56 tokens, EOS one more


class Traces(enum.StrEnum):
    """Which reference traces a run's training rows carry (g2rpo_jax/toy/traces.py)."""

    CLEAN = "clean"  # every row, every trace right
    NOISY = "noisy"  # NOISY_FRACTION of them wrong: a wrong carry and the answer that follows
    COVERAGE = "coverage"  # only COVERAGE of the rows have one
    HARD = "hard"  # every trace the long way: the same sums in ≈3× the tokens (part 3)


@dataclasses.dataclass(frozen=True)
class Variant:
    """sft_share: the share of the budget's steps spent on SFT on the rows' traces (1: the SFT
    control; between 0 and 1: SFT, then RL from that model for the remaining steps)."""

    name: str
    label: str
    overrides: dict  # RL: "group.key" → value over configs/demo.py; SFT: rows_per_step, order
    traces: Traces = Traces.CLEAN
    sft_share: float = 0.0
    from_plateau: bool = False  # start from the seed's SFT-plateau model (study_part3)


FIXED = {"guidance.rule": "constant"}  # ℓ stays at its initial length
VARIANTS = (
    Variant("grpo", "plain GRPO (α = 0)", {"guidance.ratio": 0.0}),
    Variant("sft", "SFT, B·G = 64 traces a step (control)", {}, sft_share=1.0),
    # Diagnostic, not in the list: SFT on exactly the rows an RL run reads.
    Variant(
        "sft_rl_rows",
        "SFT, the B = 8 rows a step G²RPO-A reads (control)",
        {"rows_per_step": 8, "order": "sorted"},
        sft_share=1.0,
    ),
    Variant(
        "alpha1_half",
        f"α = 1, fixed ℓ = {HALF} (half)",
        {**FIXED, "guidance.ratio": 1.0, "guidance.initial_length": HALF},
    ),
    Variant(
        "fixed_half",
        f"α = 0.5, fixed ℓ = {HALF} (half)",
        {**FIXED, "guidance.initial_length": HALF},
    ),
    Variant("fixed_full", f"α = 0.5, fixed ℓ = {FULL} (full)", FIXED),
    Variant("linear", f"α = 0.5, linear ℓ {FULL} → 0", {"guidance.rule": "linear"}),
    Variant("g2rpo_a", "G²RPO-A: α = 0.5, adaptive ℓ, curriculum", {}),
    Variant("g2rpo_a_random", "G²RPO-A, random order", {"data.order": "random"}),
    Variant("g2rpo_a_mask", "G²RPO-A, guidance_loss = mask", {"grpo.guidance_loss": "mask"}),
    # Diagnostic, not in the list: plain GRPO without the 0.1 format reward.
    Variant(
        "grpo_acc_only",
        "plain GRPO, accuracy reward only",
        {"guidance.ratio": 0.0, "rewards.weights": ml_collections.ConfigDict({"accuracy": 1.0})},
    ),
)
_MAIN = {v.name: v for v in VARIANTS}
_NOISY = f"{NOISY_FRACTION:.0%} traces wrong"
_COVERED = f"traces on {COVERAGE:.0%} of rows"
# Part 2 (issue 19): the main variants again, now also scored on the harder set, then each
# in settings where traces are imperfect, and SFT followed by RL.
PART2 = (
    *(_MAIN[n] for n in ("sft", "grpo", "fixed_full", "g2rpo_a")),
    Variant("sft_noisy", f"SFT, {_NOISY}", {}, Traces.NOISY, 1.0),
    Variant("fixed_full_noisy", f"α = 0.5, fixed ℓ = {FULL}, {_NOISY}", FIXED, Traces.NOISY),
    Variant("g2rpo_a_noisy", f"G²RPO-A (T = 2), {_NOISY}", {}, Traces.NOISY),
    Variant("g2rpo_a_noisy_T1", f"G²RPO-A, T = 1, {_NOISY}", {"guidance.history": 1}, Traces.NOISY),
    Variant("g2rpo_a_noisy_T4", f"G²RPO-A, T = 4, {_NOISY}", {"guidance.history": 4}, Traces.NOISY),
    Variant(
        "g2rpo_a_noisy_official",
        f"G²RPO-A, official cadence, {_NOISY}",
        {"guidance.rule": "official"},
        Traces.NOISY,
    ),
    Variant("sft_coverage", f"SFT, {_COVERED} (on those rows)", {}, Traces.COVERAGE, 1.0),
    Variant("grpo_coverage", f"plain GRPO, {_COVERED}", {"guidance.ratio": 0.0}, Traces.COVERAGE),
    Variant("g2rpo_a_coverage", f"G²RPO-A, {_COVERED} (the rest unguided)", {}, Traces.COVERAGE),
    Variant(
        "sft_then_grpo",
        "SFT for half the steps, then plain GRPO",
        {"guidance.ratio": 0.0},
        sft_share=0.5,
    ),
    Variant("sft_then_g2rpo_a", "SFT for half the steps, then G²RPO-A", {}, sft_share=0.5),
)
PARTS = {1: VARIANTS, 2: PART2}
BY_NAME = _MAIN | {v.name: v for v in PART2}


@dataclasses.dataclass(frozen=True)
class Budget:
    """steps of B prompts; one_epoch: train on a fixed random subset of steps·B rows of the
    training file, so every run reads each of its rows exactly once and a sorted curriculum
    spans the whole difficulty range (False: the whole file, of which a sorted run then
    reads only the easiest steps·B rows)."""

    steps: int = 50
    eval_every: int = 10
    eval_rows_during: int = 200
    one_epoch: bool = True


def rl_config(
    base: ml_collections.ConfigDict, variant: Variant, seed: int, budget: Budget
) -> ml_collections.ConfigDict:
    c = copy.deepcopy(base)
    c.seed = c.data.seed = seed
    c.train.num_steps = c.train.save_every = budget.steps
    c.train.eval_every = budget.eval_every
    c.train.sample_every = 0
    c.train.progress_bar = False
    c.eval.max_rows = budget.eval_rows_during
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, budget.steps - 1)
    c.data.fields.guidance_optional = variant.traces is Traces.COVERAGE
    for key, value in variant.overrides.items():
        group, name = key.split(".")
        c[group][name] = value
    return c


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The unguided test sets: `problems` at the training difficulty, `harder` one digit
    longer (no traces of that length in training); the most tokens a completion may take on
    each (its trace and EOS, in the trace form the run trained on)."""

    encoder: Encoder
    problems: list[task.Problem]
    harder: list[task.Problem]
    max_completion_length: int = demo.MAX_COMPLETION_LENGTH
    harder_max_completion_length: int = HARDER_MAX_COMPLETION_LENGTH


def harder_problems(count: int = 500, seed: int = 0) -> list[task.Problem]:
    """`count` HARDER_DIGITS-digit problems; disjoint from every training and held-out set of
    the demo, which are all RL_DIGITS digits."""
    return task.make_problems((seed, HARDER_DIGITS), count, HARDER_DIGITS)


def final_scores(model, held_out: HeldOut, seed: int, harder: bool = True) -> dict:
    """Held-out greedy and sampled accuracy (on the harder set too unless `harder` is False),
    and three greedy completions."""
    encoder, problems = held_out.encoder, held_out.problems
    accuracy = lambda test_set, length: demo.held_out_accuracy(
        model, encoder, test_set, seed, max_completion_length=length
    )
    acc = accuracy(problems, held_out.max_completion_length)
    greedy = evaluation.sampling_config(encoder, held_out.max_completion_length, 0.0)
    examples = evaluation.completions(model, encoder, problems[:3], greedy)
    scores = {
        "greedy": acc.greedy,
        "sampled": acc.sampled,
        "examples": [p.prompt + t for p, t in zip(problems, examples, strict=False)],
    }
    if harder:
        on_harder = accuracy(held_out.harder, held_out.harder_max_completion_length)
        scores |= {"harder_greedy": on_harder.greedy, "harder_sampled": on_harder.sampled}
    return scores


# The trainer's `train(config, workdir)`: the study runs above the training loop, which
# scripts/toy_study.py hands in (the library never imports the trainer).
Train = Callable[[ml_collections.ConfigDict, str], object]


def run_rl(
    base, variant: Variant, seed: int, budget: Budget, workdir: str, train: Train
) -> tuple[dict, object]:
    """One RL run from base.model.path; the record (without the final evaluation) and the
    trained policy."""
    config = rl_config(base, variant, seed, budget)
    config.lock()
    t0 = time.perf_counter()
    result = train(config, workdir)
    wall = time.perf_counter() - t0
    if result.step != budget.steps:  # stopped by a signal: no record, rerun to redo it
        raise RuntimeError(f"{workdir}: stopped at step {result.step} of {budget.steps}")
    model, _ = checkpoint.load_policy(workdir)
    during = [(e["step"], e["pass@1"]) for e in eval_history(workdir)]
    metrics = read_jsonl(os.path.join(workdir, METRICS_FILE))
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    return {
        "wall_s": wall,
        "during": during,
        "ell": [r["guidance_length"] for r in metrics],
        "skipped_steps": int(sum(r.get("skipped", 0) for r in metrics)),
        "groups_guided": float(np.mean([r["guidance/groups_guided"] for r in metrics])),
    }, model


def run_sft(
    base,
    variant: Variant,
    seed: int,
    budget: Budget,
    held_out: HeldOut,
    stop: Callable[[int, float], bool] | None = None,
) -> tuple[dict, object]:
    """The control: the reference traces of the training file (those it has), `rows_per_step`
    a step (default B·G, shuffled by seed; `order: sorted` reads them in the curriculum's
    order, as RL does; `final_lr_fraction` overrides the schedule's). Returns the record
    (without the final evaluation) and the model. `stop(step, sampled accuracy)` sees every
    check's sampled accuracy on the same rows and may end the run (study_part3's plateau)."""
    model, _ = from_pretrained(base.model.path)
    rows = [
        (task.parse_prompt(r["prompt"]), r["guidance"], r["difficulty"])
        for r in data.traced_rows(base.data.path)
    ]
    per_step = variant.overrides.get("rows_per_step", base.data.batch_size * base.grpo.group_size)
    epochs = -(-budget.steps * per_step // len(rows))
    if variant.overrides.get("order") == "sorted":
        order = np.tile(np.argsort([d for *_, d in rows], kind="stable"), epochs)
    else:
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(len(rows)) for _ in range(epochs)])
    opt = base.optimizer
    config = sft.SFTConfig(
        steps=budget.steps,
        batch_size=per_step,
        seq_len=base.data.max_prompt_length + base.data.max_completion_length,
        learning_rate=opt.learning_rate,
        warmup_steps=min(opt.warmup_steps, budget.steps - 1),
        final_lr_fraction=variant.overrides.get("final_lr_fraction", opt.final_lr_fraction),
        weight_decay=opt.weight_decay,
        max_grad_norm=opt.max_grad_norm,
    )
    during_rows = held_out.problems[: budget.eval_rows_during]
    during = []

    def check(step: int, model) -> bool:
        acc = demo.held_out_accuracy(
            model,
            held_out.encoder,
            during_rows,
            seed,
            sampled=stop is not None,
            max_completion_length=held_out.max_completion_length,
        )
        during.append((step, acc.greedy))
        return stop is not None and stop(step, acc.sampled)

    def batch(k: int):
        chosen = [rows[i] for i in order[k * per_step : (k + 1) * per_step]]
        return held_out.encoder.sft_arrays(
            [p for p, *_ in chosen], config.seq_len, traces=[t for _, t, _ in chosen]
        )

    check(0, model)
    t0 = time.perf_counter()
    sft.train(model, config, batch, check_every=budget.eval_every, stop=check)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "during": during, "ell": [], "skipped_steps": 0}, model


def save_model(model, encoder: Encoder, model_dir: str) -> None:
    """The model and its tokenizer in one Hugging Face folder, as a run's model.path reads it."""
    save_pretrained(model, model_dir)
    encoder.tokenizer.save_pretrained(model_dir)


def run_sft_then_rl(
    base, variant: Variant, seed: int, budget: Budget, workdir: str, held_out: HeldOut, train: Train
) -> tuple[dict, object]:
    """SFT for round(sft_share · steps) steps, then RL from that model for the rest."""
    sft_steps = round(variant.sft_share * budget.steps)
    first, model = run_sft(
        base, variant, seed, dataclasses.replace(budget, steps=sft_steps), held_out
    )
    model_dir = os.path.join(workdir, "sft_model")
    shutil.rmtree(workdir, ignore_errors=True)  # a run cut short starts over
    save_model(model, held_out.encoder, model_dir)
    rl_base = copy.deepcopy(base)
    rl_base.model.path = model_dir
    rest_budget = dataclasses.replace(budget, steps=budget.steps - sft_steps)
    rest, model = run_rl(rl_base, variant, seed, rest_budget, workdir, train)
    return {
        "wall_s": first["wall_s"] + rest["wall_s"],
        "sft_steps": sft_steps,
        "during": first["during"] + [(sft_steps + s, a) for s, a in rest["during"]],
        "ell": rest["ell"],
        "skipped_steps": rest["skipped_steps"],
        "groups_guided": rest["groups_guided"],
    }, model


def training_files(train_file: str, out_dir: str, kinds) -> dict[Traces, str]:
    """The training file of each trace setting in `kinds`, written under out_dir from
    `train_file`; the corrupted and the kept rows are drawn once (seed 0), the same for
    every run."""
    rows = data.read_rows(train_file)
    made = {
        Traces.NOISY: traces.noisy_rows(rows, NOISY_FRACTION, seed=0),
        Traces.COVERAGE: traces.covered_rows(rows, COVERAGE, seed=0),
        Traces.HARD: traces.hard_rows(rows),
    }
    stem = os.path.splitext(os.path.basename(train_file))[0]
    return {Traces.CLEAN: train_file} | {
        kind: write_jsonl(os.path.join(out_dir, f"{stem}_{kind}.jsonl"), kind_rows)
        for kind, kind_rows in made.items()
        if kind in kinds
    }


class Study(NamedTuple):
    """What every run of a study shares: OUT/results.jsonl, the records already in it (the
    list grows as runs finish), each trace setting's training file, the held-out sets."""

    path: str
    records: list[dict]
    files: dict[Traces, str]
    held_out: HeldOut


def open_study(
    out_dir: str, base: ml_collections.ConfigDict, variants, budget: Budget, final=final_scores
) -> Study:
    """Reads OUT/results.jsonl, writes the runs' training files, and scores the base model
    (`final`) unless a record of it exists."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.jsonl")
    done = read_jsonl(path)
    train_file = base.data.path
    if budget.one_epoch:
        subset = os.path.join(out_dir, "train_subset.jsonl")
        train_file = data.train_subset(train_file, budget.steps * base.data.batch_size, subset)
    files = training_files(train_file, out_dir, {v.traces for v in variants})
    held_out = HeldOut(
        Encoder(load_tokenizer(base.model.path)), read_problems(base.eval.path), harder_problems()
    )
    if not any(r["variant"] == "base" for r in done):
        model, _ = from_pretrained(base.model.path)
        record = {"variant": "base", "seed": 0, "wall_s": 0.0, "during": []}
        record |= final(model, held_out, 0) | {"ell": [], "skipped_steps": 0}
        done.append(_append(path, record))
    return Study(path, done, files, held_out)


_LOGGED = ("greedy", "sampled", "harder_greedy", "pass@8")  # a finished run's log line


def run_each(
    study: Study,
    variants,
    seeds,
    budget: Budget,
    run_one: Callable[[Variant, int], dict],
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Runs every (seed, variant) without a record, seed by seed; `run_one` trains and scores
    one, and its record is appended to OUT/results.jsonl. Returns all records."""
    for seed in seeds:
        for variant in variants:
            if any(r["variant"] == variant.name and r["seed"] == seed for r in study.records):
                continue
            log(f"[{time.strftime('%H:%M:%S')}] {variant.name} seed {seed} ...")
            record = {
                "variant": variant.name,
                "seed": seed,
                "steps": budget.steps,
                "traces": str(variant.traces),
                **run_one(variant, seed),
            }
            study.records.append(_append(study.path, record))
            shown = [f"{k} {record[k]:.3f}" for k in _LOGGED if k in record]
            log(f"  {' '.join(shown)} ({record['wall_s']:.0f} s)")
    return study.records


def train_variant(
    base, variant: Variant, seed: int, budget: Budget, workdir: str, held_out: HeldOut, train: Train
) -> tuple[dict, object]:
    """One run from base.model.path on base.data.path: SFT, SFT then RL, or RL, by
    `variant.sft_share`; its record (without the final evaluation) and its model."""
    if variant.sft_share >= 1.0:
        return run_sft(base, variant, seed, budget, held_out)
    if variant.sft_share > 0.0:
        return run_sft_then_rl(base, variant, seed, budget, workdir, held_out, train)
    shutil.rmtree(workdir, ignore_errors=True)  # a run cut short starts over
    return run_rl(base, variant, seed, budget, workdir, train)


def run_study(
    out_dir: str,
    base: ml_collections.ConfigDict,
    variants,
    seeds,
    budget: Budget,
    train: Train,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Parts 1 and 2: every (seed, variant) not yet in OUT/results.jsonl, one record each."""
    study = open_study(out_dir, base, variants, budget)

    def run_one(variant: Variant, seed: int) -> dict:
        run_base = copy.deepcopy(base)
        run_base.data.path = study.files[variant.traces]
        workdir = os.path.join(out_dir, "runs", variant.name, f"seed{seed}")
        record, model = train_variant(
            run_base, variant, seed, budget, workdir, study.held_out, train
        )
        return record | final_scores(model, study.held_out, seed)

    return run_each(study, variants, seeds, budget, run_one, log)


def _append(path: str, record: dict) -> dict:
    append_jsonl(path, record)
    return record
