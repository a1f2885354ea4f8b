r"""The toy study: every variant × seeds at one compute budget; writes OUT/results.jsonl
(one record per run, resumable), OUT/table.md and OUT/*.png.

    python scripts/toy_study.py --out=runs/toy_study                  # part 1: 11 variants × 3 seeds
    python scripts/toy_study.py --part=2 --out=runs/toy_study_part2   # part 2: 15 variants × 3 seeds
    python scripts/toy_study.py --out=/tmp/s --variants=grpo,g2rpo_a --seeds=0 --steps=10

g2rpo_jax/toy/study.py defines the variants and the protocol; docs/toy_study.md reports a
full run. Run again with the same --out to finish an interrupted study.
"""

import dataclasses
import importlib.util
import os
import time

from absl import app, flags

from g2rpo_jax import cli, trainer
from g2rpo_jax.toy import study, study_report

_OUT = flags.DEFINE_string("out", "runs/toy_study", "Output folder.")
_PART = flags.DEFINE_enum(
    "part",
    "1",
    ["1", "2"],
    "Which part's variants (docs/toy_study.md): "
    "1, the components; 2, imperfect traces, SFT then RL, the harder set.",
)
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run (default: all of --part).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_STEPS = flags.DEFINE_integer("steps", study.Budget.steps, "Optimizer steps per run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", study.Budget.eval_every, "Steps between evals.")
_ONE_EPOCH = flags.DEFINE_bool(
    "one_epoch",
    study.Budget.one_epoch,
    "Train on a random subset of steps·B rows, read once; --noone_epoch: the whole training file.",
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
    part = study.PARTS[int(_PART.value)]
    names = _VARIANTS.value or [v.name for v in part]
    unknown = set(names) - set(study.BY_NAME)
    if unknown:
        raise app.UsageError(f"unknown variants {sorted(unknown)}; known: {list(study.BY_NAME)}")
    variants = [study.BY_NAME[n] for n in names]
    budget = dataclasses.replace(
        study.Budget(), steps=_STEPS.value, eval_every=_EVAL_EVERY.value, one_epoch=_ONE_EPOCH.value
    )
    t0 = time.perf_counter()
    records = study.run_study(
        _OUT.value, demo_config(), variants, [int(s) for s in _SEEDS.value], budget, trainer.train
    )
    shown = [*variants, *(v for v in part if v not in variants)]
    tables = study_report.table(records, shown)
    if part is study.PART2:
        tables += "".join(
            "\n" + study_report.gaps(records, key) for key in ("greedy", "harder_greedy")
        )
    with open(os.path.join(_OUT.value, "table.md"), "w") as f:
        f.write(tables)
    plots = study_report.write_plots(records, _OUT.value, shown)
    print(tables)
    print(f"plots: {', '.join(plots)}; this invocation took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    cli.run(main)
