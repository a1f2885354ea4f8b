r"""The toy study: every variant × seeds at one compute budget; writes OUT/results.jsonl
(one record per run, resumable), OUT/table.md and OUT/*.png.

    python scripts/toy_study.py --out=runs/toy_study                  # part 1: 11 variants × 3 seeds
    python scripts/toy_study.py --part=2 --out=runs/toy_study_part2   # part 2: 15 variants × 3 seeds
    python scripts/toy_study.py --part=3 --out=runs/toy_study_part3   # part 3: 16 variants × 3 seeds
    python scripts/toy_study.py --out=/tmp/s --variants=grpo,g2rpo_a --seeds=0 --steps=10
    python scripts/toy_study.py --part=3 --out=/tmp/s3 --seeds=0 --steps=4 --eval_every=2 \
        --plateau_every=2 --plateau_max_steps=6                      # part 3 end to end, small

g2rpo_jax/toy/study.py defines the variants and the protocol (study_part3.py part 3's);
docs/toy_study.md reports the full runs. Run again with the same --out to finish an
interrupted study.
"""

import dataclasses
import importlib.util
import os
import time

from absl import app, flags

from g2rpo_jax import cli, trainer
from g2rpo_jax.toy import study, study_part3, study_report

_OUT = flags.DEFINE_string("out", "runs/toy_study", "Output folder.")
_PART = flags.DEFINE_enum(
    "part",
    "1",
    ["1", "2", "3"],
    "Which part's variants (docs/toy_study.md): 1, the components; 2, imperfect traces, SFT "
    "then RL, the harder set; 3, pass@k, RL after an SFT plateau, hard traces, guidance on "
    "failure.",
)
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run (default: all of --part).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_STEPS = flags.DEFINE_integer("steps", study.Budget.steps, "Optimizer steps per run.")
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every",
    None,
    f"Steps between evals during a run (default {study.Budget.eval_every}; part 3: "
    f"{study_part3.EVAL_EVERY}).",
)
_ONE_EPOCH = flags.DEFINE_bool(
    "one_epoch",
    study.Budget.one_epoch,
    "Train on a random subset of steps·B rows, read once; --noone_epoch: the whole training file.",
)
_PLATEAU_EVERY = flags.DEFINE_integer(
    "plateau_every", study_part3.PlateauRule.every, "Part 3: SFT steps between plateau checks."
)
_PLATEAU_MAX_STEPS = flags.DEFINE_integer(
    "plateau_max_steps", study_part3.PlateauRule.max_steps, "Part 3: most SFT steps to a plateau."
)
_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py"
)


def demo_config():
    spec = importlib.util.spec_from_file_location("config_demo", _CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    part_number = int(_PART.value)
    part = {**study.PARTS, 3: study_part3.PART3}[part_number]
    known = study_part3.BY_NAME if part_number == 3 else study.BY_NAME
    names = _VARIANTS.value or [v.name for v in part]
    unknown = set(names) - set(known)
    if unknown:
        raise app.UsageError(f"unknown variants {sorted(unknown)}; known: {list(known)}")
    variants = [known[n] for n in names]
    eval_every = _EVAL_EVERY.value or (
        study_part3.EVAL_EVERY if part_number == 3 else study.Budget.eval_every
    )
    budget = dataclasses.replace(
        study.Budget(), steps=_STEPS.value, eval_every=eval_every, one_epoch=_ONE_EPOCH.value
    )
    seeds = [int(s) for s in _SEEDS.value]
    t0 = time.perf_counter()
    if part_number == 3:
        rule = study_part3.PlateauRule(
            every=_PLATEAU_EVERY.value, max_steps=_PLATEAU_MAX_STEPS.value
        )
        records = study_part3.run_part3(
            _OUT.value, demo_config(), variants, seeds, budget, trainer.train, rule
        )
    else:
        records = study.run_study(_OUT.value, demo_config(), variants, seeds, budget, trainer.train)
    shown = [*variants, *(v for v in part if v not in variants)]
    tables = study_report.markdown(records, shown, part_number)
    with open(os.path.join(_OUT.value, "table.md"), "w") as f:
        f.write(tables)
    plots = study_report.write_plots(records, _OUT.value, shown)
    print(tables)
    print(f"plots: {', '.join(plots)}; this invocation took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    cli.run(main)
