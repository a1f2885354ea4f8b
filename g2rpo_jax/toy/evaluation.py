"""Held-out accuracy of a policy on toy problems, unguided, scored by the exact verifier."""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from g2rpo_jax import evaluation, sampling
from g2rpo_jax.data import tokenization
from g2rpo_jax.models import Qwen
from g2rpo_jax.sampling import SamplingConfig
from g2rpo_jax.toy import sft, task
from g2rpo_jax.toy.data import Encoder


def sampling_config(
    encoder: Encoder, max_completion_length: int, temperature: float, batch_multiple: int = 64
) -> SamplingConfig:
    """temperature 0: greedy; otherwise plain sampling (no top-k/top-p) at that temperature."""
    return SamplingConfig(
        max_completion_length=max_completion_length,
        temperature=temperature,
        batch_multiple=batch_multiple,
    )


def completions(
    model: Qwen,
    encoder: Encoder,
    problems: Sequence[task.Problem],
    config: SamplingConfig,
    seed: int = 0,
    chunk: int = 512,
) -> list[str]:
    """The decoded unguided completion of each problem (special tokens dropped)."""
    graphdef, params = nnx.split(model)
    tokens = tokenization.TokenIds((encoder.eos_id,), encoder.pad_id)
    sampler = sampling.sampler_for(graphdef, config, tokens)
    texts = []
    for start in range(0, len(problems), chunk):
        part = problems[start : start + chunk]
        ids, lengths = encoder.prompt_arrays(part)
        out = sampler(
            params,
            ids,
            lengths,
            np.zeros((len(part), 0), np.int32),
            np.zeros(len(part), np.int32),
            jax.random.key(seed + start),
        )
        completion_ids, mask = jax.device_get((out.completion_ids, out.completion_mask))
        texts += evaluation.decode(encoder.tokenizer, completion_ids, mask)
    return texts


@dataclasses.dataclass(frozen=True)
class Accuracy:
    greedy: float
    sampled: float  # at `temperature`, one sample per problem (pass@1)
    temperature: float
    num_problems: int

    def __str__(self) -> str:
        return (
            f"greedy {self.greedy:.3f}, sampled (T={self.temperature:g}) {self.sampled:.3f} "
            f"on {self.num_problems} problems"
        )


def accuracy(
    model: Qwen,
    encoder: Encoder,
    problems: Sequence[task.Problem],
    *,
    temperature: float,
    max_completion_length: int,
    seed: int = 0,
    sampled: bool = True,
) -> Accuracy:
    """Fraction of problems whose unguided completion is exactly right, greedy and sampled."""

    def score(temp: float) -> float:
        config = sampling_config(encoder, max_completion_length, temp)
        texts = completions(model, encoder, problems, config, seed)
        return float(np.mean([task.is_correct(p, t) for p, t in zip(problems, texts, strict=True)]))

    return Accuracy(
        greedy=score(0.0),
        sampled=score(temperature) if sampled else float("nan"),
        temperature=temperature,
        num_problems=len(problems),
    )


def trace_nll(
    model: Qwen, encoder: Encoder, problems: Sequence[task.Problem], seq_len: int, chunk: int = 512
) -> np.ndarray:
    """float64 [N]: −log π(trace ⊕ EOS | prompt) in nats under `model`, teacher-forced.

    The demo's curriculum difficulty: on the warm-started model it ranks 4-digit problems by
    how likely greedy decoding is to solve them (AUC ≈ 0.94 on the held-out set).
    """
    graphdef, params = nnx.split(model)

    @jax.jit
    def nll(params, tokens_BT, loss_mask_BT):
        per_row = jax.vmap(
            lambda t, m: (
                sft.cross_entropy(nnx.merge(graphdef, params), t[None], m[None]) * m[:-1].sum()
            )
        )
        return per_row(tokens_BT, loss_mask_BT)

    out = []
    for start in range(0, len(problems), chunk):
        tokens, mask = encoder.sft_arrays(problems[start : start + chunk], seq_len)
        out.append(np.asarray(jax.device_get(nll(params, tokens, mask)), np.float64))
    return np.concatenate(out)
