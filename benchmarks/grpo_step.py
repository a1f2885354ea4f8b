"""One whole G²RPO-A step on the tiny model, timed per phase.

    python benchmarks/grpo_step.py            # < 1 minute on 2 CPU cores

Composed from the library pieces (not the trainer), in the order a step runs them:
guidance plan (ℓ from the controller in the train state, α = 1/2 of each group guided) →
`Sampler` rollout → decode → rewards (`RewardPool`) → `train_step` (reference forward,
policy forward + backward, AdamW, and the ℓ controller inside the same jitted call).

Shapes are the anchors' tiny GRPO step (../shared/anchors, tunix GRPOLearner): vocab 1024,
hidden 256, mlp 768, 4 layers, 4 heads, 2 kv heads, head_dim 64, tied (3.41M params);
8 prompts × 8 candidates, 32 prompt tokens, 64 completion tokens (guidance counts toward
them), temperature 1 over the full vocabulary, no EOS (every row runs the full 64), β = 0.04
with a frozen reference, AdamW. Rewards: the library's default pair, accuracy (math-verify,
weight 1) and format (weight 0.1), scored in-process (workers = 0) on completions decoded
as space-separated token ids, the way tunix's benchmark decodes them. Random text has no
answer and no format, so every reward is 0 and ℓ holds; the update does the same work
either way (β > 0 never skips). Each phase blocks on its outputs so its device work is
inside its own time. Prints one JSON line; benchmarks/README.md explains the fields.
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np
from _common import CpuMonitor, log, machine, wait_for_quiet
from flax import nnx

from g2rpo_jax import grpo, guidance, optimization, sharding, train_step
from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models import ModelConfig, Qwen
from g2rpo_jax.rewards import RewardConfig, RewardPool
from g2rpo_jax.sampling import FINISH_LENGTH, Sampler, SamplingConfig

TINY = ModelConfig(
    model_type="qwen3",
    qk_norm=True,
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=768,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
)
PROMPTS, G, PROMPT_LEN, COMPLETION_LEN = 8, 8, 32, 64
GUIDANCE = guidance.GuidanceConfig(ratio=0.5, initial_length=32, min_length=1, max_length=64)
GRPO = grpo.GRPOConfig(group_size=G, beta=0.04)
OPTIMIZER = optimization.OptimizerConfig(total_steps=100, learning_rate=1e-6, warmup_steps=0)
REWARDS = RewardConfig(weights=(("accuracy", 1.0), ("format", 0.1)), workers=0)


def decode(ids: np.ndarray, mask: np.ndarray) -> list[str]:
    return [" ".join(map(str, row[m])) for row, m in zip(ids, mask.astype(bool), strict=True)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S s for other processes to idle",
    )
    args = parser.parse_args()
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)

    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = Qwen(TINY, rngs=nnx.Rngs(0))
    graphdef = nnx.graphdef(model)
    state = train_step.init_train_state(model, GRPO, OPTIMIZER, GUIDANCE)
    state = jax.device_put(state, train_step.state_shardings(state, mesh))
    del model
    update = train_step.make_train_step(graphdef, GRPO, OPTIMIZER, GUIDANCE, mesh, state)
    sampler = Sampler(graphdef, SamplingConfig(max_completion_length=COMPLETION_LEN), TokenIds())
    pool = RewardPool(REWARDS)
    n_guided = guidance.num_guided(GUIDANCE.ratio, G)
    rng = np.random.default_rng(0)
    V = TINY.vocab_size

    def step(k: int) -> dict:
        """One G²RPO-A step; returns the seconds of each phase."""
        nonlocal state
        prompts = rng.integers(1, V, (PROMPTS, PROMPT_LEN), dtype=np.int32)
        traces = rng.integers(1, V, (PROMPTS, COMPLETION_LEN), dtype=np.int32)
        t0 = time.perf_counter()
        # Guidance plan: ℓ comes from the controller the previous train step updated.
        ell = int(jax.device_get(state.controller.length))
        lengths = jax.device_get(
            guidance.guidance_lengths(np.full(PROMPTS, COMPLETION_LEN), ell, G, n_guided)
        )
        out = sampler(
            state.params,
            np.repeat(prompts, G, 0),
            np.full(PROMPTS * G, PROMPT_LEN),
            np.repeat(traces, G, 0),
            lengths,
            jax.random.key(k),
        )
        ids, mask = jax.device_get((out.completion_ids, out.completion_mask))
        t1 = time.perf_counter()
        texts = decode(ids, mask)
        prompt_texts = decode(np.repeat(prompts, G, 0), np.ones((PROMPTS * G, PROMPT_LEN)))
        rewards = pool.compute(prompt_texts, texts, answer=["42"] * (PROMPTS * G))
        accuracy = rewards.per_function[:, rewards.names.index("accuracy")]
        t2 = time.perf_counter()
        batch = {f: getattr(out, f) for f in train_step.BATCH_FIELDS[:5]}
        batch |= {
            "sampler_log_probs": out.log_probs,
            "rewards": rewards.total,
            "accuracy": accuracy,
            "truncated": out.finish_reason == FINISH_LENGTH,
            "is_filler": np.zeros(PROMPTS * G, bool),
        }
        state, metrics = update(state, batch)
        jax.block_until_ready(state)
        t3 = time.perf_counter()
        return dict(
            rollout=t1 - t0,
            rewards=t2 - t1,
            update=t3 - t2,
            step=t3 - t0,
            ell=ell,
            generated=int(jax.device_get(out.num_generated).sum()),
        )

    log("warm-up (compiles)")
    warm = [step(k)["step"] for k in range(args.warmup)]
    monitor, load, times = CpuMonitor(), {}, []
    with monitor.measure(load):
        for k in range(args.runs):
            times.append(step(args.warmup + k))
            log(f"step {k + 1}/{args.runs}: {times[-1]['step']:.3f} s")
    pool.close()
    median = lambda key: round(statistics.median(t[key] for t in times), 4)
    result = dict(
        bench="grpo_step",
        model="tiny",
        params=int(sum(x.size for x in jax.tree.leaves(state.params))),
        batch=dict(
            prompts=PROMPTS,
            group=G,
            prompt=PROMPT_LEN,
            completion=COMPLETION_LEN,
            beta=GRPO.beta,
            alpha=GUIDANCE.ratio,
            ell=times[-1]["ell"],
        ),
        rewards="accuracy (math-verify) 1.0 + format 0.1, in-process, on id text (all 0)",
        step_s=median("step"),
        phase_s=dict(rollout=median("rollout"), rewards=median("rewards"), update=median("update")),
        generated_tokens=times[-1]["generated"],
        rollout_tokens_per_s=round(times[-1]["generated"] / median("rollout"), 1),
        warmup_s=[round(t, 2) for t in warm],
        sampler_programs=sampler.num_compiled,
        step_seconds=[round(t["step"], 3) for t in times],
        machine=machine(**load),
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
