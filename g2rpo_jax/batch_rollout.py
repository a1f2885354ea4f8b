"""One step's rollout: guidance plan → sampling → decoding → rewards for a batch of B
prompts, giving the train step its B·G rows (SPEC §1, §6). The trainer calls it once a step,
dynamic sampling once per extra draw.
"""

import time

import jax
import numpy as np

from g2rpo_jax import distributed, evaluation, guidance, train_step
from g2rpo_jax.experiment import Experiment
from g2rpo_jax.sampling import FINISH_LENGTH


class BatchRollout:
    """Guidance plan → sampling → decoding → rewards for one batch of B prompts; returns
    the train step's rows [B·G] (on the mesh), host-side numbers and a few samples."""

    def __init__(self, exp: Experiment, tokenizer, sampler, pool, mesh):
        self.exp, self.tokenizer, self.sampler, self.pool = exp, tokenizer, sampler, pool
        self.G = exp.grpo.group_size
        self.n_guided = guidance.num_guided(exp.guidance.ratio, exp.grpo.group_size)  # ceil(α·G)
        self.names = tuple(name for name, _ in exp.rewards.weights)
        self.accuracy_column = self.names.index(exp.accuracy_reward)
        self.key = jax.random.key(exp.seed)
        self.sharding = train_step.batch_sharding(mesh)

    def __call__(self, params, batch: dict, ell: int, k: int, draw: int = 0):
        """`draw` > 0: the step's extra sampler calls of dynamic sampling, keyed apart."""
        G, t0 = self.G, time.perf_counter()
        key = jax.random.fold_in(self.key, k)
        key = jax.random.fold_in(key, draw) if draw else key
        lengths = np.asarray(
            jax.device_get(
                guidance.guidance_lengths(batch["guidance_length"], ell, G, self.n_guided)
            )
        )
        # Guided = received trace tokens: a planned slot of a trace-less row, or any slot at
        # ℓ = 0, samples unguided and is counted so (metrics, the unguided-accuracy signal).
        is_guided = lengths > 0
        # Candidate j of source row i keys its sampling on i·G + j: the same on any host count.
        row_ids = (
            batch["index"].astype(np.uint32)[:, None] * G + np.arange(G, dtype=np.uint32)
        ).reshape(-1)
        out = self.sampler(
            params,
            np.repeat(batch["prompt_ids"], G, 0),
            np.repeat(batch["prompt_length"], G, 0),
            np.repeat(batch["guidance_ids"], G, 0),
            lengths,
            key,
            row_ids=row_ids,
        )
        ids, mask, generated, finish = (
            distributed.local_rows(x)
            for x in (out.completion_ids, out.completion_mask, out.num_generated, out.finish_reason)
        )
        t_sample = time.perf_counter()
        texts = evaluation.decode(self.tokenizer, ids, mask)
        prompts = evaluation.repeat(batch["prompt_text"], G)
        t_decode = time.perf_counter()
        rewards = self.pool.compute(prompts, texts, **evaluation.row_fields(batch, G))
        accuracy = rewards.per_function[:, self.accuracy_column].astype(np.float32)
        t_reward = time.perf_counter()

        fields = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "is_guidance")
        rows = {f: getattr(out, f) for f in fields}  # already global, rows over the mesh
        rows["sampler_log_probs"] = out.log_probs
        host_rows = {
            "rewards": rewards.total.astype(np.float32),
            "accuracy": accuracy,
            "truncated": finish == FINISH_LENGTH,
            "is_filler": np.zeros(len(texts), bool),
        }
        rows |= distributed.global_batch(host_rows, self.sharding)
        host = {
            "time/sample_s": t_sample - t0,
            "time/decode_s": t_decode - t_sample,
            "time/reward_s": t_reward - t_decode,
            "generated_tokens": float(generated.sum()),
            "guidance_tokens": float(lengths.sum()),
            "rows": batch["index"].tolist(),
            **{
                f"reward/{n}": float(v)
                for n, v in zip(self.names, rewards.per_function.mean(0), strict=True)
            },
        }
        samples = [
            {
                "prompt": prompts[i],
                "completion": texts[i],
                "reward": float(rewards.total[i]),
                "accuracy": float(accuracy[i]),
                "guided": bool(is_guided[i]),
                "guidance_tokens": int(lengths[i]),
            }
            for i in range(min(len(texts), self.exp.train.num_logged_samples))
        ]
        return rows, host, samples
