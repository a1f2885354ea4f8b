r"""Builds the demo's base model, tokenizer and data (g2rpo_jax/toy/demo.py has the recipe).

    python scripts/make_demo_model.py                      # writes assets/demo (seed 0)
    python scripts/make_demo_model.py --out=/tmp/demo --seed=1

Writes OUT/model (Hugging Face config.json, model.safetensors, tokenizer files),
OUT/train.jsonl (RL problems), OUT/eval.jsonl (held-out problems) and OUT/build_info.json
(the recipe, the calibration checks, held-out accuracy, timings). A CPU build: the same seed
on the same software and CPU gives the same bytes; other software (or a change to the model
code) changes the floats, and the calibration stop then lands the held-out accuracy near
the target (docs/toy_study.md, "The base model's provenance", states the spread).
"""

import dataclasses

from absl import app, flags

from g2rpo_jax import cli
from g2rpo_jax.toy import demo

_OUT = flags.DEFINE_string("out", demo.DEMO_DIR, "Output folder.")
_SEED = flags.DEFINE_integer("seed", demo.Recipe.seed, "Model init and warm-start batches.")
_DATA_SEED = flags.DEFINE_integer("data_seed", demo.Recipe.data_seed, "Eval and RL problems.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    recipe = dataclasses.replace(demo.Recipe(), seed=_SEED.value, data_seed=_DATA_SEED.value)
    info = demo.build(_OUT.value, recipe)
    print(f"wrote {_OUT.value} in {info['build_seconds']:.0f} s")


if __name__ == "__main__":
    cli.run(main)
