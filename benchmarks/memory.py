"""Peak memory of train_step per device, from the compiler, for real model sizes.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory.py
    python benchmarks/memory.py --presets=qwen3-0.6b --mesh=1,8,1 --devices=8
    python benchmarks/memory.py --validate          # predicted vs measured, small models
    python benchmarks/memory.py --rollout           # the rollout's KV cache, row-wise vs shared

Nothing is allocated: the train state and the batch are jax.ShapeDtypeStructs with their
shardings, and `jax.jit(train_step).lower(...).compile().memory_analysis()` reports the
buffers of one device's program. Peak per device = arguments + outputs − donated aliases +
temporaries (the compiler's buffer assignment; the runtime adds its own few MB).

Paper shapes (SPEC §7): G = 12, prompt 512, completion 4096. The batch here is
`--prompts` × G rows split over the data-parallel axes (data × fsdp), and the train step
accumulates gradients over `--micro-batches` (OptimizerConfig.micro_batches), so one
device runs rows / (data·fsdp) / micro-batches rows at a time (default: 96 rows, 8
devices, 12 micro-batches → 1 row of 4,608 tokens per device per micro-batch).
Dtype policy (`--param-dtype`, `--dtype`): fp32 weights and Adam moments with bf16 compute
by default (SPEC §7 "bf16 compute"); `--param-dtype=bfloat16` stores weights (and Adam
moments, which follow them) in bf16.

`--validate` compiles and *runs* the step on this host for small models and compares the
predicted peak with the measured one: the growth of the process's peak resident memory
(VmHWM, reset before the step through /proc/self/clear_refs) over its resident memory with
the state and batch already in place, plus the donated state the step reuses.
Prints a markdown table on stderr and one JSON line on stdout.

`--lora-rank=16` (with e.g. `--param-dtype=bfloat16`): LoRA rows, adapters on every
projection (fp32, with their Adam moments), the base frozen in the param dtype and the
reference the base itself (no copy).

`--attention` (default chunked): the full-sequence attention (models/attention.py). "xla"
holds B·N·T² scores per layer; "chunked" is linear in T, and stands in for splash and cuDNN,
whose kernels keep the same residuals (q, k, v, the output and one log-sum-exp per row) but
cannot be compiled for this host.

`--rollout`: the rollout's KV cache per device at the paper's shapes (B prompts × G, ℓ,
the completion budget counting guidance), from the cache's shapes (models/kv_cache.py):
row-wise, every row holds prompt ⊕ guidance (the sampler's buckets: P and L the next
powers of two) plus its generated slots; shared (sampling.share_prefix), each group's
prefix is held once and each row holds only its generated slots (models/group_cache.py).
Groups and rows split over data × fsdp; the compute dtype's bytes per value.

`--hidden-states` compares the attention implementations on what they change alone: the
compiled temporaries of forward + backward of the hidden states (2 layers of the first
preset, `--layers` to change, one row of --prompt + --completion tokens, remat, fp32),
beside the same program with attention removed (the rest of the layers' floor).
"""

import argparse
import os
import sys

# XLA:CPU's default scheduler orders for concurrency and, with it, runs every layer's
# rematerialized forward before the backward, so remat saves nothing; the memory-optimized
# one orders as a memory-aware accelerator scheduler would (remat then pays off).
SCHEDULER = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def _early_flags(default_devices: int = 8) -> None:
    """--devices (simulated host devices) and the scheduler must be XLA flags before jax loads."""
    count = default_devices
    for arg in sys.argv[1:]:
        if arg.startswith("--devices="):
            count = int(arg.split("=", 1)[1])
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={count}"
    if "xla_cpu_scheduler_type" not in flags:
        flags += f" {SCHEDULER}"
    os.environ["XLA_FLAGS"] = flags.strip()


_early_flags()


def _scheduler() -> str:
    return SCHEDULER.split("=")[1] if SCHEDULER in os.environ["XLA_FLAGS"] else "as set"


import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import log, machine  # noqa: E402
from flax import nnx  # noqa: E402

from g2rpo_jax import grpo, guidance, optimization, sampling, sharding, train_step  # noqa: E402
from g2rpo_jax.models import ModelConfig, abstract_model, attention, preset  # noqa: E402
from g2rpo_jax.models.config import LoraConfig  # noqa: E402

GUIDANCE = guidance.GuidanceConfig(ratio=0.75, initial_length=3072, max_length=3072)
GIB = 2**30


def abstract_state(config: ModelConfig, grpo_config, optimizer, mesh):
    """(graphdef, TrainState of ShapeDtypeStructs carrying their shardings)."""
    graphdef, params = nnx.split(abstract_model(config))
    state = jax.eval_shape(
        lambda p: train_step.init_train_state(
            nnx.merge(graphdef, p), grpo_config, optimizer, GUIDANCE
        ),
        params,
    )
    shardings = train_step.state_shardings(state, mesh)
    return graphdef, jax.tree.map(
        lambda s, sub: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sub
        ),
        shardings,
        state,
    )


def abstract_batch(rows: int, prompt: int, completion: int, mesh) -> dict:
    s = train_step.batch_sharding(mesh)
    spec = {
        "prompt_ids": ((rows, prompt), jnp.int32),
        "prompt_mask": ((rows, prompt), jnp.bool_),
        "completion_ids": ((rows, completion), jnp.int32),
        "completion_mask": ((rows, completion), jnp.bool_),
        "is_guidance": ((rows, completion), jnp.bool_),
        "sampler_log_probs": ((rows, completion), jnp.float32),
        "rewards": ((rows,), jnp.float32),
        "accuracy": ((rows,), jnp.float32),
        "truncated": ((rows,), jnp.bool_),
        "is_filler": ((rows,), jnp.bool_),
    }
    return {k: jax.ShapeDtypeStruct(shape, dt, sharding=s) for k, (shape, dt) in spec.items()}


def analyse(
    config: ModelConfig,
    beta: float,
    rows: int,
    group: int,
    prompt: int,
    completion: int,
    micro: int,
    mesh,
    remat: bool = False,
) -> dict:
    """Compile train_step on abstract inputs; the per-device memory analysis in bytes."""
    grpo_config = grpo.GRPOConfig(group_size=group, beta=beta)
    optimizer = optimization.OptimizerConfig(total_steps=1000, micro_batches=micro)
    graphdef, state = abstract_state(config, grpo_config, optimizer, mesh)
    step = train_step.make_train_step(
        graphdef, grpo_config, optimizer, GUIDANCE, mesh, state, remat=remat
    )
    batch = abstract_batch(rows, prompt, completion, mesh)
    start = time.perf_counter()
    # A run compiles the step for each forward its batches allow: report the largest.
    forwards = range(len(step.forwards(batch)))
    analyses = [step.program(f).lower(state, batch).compile().memory_analysis() for f in forwards]
    seconds = time.perf_counter() - start
    m = max(analyses, key=_peak)
    peak = _peak(m)
    return dict(
        arguments=m.argument_size_in_bytes,
        outputs=m.output_size_in_bytes,
        aliased=m.alias_size_in_bytes,
        temp=m.temp_size_in_bytes,
        peak=peak,
        compile_s=round(seconds, 1),
    )


def _peak(m) -> int:
    """Bytes a device holds at once: arguments and outputs (less the donated ones) and temps."""
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )


_FIELDS = ("arguments", "outputs", "aliased", "temp", "peak")


def estimate(config: ModelConfig, full: bool, *args, remat: bool = False) -> dict:
    """`analyse` at the real depth, or at 2 and 4 layers extrapolated linearly to it.

    Every buffer the step holds is either per layer (weights, their gradients and moments,
    activations kept for the backward) or not (embedding, LM head, one layer's working set),
    so each byte count is a + b·layers; checked against full compiles of Qwen3-0.6B
    (28 layers) to within 0.5% (benchmarks/README.md).
    """
    if full or config.num_layers <= 4:
        return analyse(config, *args, remat=remat) | {"compiled_layers": [config.num_layers]}
    low, high = (analyse(config.replace(num_layers=n), *args, remat=remat) for n in (2, 4))
    per_layer = {k: (high[k] - low[k]) / 2 for k in _FIELDS}
    out = {k: int(high[k] + per_layer[k] * (config.num_layers - 4)) for k in _FIELDS}
    return out | {
        "compile_s": round(low["compile_s"] + high["compile_s"], 1),
        "compiled_layers": [2, 4],
    }


def hidden_states_temp(config: ModelConfig, tokens: int) -> dict:
    """GiB of compiled temporaries of value-and-gradient of Σ hidden states, one row, remat."""
    graphdef, params = nnx.split(abstract_model(config, "cpu"))

    def loss(params, ids, mask):
        model = nnx.merge(graphdef, params)
        hidden, _ = model.hidden_states(ids, jnp.cumsum(mask, 1) - 1, mask, remat=True)
        return jnp.sum(hidden.astype(jnp.float32))

    row = lambda dt: jax.ShapeDtypeStruct((1, tokens), dt)
    compiled = jax.jit(jax.grad(loss)).lower(params, row(jnp.int32), row(jnp.bool_)).compile()
    return {"temp_gib": round(compiled.memory_analysis().temp_size_in_bytes / GIB, 3)}


def compare_attention(config: ModelConfig, tokens: int) -> list[dict]:
    """`hidden_states_temp` per implementation that compiles here, and without attention."""
    rows = [
        dict(attention=name, **hidden_states_temp(config.replace(attention=name), tokens))
        for name in ("xla", "chunked")
    ]
    attend = attention.attend
    # The floor: every other buffer of the layers; q·Σk·Σv keeps k and v in the graph.
    attention.attend = lambda q, k, v, *_, **__: q * jnp.sum(k[:, :1]) * jnp.sum(v[:, :1])
    try:
        rows.append(dict(attention="none (floor)", **hidden_states_temp(config, tokens)))
    finally:
        attention.attend = attend
    return rows


def rollout_cache(
    config: ModelConfig, prompts: int, G: int, prompt: int, ell: int, budget: int, dp: int
) -> dict:
    """The rollout KV cache per device in GiB, row-wise vs shared (the final decode phase,
    when every slot exists)."""
    P, L = sampling.bucket(prompt, 16), sampling.bucket(ell, 16)
    generated = budget - 1  # slots the decode writes (the last token is never run)
    per_slot = config.num_layers * 2 * config.num_kv_heads * config.head_dim
    per_slot *= jnp.dtype(config.compute_dtype).itemsize
    groups, rows = -(-prompts // dp), -(-prompts * G // dp)
    row_wise = rows * (P + L + generated) * per_slot
    shared = (groups * (P + L) + rows * generated) * per_slot
    return dict(
        rows_per_device=rows,
        row_wise_gib=round(row_wise / 2**30, 2),
        shared_gib=round(shared / 2**30, 2),
        ratio=round(row_wise / shared, 2),
    )


def table(rows: list[dict]) -> str:
    head = (
        "| model | attention | remat | β (reference) | state GiB | temp GiB | "
        "peak GiB / device |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    label = lambda r: (
        r["model"]
        + (f" LoRA r={r['lora_rank']}, {r['param_dtype']} base" if r.get("lora_rank") else "")
    )
    held = lambda r: "no copy" if r.get("lora_rank") else "yes"  # LoRA: adapters zeroed
    lines = [
        f"| {label(r)} | {r['attention']} | {'yes' if r['remat'] else 'no'} | {r['beta']} "
        f"({held(r) if r['beta'] > 0 else 'no'}) | {r['arguments'] / GIB:.2f} | "
        f"{r['temp'] / GIB:.2f} | {r['peak'] / GIB:.2f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


# --- Validation: predicted vs measured on this host ----------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def validate(
    name: str, config: ModelConfig, rows: int, group: int, prompt: int, completion: int, beta: float
) -> dict:
    """Run the step on one device; compare the measured peak growth with the compiler's."""
    from g2rpo_jax.models import Qwen

    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    grpo_config = grpo.GRPOConfig(group_size=group, beta=beta)
    optimizer = optimization.OptimizerConfig(total_steps=1000)
    predicted = analyse(config, beta, rows, group, prompt, completion, 1, mesh)
    model = Qwen(config, rngs=nnx.Rngs(0))
    graphdef = nnx.graphdef(model)
    state = train_step.init_train_state(model, grpo_config, optimizer, GUIDANCE)
    del model
    step = train_step.make_train_step(graphdef, grpo_config, optimizer, GUIDANCE, mesh, state)
    rng = np.random.default_rng(0)
    batch = {
        "prompt_ids": rng.integers(1, config.vocab_size, (rows, prompt), dtype=np.int32),
        "prompt_mask": np.ones((rows, prompt), bool),
        "completion_ids": rng.integers(1, config.vocab_size, (rows, completion), dtype=np.int32),
        "completion_mask": np.ones((rows, completion), bool),
        "is_guidance": np.zeros((rows, completion), bool),
        "sampler_log_probs": np.zeros((rows, completion), np.float32),
        "rewards": rng.random(rows).astype(np.float32),
        "accuracy": np.zeros(rows, np.float32),
        "truncated": np.zeros(rows, bool),
        "is_filler": np.zeros(rows, bool),
    }
    batch = jax.device_put(batch)
    # Compile and run once, so code, thread pools and allocator arenas exist before measuring.
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    del metrics
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    measured = (_status_kib("VmHWM") - before) * 1024
    # The donated state was resident before the step and is reused for the outputs, so the
    # step's peak beyond what was resident is its temporaries plus unaliased outputs.
    predicted_growth = predicted["peak"] - predicted["arguments"]
    return dict(
        model=name,
        rows=rows,
        tokens=prompt + completion,
        beta=beta,
        predicted_temp_plus_outputs=predicted_growth,
        measured_rss_growth=measured,
        ratio=round(measured / max(predicted_growth, 1), 3),
    )


SMALL = {
    "tiny": dict(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
    ),
    "large": dict(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="qwen3-0.6b,qwen3-1.7b,qwen3-8b")
    parser.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor")
    parser.add_argument("--devices", type=int, default=8, help="simulated host devices")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (B)")
    parser.add_argument("--group", type=int, default=12, help="G, candidates per prompt")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--completion", type=int, default=4096)
    parser.add_argument("--micro-batches", type=int, default=12)
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype")
    parser.add_argument("--param-dtype", default="float32")
    parser.add_argument("--remat", default="no,yes")
    parser.add_argument("--betas", default="0.04,0")
    parser.add_argument("--layers", type=int, default=0, help="override num_layers (0: preset)")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rows (0: full fine-tuning)")
    parser.add_argument(
        "--attention",
        default="chunked",
        choices=attention.IMPLEMENTATIONS[1:3],
        help="full-sequence attention (chunked also models splash / cuDNN)",
    )
    parser.add_argument(
        "--hidden-states",
        action="store_true",
        help="attention implementations compared on 2 layers' temporaries",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="compile every layer (slow: ~2 min per 28-layer model on 2 cores) "
        "instead of extrapolating from 2 and 4 layers",
    )
    parser.add_argument("--validate", action="store_true", help="predicted vs measured, small")
    parser.add_argument("--rollout", action="store_true", help="the rollout's KV cache")
    parser.add_argument("--ell", type=int, default=3072, help="ℓ, guidance tokens (--rollout)")
    args = parser.parse_args()

    if args.rollout:
        mesh_shape = tuple(int(x) for x in args.mesh.split(","))
        dp = mesh_shape[0] * mesh_shape[1]
        results = []
        for name in args.presets.split(","):
            config = preset(name, dtype=args.dtype, param_dtype=args.param_dtype)
            cache = rollout_cache(
                config, args.prompts, args.group, args.prompt, args.ell, args.completion, dp
            )
            results.append(dict(model=name, **cache))
            log(f"{name}: {cache}")
        shape = dict(
            prompts=args.prompts,
            G=args.group,
            prompt=args.prompt,
            ell=args.ell,
            budget=args.completion,
            mesh=args.mesh,
            dtype=args.dtype,
        )
        print(json.dumps(dict(bench="memory_rollout", shape=shape, results=results)))
        return

    if args.validate:
        results = []
        for name, rows, prompt, completion in (("tiny", 64, 32, 64), ("large", 16, 64, 192)):
            config = ModelConfig(
                model_type="qwen3",
                qk_norm=True,
                head_dim=64,
                tie_word_embeddings=True,
                **SMALL[name],
            )
            log(f"validate {name}")
            results.append(
                validate(name, config, rows, 8 if name == "tiny" else 4, prompt, completion, 0.04)
            )
            log(json.dumps(results[-1]))
        print(json.dumps(dict(bench="memory_validate", results=results, machine=machine())))
        return

    if args.hidden_states:
        name = args.presets.split(",")[0]
        config = preset(name, dtype="float32", param_dtype="float32")
        config = config.replace(num_layers=args.layers or 2)
        tokens = args.prompt + args.completion
        results = compare_attention(config, tokens)
        log("\n".join(f"{r['attention']}: {r['temp_gib']} GiB" for r in results))
        print(
            json.dumps(
                dict(
                    bench="memory_attention",
                    model=name,
                    layers=config.num_layers,
                    tokens=tokens,
                    dtype=config.dtype,
                    remat=True,
                    results=results,
                    scheduler=_scheduler(),
                    machine=machine(),
                )
            )
        )
        return

    mesh = sharding.make_mesh(tuple(int(x) for x in args.mesh.split(",")))
    rows = args.prompts * args.group
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    results = []
    for name in args.presets.split(","):
        for remat in (x == "yes" for x in args.remat.split(",")):
            config = preset(name, dtype=args.dtype, param_dtype=args.param_dtype)
            if args.layers:
                config = config.replace(num_layers=args.layers)
            config = config.replace(lora=LoraConfig(rank=args.lora_rank), attention=args.attention)
            for beta in (float(b) for b in args.betas.split(",")):
                log(f"{name} remat={remat} beta={beta}")
                r = estimate(
                    config,
                    args.full,
                    beta,
                    rows,
                    args.group,
                    args.prompt,
                    args.completion,
                    args.micro_batches,
                    mesh,
                    remat=remat,
                )
                results.append(
                    dict(
                        model=name,
                        attention=args.attention,
                        remat=remat,
                        beta=beta,
                        lora_rank=args.lora_rank,
                        param_dtype=args.param_dtype,
                        **r,
                    )
                )
                log(f"  peak {r['peak'] / GIB:.2f} GiB (compile {r['compile_s']} s)")
    log(table(results))
    print(
        json.dumps(
            dict(
                bench="memory",
                mesh=dict(mesh.shape),
                rows=rows,
                rows_per_device_micro_batch=rows / dp / args.micro_batches,
                tokens_per_row=args.prompt + args.completion,
                micro_batches=args.micro_batches,
                dtype=args.dtype,
                param_dtype=args.param_dtype,
                scheduler=_scheduler(),
                results=results,
                table=table(results),
                machine=machine(),
            )
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
