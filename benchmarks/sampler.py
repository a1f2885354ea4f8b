"""Sampler throughput: ours vs transformers `generate`, beside the machine's matmul peak.

    python benchmarks/sampler.py                    # tiny, with the guided batch
    python benchmarks/sampler.py --config all       # tiny, then large: < 3 minutes on 2 cores
    python benchmarks/sampler.py --config large --no-guided --runs 9 --wait-quiet 300
    python benchmarks/sampler.py --config large --bf16-weights --compute-dtype bfloat16

Per config, one random Qwen3-architecture transformers model (the sizes of
../shared/anchors) is saved to a temp dir and loaded by `from_pretrained`, so both sides
sample from the same weights. Work per call: 64 prompts × 32 random tokens → 64 new
tokens, temperature 1, full vocabulary, EOS unreachable. The guided batch gives half the
rows (α = 1/2) ℓ = 32 tokens of a random trace, which count toward the 64-token budget.
Each program is compiled / warmed up once, then ours and transformers alternate for
`--runs` passes so both see the same machine load; every time is a median. With
`--bf16-weights` the unguided batch is also timed reading a bfloat16 copy of the weights
(`sampling.param_dtype=bfloat16`); `--compute-dtype` is ours' compute dtype. Prints one
JSON line per config; benchmarks/README.md explains the fields.
"""

import argparse
import json
import os
import statistics
import tempfile

import jax
import numpy as np
import torch
import transformers
from _common import CpuMonitor, log, machine, matmul_peak_gflops, timed, wait_for_quiet
from flax import nnx

from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models import from_pretrained
from g2rpo_jax.sampling import Sampler, SamplingConfig, rollout_params

CONFIGS = {
    "tiny": dict(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    ),
    "large": dict(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
    ),
}
BATCH, PROMPT_LEN, NEW_TOKENS = 64, 32, 64
GUIDED_ROWS, GUIDANCE_LEN = BATCH // 2, 32  # α = 1/2 of the rows get ℓ = 32 trace tokens


def sampler_flops(hf_config, prompt_len: int, new_tokens: int) -> float:
    """Model FLOPs of one row of a sampler call (matmuls only; benchmarks/README.md).

    Each token through the layers costs 2 · (non-embedding matmul params) plus attention
    4 · layers · N · H · (keys it may see: the causal count, not the cache slots we read);
    each sampled token also costs the LM head 2 · V · D. The prefill runs `prompt_len`
    tokens, the decode `new_tokens - 1` (the first comes from the prefill's last logits).
    """
    c = hf_config
    D, F, N, K, H = (
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    )
    layer_params = D * (N + 2 * K) * H + N * H * D + 3 * D * F
    tokens = prompt_len + new_tokens - 1
    keys_seen = tokens * (tokens + 1) // 2  # token t (from 0) sees t + 1 keys
    return (
        tokens * 2 * c.num_hidden_layers * layer_params
        + 4 * c.num_hidden_layers * N * H * keys_seen
        + new_tokens * 2 * c.vocab_size * D
    )


def wall_and_cpu_s(fn) -> tuple[float, float]:
    """Seconds fn takes, and the CPU seconds this process spends in it (all threads)."""
    cpu = sum(os.times()[:2])
    wall = timed(fn)
    return wall, sum(os.times()[:2]) - cpu


def random_qwen3(name: str, **dtypes) -> tuple:
    """A seeded random transformers Qwen3 of CONFIGS[name] in eval mode, and ours loaded from
    its saved checkpoint (`dtypes`: from_pretrained's dtype / param_dtype); both sides of a
    benchmark then hold the same weights."""
    hf_config = transformers.Qwen3Config(
        **CONFIGS[name],
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        max_position_embeddings=4096,
        attention_bias=False,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(hf_config).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        model, _ = from_pretrained(directory, **dtypes)
    return hf, model


def bench(name: str, runs: int, guided: bool, bf16: bool, compute_dtype: str) -> dict:
    hf, model = random_qwen3(name, dtype=compute_dtype, param_dtype="float32")
    hf_config = hf.config
    graphdef, params = nnx.split(model)
    params = jax.device_put(params)

    rng = np.random.default_rng(0)
    V = hf_config.vocab_size
    prompts = rng.integers(1, V - 1, (BATCH, PROMPT_LEN), dtype=np.int32)
    prompt_lengths = np.full(BATCH, PROMPT_LEN, np.int32)
    traces = rng.integers(1, V - 1, (BATCH, NEW_TOKENS), dtype=np.int32)
    unguided = np.zeros(BATCH, np.int32)
    half_guided = np.where(np.arange(BATCH) < GUIDED_ROWS, GUIDANCE_LEN, 0).astype(np.int32)
    sampler = Sampler(graphdef, SamplingConfig(max_completion_length=NEW_TOKENS), TokenIds())
    seeds = iter(range(1 << 30))

    def ours(ells, weights=params):
        out = sampler(weights, prompts, prompt_lengths, traces, ells, jax.random.key(next(seeds)))
        return jax.block_until_ready(out)

    prompts_pt = torch.from_numpy(prompts.astype(np.int64))

    def theirs():
        with torch.inference_mode():
            out = hf.generate(
                input_ids=prompts_pt,
                attention_mask=torch.ones_like(prompts_pt),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_new_tokens=NEW_TOKENS,
                max_new_tokens=NEW_TOKENS,
                pad_token_id=0,
                eos_token_id=None,
            )
        assert out.shape == (BATCH, PROMPT_LEN + NEW_TOKENS), out.shape

    log(f"[{name}] matmul peak, then warm-up (compiles)")
    peak = matmul_peak_gflops(runs)
    first_call = {"ours": timed(lambda: ours(unguided))}
    assert int(np.asarray(ours(unguided).num_generated).min()) == NEW_TOKENS  # no EOS
    if guided:
        first_call["guided"] = timed(lambda: ours(half_guided))
    if bf16:
        bf16_config = SamplingConfig(max_completion_length=NEW_TOKENS, param_dtype="bfloat16")
        cast = lambda: jax.block_until_ready(rollout_params(params, bf16_config))  # noqa: E731
        first_call["cast"] = timed(cast)
        cast_s = statistics.median(timed(cast) for _ in range(runs))
        bf16_params = cast()
        first_call["bf16"] = timed(lambda: ours(unguided, bf16_params))
    theirs()
    keys = ("ours", "theirs", *(["guided"] if guided else []), *(["bf16"] if bf16 else []))
    times, cpu_times = {key: [] for key in keys}, {key: [] for key in keys}
    calls = {
        "ours": lambda: ours(unguided),
        "theirs": theirs,
        "bf16": lambda: ours(unguided, bf16_params),
        "guided": lambda: ours(half_guided),
    }
    load = {}
    with CpuMonitor().measure(load):
        for i in range(runs):
            log(f"[{name}] pass {i + 1}/{runs}")
            for key in keys:
                wall, cpu = wall_and_cpu_s(calls[key])
                times[key].append(wall)
                cpu_times[key].append(cpu)
    seconds = {key: statistics.median(t) for key, t in times.items()}
    gflops = BATCH * sampler_flops(hf_config, PROMPT_LEN, NEW_TOKENS) / seconds["ours"] / 1e9
    result = dict(
        config=name,
        params=sum(p.numel() for p in hf.parameters()),
        ours_tokens_per_s=round(BATCH * NEW_TOKENS / seconds["ours"], 1),
        transformers_tokens_per_s=round(BATCH * NEW_TOKENS / seconds["theirs"], 1),
        ratio=round(seconds["theirs"] / seconds["ours"], 2),
        ours_gflops=round(gflops, 1),
        matmul_peak_gflops=round(peak, 1),
        fraction_of_peak=round(gflops / peak, 3),
        compile_s=round(first_call["ours"] - seconds["ours"], 2),
    )
    if guided:
        generated = int(np.sum(NEW_TOKENS - half_guided))  # guidance counts in the budget
        result.update(
            guided_tokens_per_s=round(generated / seconds["guided"], 1),
            guided_compile_s=round(first_call["guided"] - seconds["guided"], 2),
        )
    if bf16:
        weight_bytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
        result.update(
            bf16_tokens_per_s=round(BATCH * NEW_TOKENS / seconds["bf16"], 1),
            bf16_speedup=round(seconds["ours"] / seconds["bf16"], 2),
            bf16_cast_s=round(cast_s, 4),
            weight_mib=round(weight_bytes(params) / 2**20, 2),
            bf16_copy_mib=round(weight_bytes(bf16_params) / 2**20, 2),
        )
    result.update(
        compute_dtype=compute_dtype,
        seconds={key: [round(s, 3) for s in t] for key, t in times.items()},
        cpu_seconds={key: round(statistics.median(t), 3) for key, t in cpu_times.items()},
        others_cpu_frac=load["others_cpu_frac"],
        machine=machine(
            torch=torch.__version__,
            transformers=transformers.__version__,
            torch_threads=torch.get_num_threads(),
        ),
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="tiny")
    parser.add_argument(
        "--guided",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the guided batch (α = 1/2, ℓ = 32)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed passes (median)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each config, wait up to S s for other processes to idle",
    )
    parser.add_argument(
        "--bf16-weights",
        action="store_true",
        help="also time the unguided batch on a bfloat16 copy of the weights",
    )
    parser.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    for name in CONFIGS if args.config == "all" else [args.config]:
        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet)
        result = bench(name, args.runs, args.guided, args.bf16_weights, args.compute_dtype)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
