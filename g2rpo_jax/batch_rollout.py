"""One step's rollout: guidance plan → sampling → decoding → rewards for a batch of B
prompts, giving the train step its B·G rows (SPEC §1, §6). The trainer calls it once a step,
dynamic sampling once per extra draw. With guidance.when = unguided_failed the step samples
in two calls, the guided candidates after the unguided ones' rewards
(guidance_on_failure.py).
"""

import dataclasses
import functools
import time

import jax
import numpy as np

from g2rpo_jax import distributed, evaluation, guidance, train_step
from g2rpo_jax import guidance_on_failure as on_failure
from g2rpo_jax.experiment import Experiment
from g2rpo_jax.sampling import FINISH_LENGTH


@dataclasses.dataclass(frozen=True)
class LocalRows:
    """This host's rows of a sampler call, decoded and scored: [R_local] each (per_function
    [R_local, F]; rewards 0 on rows the call did not score)."""

    texts: list[str]
    per_function: np.ndarray
    total: np.ndarray
    generated: np.ndarray
    finish: np.ndarray

    def where(self, take: np.ndarray, other: "LocalRows") -> "LocalRows":
        """self's rows where `take` (bool[R_local]), other's elsewhere."""
        texts = [a if t else b for a, b, t in zip(self.texts, other.texts, take, strict=True)]
        pick = lambda a, b: np.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
        fields = ("per_function", "total", "generated", "finish")
        return LocalRows(texts, *(pick(getattr(self, f), getattr(other, f)) for f in fields))


class BatchRollout:
    """Guidance plan → sampling → decoding → rewards for one batch of B prompts; returns
    the train step's rows [B·G] (on the mesh), host-side numbers and a few samples.
    `sampler`: rollout.sampler_for's, called with the B prompts, traces and ℓ."""

    def __init__(self, exp: Experiment, tokenizer, sampler, pool, mesh):
        self.exp, self.tokenizer, self.sampler, self.pool = exp, tokenizer, sampler, pool
        self.G = exp.grpo.group_size
        self.n_guided = guidance.num_guided(exp.guidance.ratio, exp.grpo.group_size)  # ceil(α·G)
        # With no guided or no unguided slot, every group is guided as under `always`.
        self.guide_on_failure = exp.guidance.when is guidance.GuidanceWhen.UNGUIDED_FAILED and (
            0 < self.n_guided < self.G
        )
        self.names = tuple(name for name, _ in exp.rewards.weights)
        self.accuracy_column = self.names.index(exp.accuracy_reward)
        self.key = jax.random.key(exp.seed)
        self.sharding = train_step.batch_sharding(mesh)

    def __call__(self, params, batch: dict, ell: int, k: int, draw: int = 0):
        """`draw` > 0: the step's extra sampler calls of dynamic sampling, keyed apart."""
        G = self.G
        key = jax.random.fold_in(self.key, k)
        key = jax.random.fold_in(key, draw) if draw else key
        # Candidate j of source row i keys its sampling on i·G + j: the same on any host count.
        row_ids = (
            batch["index"].astype(np.uint32)[:, None] * G + np.arange(G, dtype=np.uint32)
        ).reshape(-1)
        times = dict.fromkeys(("sample", "decode", "reward"), 0.0)
        call = functools.partial(self._call, times, params, batch, ell, key, row_ids)
        if self.guide_on_failure:
            out, local, traces = self._on_failure(call, batch["guidance_length"])
        else:
            # B prompts, their traces and ℓ: the sampler plans the guidance as `lengths`
            # does and returns the B·G rows group-major (rollout.sampler_for).
            traces = batch["guidance_length"]
            out, local = call(traces)
        lengths = np.asarray(
            jax.device_get(guidance.guidance_lengths(traces, ell, G, self.n_guided))
        )
        # Guided = received trace tokens: a planned slot of a trace-less row, or any slot at
        # ℓ = 0 (or of a group that needed none), samples unguided and is counted so.
        is_guided = lengths > 0
        prompts = evaluation.repeat(batch["prompt_text"], G)
        accuracy = local.per_function[:, self.accuracy_column].astype(np.float32)

        fields = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "is_guidance")
        rows = {f: getattr(out, f) for f in fields}  # already global, rows over the mesh
        rows["sampler_log_probs"] = out.log_probs
        host_rows = {
            "rewards": local.total.astype(np.float32),
            "accuracy": accuracy,
            "truncated": local.finish == FINISH_LENGTH,
            "is_filler": np.zeros(len(local.texts), bool),
        }
        rows |= distributed.global_batch(host_rows, self.sharding)
        host = {
            **{f"time/{phase}_s": seconds for phase, seconds in times.items()},
            "generated_tokens": float(local.generated.sum()),
            # Of this host's groups (every draw's, under dynamic sampling).
            "guidance/groups_guided": float(is_guided.reshape(-1, G).any(1).mean()),
            "guidance/trace_tokens": float(lengths.sum()),
            "rows": batch["index"].tolist(),
            **{
                f"reward/{n}": float(v)
                for n, v in zip(self.names, local.per_function.mean(0), strict=True)
            },
        }
        samples = [
            {
                "prompt": prompts[i],
                "completion": local.texts[i],
                "reward": float(local.total[i]),
                "accuracy": float(accuracy[i]),
                "guided": bool(is_guided[i]),
                "guidance_tokens": int(lengths[i]),
            }
            for i in range(min(len(local.texts), self.exp.train.num_logged_samples))
        ]
        return rows, host, samples

    def _on_failure(self, call, trace_lengths: np.ndarray):
        """guidance.when = unguided_failed: the unguided slots first, then the guided ones
        with trace tokens only where every unguided candidate failed (guidance_on_failure).
        Returns (rows on the mesh, LocalRows, the second call's trace lengths [B])."""
        G, n = self.G, self.n_guided
        guided = on_failure.guided_slots(len(trace_lengths), G, n)
        budget = np.int32(self.exp.sampling.max_completion_length)
        first, first_local = call(
            np.zeros_like(trace_lengths), np.where(guided, 0, budget), ~guided
        )
        accuracy = first_local.per_function[:, self.accuracy_column]
        traces = on_failure.plan_trace_lengths(trace_lengths, accuracy, G, n)
        second, second_local = call(traces, np.where(guided, budget, 0), guided)
        out = on_failure.merge_rows(second, first, G, n, self.sampler.tokens.pad)
        return out, second_local.where(guided, first_local), traces

    def _call(self, times, params, batch, ell, key, row_ids, traces, budgets=None, scored=None):
        """One sampler call with these trace lengths [B] and row budgets [B·G] (None: the
        config's), its rows decoded and the `scored` ones (bool[B·G]; None: all) rewarded.
        Adds its seconds to `times`; returns (rows on the mesh, LocalRows)."""
        t0 = time.perf_counter()
        out = self.sampler(
            params,
            batch["prompt_ids"],
            batch["prompt_length"],
            batch["guidance_ids"],
            traces,
            ell,
            key,
            row_ids=row_ids,
            max_new_tokens=budgets,
        )
        ids, mask, generated, finish = (
            distributed.local_rows(x)
            for x in (out.completion_ids, out.completion_mask, out.num_generated, out.finish_reason)
        )
        t_sample = time.perf_counter()
        texts = evaluation.decode(self.tokenizer, ids, mask)
        t_decode = time.perf_counter()
        which = np.arange(len(texts)) if scored is None else np.flatnonzero(scored)
        pick = lambda values: [values[i] for i in which]
        prompts = evaluation.repeat(batch["prompt_text"], self.G)
        fields = evaluation.row_fields(batch, self.G)
        rewards = self.pool.compute(
            pick(prompts), pick(texts), **{f: pick(v) for f, v in fields.items()}
        )
        per_function = np.zeros((len(texts), len(self.names)), np.float32)
        per_function[which] = rewards.per_function
        total = np.zeros(len(texts), rewards.total.dtype)
        total[which] = rewards.total
        times["sample"] += t_sample - t0
        times["decode"] += t_decode - t_sample
        times["reward"] += time.perf_counter() - t_decode
        return out, LocalRows(texts, per_function, total, generated, finish)
