"""The demo's base model and data: the recipe, and the build that scripts/make_demo_model.py runs.

Build (deterministic from `Recipe.seed` and `Recipe.data_seed` on a given machine):
1. problem sets from `data_seed`: held-out eval, calibration, and RL training rows, all at the
   RL difficulty (4 digits), disjoint; the warm-start streams never draw an eval or
   calibration problem;
2. a random tiny Qwen3 (`model_config`) from `seed`;
3. phase 1: supervised on 1–3 digit problems until they are solved;
4. phase 2: the same plus a small share of 4-digit problems, at a low learning rate after a
   warmup, checked every few steps on the calibration set; it stops at the first check whose
   greedy 4-digit accuracy reaches `target_greedy`, so the model starts RL in the
   sparse-reward regime (a few percent) whatever the seed;
5. the model (Hugging Face format), tokenizer, data files and `build_info.json` are written;
   each RL row's `difficulty` is the base model's negative log-likelihood of its reference
   trace in nats (the curriculum sorts easy to hard by it; it predicts which problems the
   base model solves far better than the number of carries does).
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable

from flax import nnx

from g2rpo_jax.models import ModelConfig, Qwen, save_pretrained
from g2rpo_jax.models.config import qwen3
from g2rpo_jax.models.qwen import param_count
from g2rpo_jax.toy import evaluation, sft, task
from g2rpo_jax.toy.data import Encoder, write_jsonl
from g2rpo_jax.toy.tokenizer import save_tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_DIR = os.path.join(REPO_ROOT, "assets", "demo")
MODEL_DIR, TRAIN_FILE, EVAL_FILE, INFO_FILE = (
    "model",
    "train.jsonl",
    "eval.jsonl",
    "build_info.json",
)
RL_DIGITS = 4  # the RL difficulty: digits per operand
TEMPERATURE = 1.0  # rollouts and sampled evaluation
MAX_COMPLETION_LENGTH = 48  # a 4-digit trace is 45–46 tokens, EOS one more


def model_config(vocab_size: int, eos_token_id: int) -> ModelConfig:
    """Qwen3 architecture (q/k norm, GQA 4:2, RoPE, SwiGLU, tied embeddings), 0.79M params."""
    return qwen3(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        tie_word_embeddings=True,
        rope_theta=10_000.0,
        max_position_embeddings=128,
        eos_token_id=eos_token_id,
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    seed: int = 0  # model init and warm-start batches
    data_seed: int = 0  # eval, calibration and RL training problems
    num_eval: int = 500
    num_calibration: int = 256
    num_train: int = 1024
    phase1: sft.SFTConfig = sft.SFTConfig(
        steps=400, batch_size=64, seq_len=48, learning_rate=1e-3, warmup_steps=50
    )
    phase1_digits: tuple[int, ...] = (1, 2, 3)
    phase2: sft.SFTConfig = sft.SFTConfig(
        steps=400,
        batch_size=64,
        seq_len=64,
        learning_rate=1e-4,
        warmup_steps=30,
        final_lr_fraction=1.0,
    )
    phase2_share: float = 0.15  # of 4-digit problems in phase 2; the rest 1–3 digits
    # Accuracy climbs ~0.08 in 10 phase-2 steps near the target: checking every 2 steps lands
    # rebuilds close to target_greedy whatever path their floats took.
    check_every: int = 2
    target_greedy: float = 0.08


def problem_sets(recipe: Recipe) -> dict[str, list[task.Problem]]:
    """Held-out eval, calibration and RL training problems at RL_DIGITS, pairwise disjoint."""
    s = recipe.data_seed
    eval_set = task.make_problems((s, 0), recipe.num_eval, RL_DIGITS)
    held_out = set(eval_set)
    calibration = task.make_problems((s, 1), recipe.num_calibration, RL_DIGITS, exclude=held_out)
    held_out |= set(calibration)
    train = task.make_problems((s, 2), recipe.num_train, RL_DIGITS, exclude=held_out)
    return {"eval": eval_set, "calibration": calibration, "train": train}


def warm_start(recipe: Recipe, encoder: Encoder, sets: dict, log: Callable[[str], None] = print):
    """Phases 1 and 2 (module docstring); returns the model and a record of the run."""
    held_out = set(sets["eval"]) | set(sets["calibration"])
    config = model_config(len(encoder.tokenizer), encoder.eos_id)
    model = Qwen(config, rngs=nnx.Rngs(recipe.seed))
    log(f"model: {param_count(model):,} parameters")
    info: dict = {"params": param_count(model)}

    def stream(phase: int, digits, weights, seq_len, batch_size):
        def batches(k: int):
            problems = task.make_problems(
                (recipe.seed, phase, k), batch_size, digits, weights, exclude=held_out
            )
            return encoder.sft_arrays(problems, seq_len)

        return batches

    t0 = time.perf_counter()
    p1 = recipe.phase1
    losses = sft.train(
        model,
        p1,
        stream(1, recipe.phase1_digits, None, p1.seq_len, p1.batch_size),
        log_every=100,
        log=log,
    )
    info["phase1"] = {
        "steps": p1.steps,
        "final_loss": losses[-1],
        "seconds": time.perf_counter() - t0,
    }

    t1 = time.perf_counter()
    p2, share = recipe.phase2, recipe.phase2_share
    n_small = len(recipe.phase1_digits)
    weights = (*[(1 - share) / n_small] * n_small, share)
    checks = []

    def stop(steps: int, model: Qwen) -> bool:
        acc = evaluation.accuracy(
            model,
            encoder,
            sets["calibration"],
            temperature=TEMPERATURE,
            max_completion_length=MAX_COMPLETION_LENGTH,
            sampled=False,
        ).greedy
        checks.append((steps, acc))
        log(f"phase 2 step {steps}: calibration greedy accuracy {acc:.3f}")
        return acc >= recipe.target_greedy

    losses = sft.train(
        model,
        p2,
        stream(2, (*recipe.phase1_digits, RL_DIGITS), weights, p2.seq_len, p2.batch_size),
        check_every=recipe.check_every,
        stop=stop,
        log=log,
    )
    info["phase2"] = {
        "steps": len(losses),
        "final_loss": losses[-1],
        "checks": checks,
        "seconds": time.perf_counter() - t1,
    }
    return model, info


def held_out_accuracy(
    model: Qwen,
    encoder: Encoder,
    problems,
    seed: int = 0,
    sampled: bool = True,
    max_completion_length: int = MAX_COMPLETION_LENGTH,
) -> evaluation.Accuracy:
    """Greedy and (when `sampled`) TEMPERATURE accuracy, unguided, exactly verified."""
    return evaluation.accuracy(
        model,
        encoder,
        problems,
        temperature=TEMPERATURE,
        max_completion_length=max_completion_length,
        seed=seed,
        sampled=sampled,
    )


def build(out_dir: str, recipe: Recipe = Recipe(), log: Callable[[str], None] = print) -> dict:
    """Builds and writes everything into `out_dir`; returns the build record."""
    t0 = time.perf_counter()
    model_dir = os.path.join(out_dir, MODEL_DIR)
    tokenizer = save_tokenizer(model_dir)
    encoder = Encoder(tokenizer)
    sets = problem_sets(recipe)
    write_jsonl(os.path.join(out_dir, EVAL_FILE), sets["eval"])
    model, info = warm_start(recipe, encoder, sets, log)
    save_pretrained(model, model_dir)
    # The curriculum's difficulty: the base model's NLL of each reference trace (nats).
    nll = evaluation.trace_nll(model, encoder, sets["train"], 64)
    rows = [
        p.row() | {"difficulty": round(float(d), 4)}
        for p, d in zip(sets["train"], nll, strict=True)
    ]
    write_jsonl(os.path.join(out_dir, TRAIN_FILE), rows)
    acc = held_out_accuracy(model, encoder, sets["eval"])
    log(f"held-out {RL_DIGITS}-digit accuracy: {acc}")
    info |= {
        "recipe": dataclasses.asdict(recipe),
        "held_out": dataclasses.asdict(acc),
        "build_seconds": time.perf_counter() - t0,
    }
    with open(os.path.join(out_dir, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return info
