"""Attention implementations against the xla reference: forward + backward time, agreement.

    python benchmarks/attention.py                                  # CPU: T = 1024, fp32
    python benchmarks/attention.py --tokens=4608 --dtype=bfloat16   # GPU: xla, chunked, cudnn

One Qwen3-0.6B attention (16 query heads, 8 kv heads, H = 128) over `--batch` left-padded
rows of `--tokens` tokens (row i padded by 64·i): value and gradient of Σ o · w (w fixed
random, zero on padding queries) with respect to q, k, v, jitted, for each implementation that runs on this backend
(xla and chunked everywhere, cudnn on NVIDIA GPUs with bf16/fp16, splash on TPU). Each is
warmed up once (compiles), then all alternate for `--runs` passes; times are medians. The
reference is xla in the same run; `max_abs_diff` is the largest gap of the output and of the
gradients to it. Prints one JSON line.
"""

import argparse
import json
import statistics

import jax
import jax.numpy as jnp
from _common import log, machine, timed

from g2rpo_jax.models import attention

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128  # Qwen3-0.6B


def _runs_here(name: str, platform: str, dtype) -> bool:
    if name == "splash":
        return platform == "tpu"
    if name == "cudnn":
        return platform in ("cuda", "gpu") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return True


def _inputs(batch: int, tokens: int, dtype):
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (batch, tokens, HEADS, HEAD_DIM), dtype)
    k, v = (jax.random.normal(key, (batch, tokens, KV_HEADS, HEAD_DIM), dtype) for key in keys[1:3])
    pad = (64 * jnp.arange(batch))[:, None]
    mask = jnp.arange(tokens)[None, :] >= pad  # left padding
    # Padding queries' outputs are never used (each implementation fills them its own way).
    w = jax.random.normal(keys[3], q.shape, jnp.float32) * mask[:, :, None, None]
    return q, k, v, w, mask


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    platform = jax.default_backend()
    q, k, v, w, mask = _inputs(args.batch, args.tokens, dtype)

    def program(name):
        def loss(q, k, v):
            kernel = attention.kernel_for(name, platform, dtype, q.shape[-1])
            o = attention.attend(q, k, v, mask, mask, 0, kernel)
            return jnp.sum(o.astype(jnp.float32) * w), jnp.where(mask[:, :, None, None], o, 0)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    names = [n for n in attention.IMPLEMENTATIONS[1:] if _runs_here(n, platform, dtype)]
    programs = {n: program(n) for n in names}
    outputs = {}
    for name, fn in programs.items():
        log(f"compiling {name}")
        (_, o), grads = jax.block_until_ready(fn(q, k, v))
        outputs[name] = (o, *grads)
    times = {n: [] for n in names}
    for _ in range(args.runs):
        for name, fn in programs.items():
            times[name].append(timed(lambda fn=fn: jax.block_until_ready(fn(q, k, v))))
    reference = outputs["xla"]
    result = {}
    for name in names:
        ms = 1e3 * statistics.median(times[name])
        gap = max(
            float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
            for a, b in zip(outputs[name], reference, strict=True)
        )
        result[name] = {"fwd_bwd_ms": round(ms, 3), "max_abs_diff": gap}
    base_ms = result["xla"]["fwd_bwd_ms"]
    for name in names:
        result[name]["speedup_vs_xla"] = round(base_ms / result[name]["fwd_bwd_ms"], 3)
    print(
        json.dumps(
            {
                "bench": "attention",
                "machine": machine(),
                "platform": platform,
                "batch": args.batch,
                "tokens": args.tokens,
                "dtype": args.dtype,
                "heads": [HEADS, KV_HEADS, HEAD_DIM],
                "runs": args.runs,
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
