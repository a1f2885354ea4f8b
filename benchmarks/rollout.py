"""Rollout throughput at a guided GRPO shape: group-aware sampling vs row-wise vs transformers.

    python benchmarks/rollout.py                 # large, 3 timed passes per side
    python benchmarks/rollout.py --runs 1 --no-transformers
    python benchmarks/rollout.py --step          # the whole G²RPO-A step, shared vs row-wise

One random Qwen3-architecture model of the "large" size (benchmarks/sampler.py) is saved to
a temp dir and loaded by `from_pretrained`, so every side samples from the same weights.
Work per call (issue 34): B = 4 prompts of 64–128 random tokens × G = 8 candidates, α = ½
(4 guided per group) with ℓ = 256 of a 384-token trace, budget 512 tokens counting the
guidance (a guided row generates ≤ 256, an unguided ≤ 512). Each row's length is drawn
log-normal (median 0.35 × its budget, σ = 0.6, seed 0) and clipped to its budget; EOS is
unreachable, so that length is the row's stopping point on every side:
- ours shared: `rollout.sampler_for` with sampling.share_prefix and compact (GroupSampler:
  one prefill per group, the prefix held once, compaction), rows stopped by max_new_tokens;
- ours row-wise: the same with both switches off (the Sampler on the prompts repeated G
  times); it has no per-row stop, so every row decodes to its budget (as a batch whose
  longest row reaches it does);
- transformers: `generate` on the 32 left-padded prefixes (prompt, or prompt ⊕ trace[:ℓ]),
  a StoppingCriteria ending each row at its length (finished rows stay in the batch).
Useful tokens are the rows' drawn lengths, the same on every side; tokens/s = useful
tokens / median wall seconds. Prints one JSON line; benchmarks/README.md explains fields.

--step times the whole step on that workload, shared vs row-wise: rollout → completions
decoded as id text → rewards (accuracy + format, in-process; all 0 on random text) →
`train_step` (β = 0.04 with a reference, μ = 1, AdamW, 4 micro-batches of one group) on
the B·G rows.
"""

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np
import torch
import transformers
from _common import CpuMonitor, log, machine, timed, wait_for_quiet
from flax import nnx
from sampler import CONFIGS, random_qwen3

from g2rpo_jax import grpo, guidance, optimization, rollout, sharding, train_step
from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.rewards import RewardConfig, RewardPool
from g2rpo_jax.sampling import FINISH_LENGTH, SamplingConfig

B, G, GUIDED = 4, 8, 4  # α = ½: ceil(α·G) = 4
PROMPT_RANGE, TRACE_LEN, ELL, BUDGET = (64, 128), 384, 256, 512
MEDIAN_FRACTION, SIGMA = 0.35, 0.6


class PerRowStop(transformers.StoppingCriteria):
    """Ends row r once it has generated lengths[r] tokens (one bool per row)."""

    def __init__(self, start: int, lengths: np.ndarray):
        self.start, self.lengths = start, torch.from_numpy(lengths.astype(np.int64))

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.start) >= self.lengths


def bench(args) -> dict:
    hf, model = random_qwen3(args.config)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params)

    rng = np.random.default_rng(0)
    V, R = hf.config.vocab_size, B * G
    prompt_lengths = rng.integers(PROMPT_RANGE[0], PROMPT_RANGE[1] + 1, B).astype(np.int32)
    prompts = np.zeros((B, PROMPT_RANGE[1]), np.int32)
    for b, n in enumerate(prompt_lengths):
        prompts[b, :n] = rng.integers(1, V - 1, n)
    traces = rng.integers(1, V - 1, (B, TRACE_LEN), dtype=np.int32)
    trace_lengths = np.full(B, TRACE_LEN, np.int32)
    ells = np.asarray(guidance.guidance_lengths(trace_lengths, np.int32(ELL), G, GUIDED))
    row_budget = BUDGET - ells
    median = MEDIAN_FRACTION * row_budget
    drawn = np.round(np.exp(rng.normal(np.log(median), SIGMA))).astype(np.int32)
    lengths = np.clip(drawn, 1, row_budget).astype(np.int32)
    useful = int(lengths.sum())
    config = SamplingConfig(max_completion_length=BUDGET, decode_phases=args.decode_phases)
    shared = rollout.sampler_for(graphdef, config, TokenIds(), G, GUIDED)
    off = dataclasses.replace(config, share_prefix=False, compact=False)
    row_wise = rollout.sampler_for(graphdef, off, TokenIds(), G, GUIDED)
    if args.step:
        return bench_step(
            args,
            graphdef,
            params,
            shared,
            row_wise,
            prompts,
            prompt_lengths,
            traces,
            trace_lengths,
            lengths,
        )
    seeds = iter(range(1 << 30))
    outputs = {}

    def ours_shared():
        out = shared(
            params,
            prompts,
            prompt_lengths,
            traces,
            trace_lengths,
            ELL,
            jax.random.key(next(seeds)),
            max_new_tokens=lengths,
        )
        outputs["shared"] = jax.device_get(out)

    def ours_row_wise():
        out = row_wise(
            params, prompts, prompt_lengths, traces, trace_lengths, ELL, jax.random.key(next(seeds))
        )
        outputs["row_wise"] = jax.device_get(out)

    # transformers: each row's prefix left-padded to one width.
    prefixes = [
        list(prompts[r // G, : prompt_lengths[r // G]]) + list(traces[r // G, : ells[r]])
        for r in range(R)
    ]
    width = max(map(len, prefixes))
    ids = torch.zeros((R, width), dtype=torch.long)
    mask = torch.zeros((R, width), dtype=torch.long)
    for r, p in enumerate(prefixes):
        ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1

    def theirs():
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=int(lengths.max()),
                pad_token_id=0,
                eos_token_id=None,
                stopping_criteria=transformers.StoppingCriteriaList([PerRowStop(width, lengths)]),
            )
        assert out.shape[1] == width + lengths.max(), out.shape

    sides = {"shared": ours_shared, "row_wise": ours_row_wise}
    if args.transformers:
        sides["transformers"] = theirs
    log("warm-up (compiles; transformers has nothing to compile)")
    first_call = {name: timed(sides[name]) for name in ("shared", "row_wise")}
    out = outputs["shared"]
    np.testing.assert_array_equal(out.num_generated, lengths)
    times = {name: [] for name in sides}
    load = {}
    with CpuMonitor().measure(load):
        for i in range(args.runs):
            log(f"pass {i + 1}/{args.runs}")
            for name, fn in sides.items():
                times[name].append(timed(fn))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    tokens_per_s = {name: round(useful / s, 1) for name, s in seconds.items()}
    rw = outputs["row_wise"]
    steps_rw = int(rw.num_generated.max()) - 1  # model calls of the row-wise loop
    result = dict(
        config=args.config,
        shape=dict(
            B=B,
            G=G,
            num_guided=GUIDED,
            prompt_lengths=prompt_lengths.tolist(),
            trace=TRACE_LEN,
            ell=ELL,
            budget=BUDGET,
            decode_phases=args.decode_phases,
        ),
        useful_tokens=useful,
        useful_tokens_per_s=tokens_per_s,
        shared_over_row_wise=round(seconds["row_wise"] / seconds["shared"], 2),
        prefill_tokens_per_group=dict(
            shared=float(np.mean(prompt_lengths + ELL)),
            row_wise=float(np.mean(G * prompt_lengths + GUIDED * ELL)),
        ),
        row_steps=dict(
            useful=useful,
            shared=int(out.decode_steps.sum()),
            row_wise=R * steps_rw,
        ),
        compile_s={name: round(first_call[name] - seconds[name], 1) for name in first_call},
        seconds={name: [round(s, 2) for s in t] for name, t in times.items()},
        others_cpu_frac=load["others_cpu_frac"],
        machine=machine(
            torch=torch.__version__,
            transformers=transformers.__version__,
            torch_threads=torch.get_num_threads(),
        ),
    )
    result["decoded_over_useful_row_steps"] = round(result["row_steps"]["shared"] / useful, 3)
    if args.transformers:
        result["shared_over_transformers"] = round(seconds["transformers"] / seconds["shared"], 2)
    return result


def bench_step(
    args,
    graphdef,
    params,
    shared,
    row_wise,
    prompts,
    prompt_lengths,
    traces,
    trace_lengths,
    lengths,
) -> dict:
    """The whole step (rollout → rewards → train_step), shared vs row-wise, alternating."""
    grpo_config = grpo.GRPOConfig(group_size=G, beta=0.04, max_completion_length=BUDGET)
    # 4 micro-batches of one group each: the full batch's activations would not fit 16 GB.
    optimizer = optimization.OptimizerConfig(
        total_steps=100, learning_rate=1e-6, warmup_steps=0, micro_batches=4
    )
    guidance_config = guidance.GuidanceConfig(ratio=GUIDED / G, initial_length=ELL)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state = train_step.init_train_state(
        nnx.merge(graphdef, params), grpo_config, optimizer, guidance_config
    )
    state = jax.device_put(state, train_step.state_shardings(state, mesh))
    # Each side's own train step: the shared side's runs each group's prompt ⊕ guidance
    # once (`sampling.share_prefix`), the row-wise side's every row on its own.
    updates = {
        share: train_step.make_train_step(
            graphdef, grpo_config, optimizer, guidance_config, mesh, state, share_prefix=share
        )
        for share in (True, False)
    }
    pool = RewardPool(RewardConfig(weights=(("accuracy", 1.0), ("format", 0.1)), workers=0))
    R, seeds = B * G, iter(range(1 << 30))

    def text(ids, mask) -> list[str]:
        return [" ".join(map(str, r[m])) for r, m in zip(ids, mask.astype(bool), strict=True)]

    prompt_mask = np.arange(prompts.shape[1])[None] < prompt_lengths[:, None]
    prompt_texts = text(np.repeat(prompts, G, 0), np.repeat(prompt_mask, G, 0))

    def step(sampler, update, **kw) -> dict:
        nonlocal state
        t0 = time.perf_counter()
        out = sampler(
            state.params,
            prompts,
            prompt_lengths,
            traces,
            trace_lengths,
            ELL,
            jax.random.key(next(seeds)),
            **kw,
        )
        ids, mask, finish = jax.device_get(
            (out.completion_ids, out.completion_mask, out.finish_reason)
        )
        t1 = time.perf_counter()
        rewards = pool.compute(prompt_texts, text(ids, mask), answer=["42"] * R)
        t2 = time.perf_counter()
        batch = {f: getattr(out, f) for f in train_step.BATCH_FIELDS[:5]}
        batch |= {
            "sampler_log_probs": out.log_probs,
            "rewards": rewards.total,
            "accuracy": rewards.per_function[:, rewards.names.index("accuracy")],
            "truncated": finish == FINISH_LENGTH,
            "is_filler": np.zeros(R, bool),
        }
        state, _ = update(state, batch)
        jax.block_until_ready(state)
        t3 = time.perf_counter()
        return dict(rollout=t1 - t0, rewards=t2 - t1, update=t3 - t2, step=t3 - t0)

    sides = {
        "shared": lambda: step(shared, updates[True], max_new_tokens=lengths),
        "row_wise": lambda: step(row_wise, updates[False]),
    }
    log("warm-up (compiles)")
    for fn in sides.values():
        fn()
    times = {name: [] for name in sides}
    load = {}
    with CpuMonitor().measure(load):
        for i in range(args.runs):
            log(f"pass {i + 1}/{args.runs}")
            for name, fn in sides.items():
                times[name].append(fn())
    pool.close()
    median = lambda name, key: round(statistics.median(t[key] for t in times[name]), 3)
    phases = ("rollout", "rewards", "update", "step")
    return dict(
        bench="rollout --step",
        config=args.config,
        shape=dict(B=B, G=G, num_guided=GUIDED, trace=TRACE_LEN, ell=ELL, budget=BUDGET),
        step_s={name: median(name, "step") for name in sides},
        phase_s={name: {p: median(name, p) for p in phases} for name in sides},
        shared_over_row_wise=round(median("row_wise", "step") / median("shared", "step"), 2),
        others_cpu_frac=load["others_cpu_frac"],
        machine=machine(),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=list(CONFIGS), default="large")
    parser.add_argument("--runs", type=int, default=3, help="timed passes per side (median)")
    parser.add_argument(
        "--decode-phases", type=int, default=4, help="decode phases, i.e. compaction points − 1"
    )
    parser.add_argument("--transformers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--step", action="store_true", help="time the whole G²RPO-A step")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S s for other processes to idle",
    )
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    print(json.dumps(bench(args)), flush=True)


if __name__ == "__main__":
    main()
