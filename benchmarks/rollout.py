"""Rollout throughput at a guided GRPO shape: group-aware sampling vs row-wise vs transformers.

    python benchmarks/rollout.py                 # large, 3 timed passes per side
    python benchmarks/rollout.py --runs 1 --no-transformers

One random Qwen3-architecture model of the "large" size (benchmarks/sampler.py) is saved to
a temp dir and loaded by `from_pretrained`, so every side samples from the same weights.
Work per call (issue 34): B = 4 prompts of 64–128 random tokens × G = 8 candidates, α = ½
(4 guided per group) with ℓ = 256 of a 384-token trace, budget 512 tokens counting the
guidance (a guided row generates ≤ 256, an unguided ≤ 512). Each row's length is drawn
log-normal (median 160, σ = 0.7, seed 0) and clipped to its budget; EOS is unreachable, so
that length is the row's stopping point on every side:
- ours shared: GroupSampler (one prefill per group, the prefix held once, compaction),
  rows stopped by max_new_tokens;
- ours row-wise: today's Sampler on the prompts repeated G times; it has no per-row stop,
  so every row decodes to its budget (as a batch whose longest row reaches it does);
- transformers: `generate` on the 32 left-padded prefixes (prompt, or prompt ⊕ trace[:ℓ]),
  a StoppingCriteria ending each row at its length (finished rows stay in the batch).
Useful tokens are the rows' drawn lengths, the same on every side; tokens/s = useful
tokens / median wall seconds. Prints one JSON line; benchmarks/README.md explains fields.
"""

import argparse
import json
import statistics
import tempfile

import jax
import numpy as np
import torch
import transformers
from _common import CpuMonitor, log, machine, timed, wait_for_quiet
from flax import nnx
from sampler import CONFIGS

from g2rpo_jax import guidance
from g2rpo_jax.models import from_pretrained
from g2rpo_jax.rollout import GroupSampler
from g2rpo_jax.sampling import Sampler, SamplingConfig

B, G, GUIDED = 4, 8, 4  # α = ½: ceil(α·G) = 4
PROMPT_RANGE, TRACE_LEN, ELL, BUDGET = (64, 128), 384, 256, 512
MEDIAN_LENGTH, SIGMA = 160, 0.7


class PerRowStop(transformers.StoppingCriteria):
    """Ends row r once it has generated lengths[r] tokens (one bool per row)."""

    def __init__(self, start: int, lengths: np.ndarray):
        self.start, self.lengths = start, torch.from_numpy(lengths.astype(np.int64))

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.start) >= self.lengths


def bench(args) -> dict:
    hf_config = transformers.Qwen3Config(
        **CONFIGS[args.config], tie_word_embeddings=True, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        max_position_embeddings=4096, attention_bias=False, pad_token_id=0,
        eos_token_id=None, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(hf_config).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        model, _ = from_pretrained(directory)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params)

    rng = np.random.default_rng(0)
    V, R = hf_config.vocab_size, B * G
    prompt_lengths = rng.integers(PROMPT_RANGE[0], PROMPT_RANGE[1] + 1, B).astype(np.int32)
    prompts = np.zeros((B, PROMPT_RANGE[1]), np.int32)
    for b, n in enumerate(prompt_lengths):
        prompts[b, :n] = rng.integers(1, V - 1, n)
    traces = rng.integers(1, V - 1, (B, TRACE_LEN), dtype=np.int32)
    trace_lengths = np.full(B, TRACE_LEN, np.int32)
    ells = np.asarray(guidance.guidance_lengths(trace_lengths, np.int32(ELL), G, GUIDED))
    row_budget = BUDGET - ells
    drawn = np.round(np.exp(rng.normal(np.log(MEDIAN_LENGTH), SIGMA, R))).astype(np.int32)
    lengths = np.clip(drawn, 1, row_budget).astype(np.int32)
    useful = int(lengths.sum())
    config = SamplingConfig(max_completion_length=BUDGET, decode_phases=args.decode_phases)
    shared = GroupSampler(graphdef, config, G, GUIDED)
    row_wise = Sampler(graphdef, config)
    seeds = iter(range(1 << 30))
    outputs = {}

    def ours_shared():
        out = shared(params, prompts, prompt_lengths, traces, trace_lengths, ELL,
                     jax.random.key(next(seeds)), max_new_tokens=lengths)  # fmt: skip
        outputs["shared"] = jax.device_get(out)

    def ours_row_wise():
        out = row_wise(params, np.repeat(prompts, G, 0), np.repeat(prompt_lengths, G, 0),
                       np.repeat(traces, G, 0), ells, jax.random.key(next(seeds)))  # fmt: skip
        outputs["row_wise"] = jax.device_get(out)

    # transformers: each row's prefix left-padded to one width.
    prefixes = [list(prompts[r // G, : prompt_lengths[r // G]]) + list(traces[r // G, : ells[r]])
                for r in range(R)]  # fmt: skip
    width = max(map(len, prefixes))
    ids = torch.zeros((R, width), dtype=torch.long)
    mask = torch.zeros((R, width), dtype=torch.long)
    for r, p in enumerate(prefixes):
        ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1

    def theirs():
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, max_new_tokens=int(lengths.max()), pad_token_id=0,
                eos_token_id=None,
                stopping_criteria=transformers.StoppingCriteriaList([PerRowStop(width, lengths)]),
            )  # fmt: skip
        assert out.shape[1] == width + lengths.max(), out.shape

    sides = {"shared": ours_shared, "row_wise": ours_row_wise}
    if args.transformers:
        sides["transformers"] = theirs
    log("warm-up (compiles)")
    first_call = {name: timed(fn) for name, fn in sides.items()}
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
        shape=dict(B=B, G=G, num_guided=GUIDED, prompt_lengths=prompt_lengths.tolist(),
                   trace=TRACE_LEN, ell=ELL, budget=BUDGET, decode_phases=args.decode_phases),
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
        compile_s={name: round(first_call[name] - seconds[name], 1) for name in sides},
        seconds={name: [round(s, 2) for s in t] for name, t in times.items()},
        others_cpu_frac=load["others_cpu_frac"],
        machine=machine(torch=torch.__version__, transformers=transformers.__version__,
                        torch_threads=torch.get_num_threads()),  # fmt: skip
    )  # fmt: skip
    result["decoded_over_useful_row_steps"] = round(result["row_steps"]["shared"] / useful, 3)
    if args.transformers:
        result["shared_over_transformers"] = round(seconds["transformers"] / seconds["shared"], 2)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=list(CONFIGS), default="large")
    parser.add_argument("--runs", type=int, default=3, help="timed passes per side (median)")
    parser.add_argument("--decode-phases", type=int, default=4,
                        help="decode phases, i.e. compaction points − 1")  # fmt: skip
    parser.add_argument("--transformers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S s for other processes to idle")  # fmt: skip
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    print(json.dumps(bench(args)), flush=True)


if __name__ == "__main__":
    main()
