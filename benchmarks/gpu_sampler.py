"""Sampler throughput on a GPU: ours vs transformers `generate`, Qwen3-0.6B-sized, bf16.

    python benchmarks/gpu_sampler.py                       # batch 256, 64 → +512 tokens
    python benchmarks/gpu_sampler.py --batch=64 --new-tokens=128 --runs=2   # a quick look

One random Qwen3-0.6B-architecture transformers model (random weights, bf16), saved and
loaded by ours, so both sides sample from the same weights on the same device. Work per
call: `--batch` prompts × `--prompt` random tokens → `--new-tokens` new tokens,
temperature 1 over the full vocabulary (transformers: top_k=0), EOS unreachable. Each side
is warmed up once (ours compiles), then ours and transformers alternate for `--runs`
passes; every number is a median. Without a CUDA torch the transformers side is skipped and
says so. Prints one JSON line (fields as benchmarks/sampler.py).
"""

import os

# Both frameworks share one GPU: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import json
import statistics
import tempfile

import jax
import numpy as np
import torch
import transformers
from _common import log, machine, timed
from flax import nnx

from g2rpo_jax.data.tokenization import TokenIds
from g2rpo_jax.models import PRESETS, from_pretrained
from g2rpo_jax.sampling import Sampler, SamplingConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen3-0.6b")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transformers", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    c = PRESETS[args.model]
    V = c.vocab_size
    hf_config = transformers.Qwen3Config(
        vocab_size=V,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        tie_word_embeddings=c.tie_word_embeddings,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        max_position_embeddings=c.max_position_embeddings,
        attention_bias=False,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    log("building the random model")
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(hf_config).to(torch.bfloat16).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        model, _ = from_pretrained(directory, dtype="bfloat16", param_dtype="bfloat16")
    graphdef, params = nnx.split(model)
    params = jax.device_put(params)
    del model

    rng = np.random.default_rng(0)
    B, P, N = args.batch, args.prompt, args.new_tokens
    prompts = rng.integers(1, V - 1, (B, P), dtype=np.int32)
    sampler = Sampler(graphdef, SamplingConfig(max_completion_length=N), TokenIds())
    calls = iter(range(1_000_000))
    no_guidance = (np.zeros((B, 0), np.int32), np.zeros(B, np.int32))

    def ours():
        out = sampler(params, prompts, np.full(B, P), *no_guidance, jax.random.key(next(calls)))
        return jax.block_until_ready(out)

    cuda = torch.cuda.is_available()
    run_theirs = args.transformers and cuda
    if run_theirs:
        hf = hf.to("cuda")
        prompts_pt = torch.from_numpy(prompts.astype(np.int64)).to("cuda")

    def theirs():
        with torch.inference_mode():
            out = hf.generate(
                input_ids=prompts_pt,
                attention_mask=torch.ones_like(prompts_pt),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_new_tokens=N,
                max_new_tokens=N,
                pad_token_id=0,
                eos_token_id=None,
            )
        torch.cuda.synchronize()
        assert out.shape == (B, P + N), out.shape

    log("ours: compile + first call")
    first = timed(ours)
    assert int(np.asarray(ours().num_generated).min()) == N  # EOS unreachable
    if run_theirs:
        log("transformers: first call")
        theirs()
    times = {"ours": [], "theirs": []}
    for i in range(args.runs):
        log(f"pass {i + 1}/{args.runs}")
        times["ours"].append(timed(ours))
        if run_theirs:
            times["theirs"].append(timed(theirs))
    seconds = {k: statistics.median(v) for k, v in times.items() if v}
    tokens = B * N
    result = dict(
        bench="gpu_sampler",
        model=args.model,
        dtype="bfloat16",
        batch=B,
        prompt=P,
        new_tokens=N,
        ours_tokens_per_s=round(tokens / seconds["ours"], 1),
        compile_s=round(first - seconds["ours"], 2),
        ours_seconds=[round(t, 3) for t in times["ours"]],
    )
    if run_theirs:
        result.update(
            transformers_tokens_per_s=round(tokens / seconds["theirs"], 1),
            ratio=round(seconds["theirs"] / seconds["ours"], 2),
            transformers_seconds=[round(t, 3) for t in times["theirs"]],
        )
    else:
        result["transformers_skipped"] = "no CUDA torch" if not cuda else "--no-transformers"
    result["machine"] = machine(
        torch=torch.__version__, torch_cuda=cuda, transformers=transformers.__version__
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
