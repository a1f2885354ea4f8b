"""The jitted GRPO update vs the same update in transformers + torch, beside the matmul peak.

    python benchmarks/train_step.py                      # ~27M model, 16 × (64 + 192), < 3 min
    python benchmarks/train_step.py --shape=anchors      # the anchors' [64, 32 + 64] batch
    python benchmarks/train_step.py --model=tiny --shape=anchors --no-shared-prompts
    python benchmarks/train_step.py --model=qwen3-0.6b --dtype=bfloat16   # on a GPU
    python benchmarks/train_step.py --guided=0.75 --runs=3   # shared guidance vs row-wise

One update = group advantages → reference forward (β = 0.04) → policy forward + backward
of the clipped loss with k3 KL (μ = 1, seq_mean) → global-norm clip 1.0 → AdamW. Both
sides start from the same random weights (a transformers Qwen3ForCausalLM saved with
save_pretrained and loaded by ours), the reference is a frozen copy, and both see the same
batch. The default model is the anchors' "large" Qwen3 (vocab 4096, hidden 512, mlp 1536,
8 layers, 8 heads, 4 kv heads, head_dim 64, tied: 27.3M parameters), so our numbers sit
beside ../shared/anchors' fwd+bwd. Each side is warmed up, then ours and torch alternate
for `--runs` passes; every time is a median. Prints one JSON line; benchmarks/README.md
explains the fields.

A GRPO batch is G candidates of each prompt, so the rows of a group share their prompt
(4 prompts × G = 4 by default); ours then runs each prompt once per group (train_step.py, same
log-probs), the torch update, like TRL's, once per row. `--no-shared-prompts` gives every
row its own prompt: the same computation on both sides, a pure kernel comparison.

`--guided=α` times our step alone on a G²RPO-A batch (`make_guided_batch`): row-wise
(sampling.share_prefix off), each group's prompt once, and each group's prompt ⊕ guidance
once (the default), alternating; one JSON line with each side's median and the ratios.
"""

import os

# On a GPU torch shares the device: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import copy
import json
import statistics
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from _common import (
    CpuMonitor,
    grpo_forward_flops,
    log,
    machine,
    matmul_peak_gflops,
    timed,
    wait_for_quiet,
)
from flax import nnx

from g2rpo_jax import grpo, guidance, optimization, sharding, train_step
from g2rpo_jax.models import PRESETS, from_pretrained

ANCHORS = {  # ../shared/anchors' sizes
    "tiny": dict(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "large": dict(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        tie_word_embeddings=True,
    ),
}
SHAPES = {  # rows, group size G, prompt length, completion length
    "default": (16, 4, 64, 192),
    "anchors": (64, 8, 32, 64),
}
BETA, LR, CLIP = 0.04, 1e-5, 1.0
GUIDANCE = guidance.GuidanceConfig(ratio=0.0, initial_length=1, max_length=1)


def hf_config(model: str) -> transformers.Qwen3Config:
    if model in ANCHORS:
        dims = ANCHORS[model]
    else:
        c = PRESETS[model]
        dims = dict(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads,
            num_key_value_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            tie_word_embeddings=c.tie_word_embeddings,
        )
    return transformers.Qwen3Config(
        **dims,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )


def make_batch(
    rows: int, group: int, prompt: int, completion: int, vocab: int, shared_prompts: bool = True
) -> dict:
    """Full prompts (one per group of G rows, as GRPO samples them, unless not
    shared_prompts), completions of random length (½ to all of `completion`), random rewards."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(completion // 2, completion + 1, rows)
    completion_mask = np.arange(completion)[None] < lengths[:, None]
    rewards = rng.random(rows).astype(np.float32)
    if shared_prompts:
        prompts = np.repeat(
            rng.integers(1, vocab, (rows // group, prompt), dtype=np.int32), group, 0
        )
    else:
        prompts = rng.integers(1, vocab, (rows, prompt), dtype=np.int32)
    return {
        "prompt_ids": prompts,
        "prompt_mask": np.ones((rows, prompt), bool),
        "completion_ids": np.where(
            completion_mask, rng.integers(1, vocab, (rows, completion)), 0
        ).astype(np.int32),
        "completion_mask": completion_mask,
        "is_guidance": np.zeros((rows, completion), bool),
        "sampler_log_probs": np.zeros((rows, completion), np.float32),
        "rewards": rewards,
        "accuracy": (rewards > 0.5).astype(np.float32),
        "truncated": np.zeros(rows, bool),
        "is_filler": np.zeros(rows, bool),
    }


def make_guided_batch(
    rows: int, group: int, prompt: int, completion: int, vocab: int, ratio: float
) -> dict:
    """`make_batch`'s rows with guidance: the first ceil(α·G) rows of each group open with
    the group's ℓ = ¾·C trace tokens (the paper's 3,072 of 4,096) and generate ¼ to all of
    the C − ℓ left (guidance counts in the budget); the others keep ½ to all of C."""
    batch = make_batch(rows, group, prompt, completion, vocab)
    rng = np.random.default_rng(1)
    ell = 3 * completion // 4
    guided = np.tile(np.arange(group) < guidance.num_guided(ratio, group), rows // group)
    generated = rng.integers((completion - ell) // 4, completion - ell + 1, rows)
    length = np.where(guided, ell + generated, batch["completion_mask"].sum(1))
    mask = np.arange(completion)[None] < length[:, None]
    is_guidance = guided[:, None] & (np.arange(completion)[None] < ell)
    trace = np.repeat(rng.integers(1, vocab, (rows // group, completion)), group, 0)
    ids = np.where(is_guidance, trace, rng.integers(1, vocab, (rows, completion)))
    return batch | {
        "completion_ids": np.where(mask, ids, 0).astype(np.int32),
        "completion_mask": mask,
        "is_guidance": is_guidance,
    }


def guided_comparison(args, graphdef, state, batch: dict, group: int, ratio: float) -> dict:
    """Our step on a guided batch three ways, alternating `args.runs` passes: row-wise,
    each group's prompt once (no guided slots in the step's settings), prompt ⊕ guidance
    once. Returns their median seconds, compile times and first losses."""
    grpo_config = grpo.GRPOConfig(group_size=group, beta=BETA)
    opt_config = optimization.OptimizerConfig(
        total_steps=1000, learning_rate=LR, warmup_steps=0, max_grad_norm=CLIP
    )
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    ell = int(batch["is_guidance"].sum(1).max())
    sides = {  # name: (guidance ratio the step plans with, share_prefix)
        "row_wise": (ratio, False),
        "shared_prompt": (0.0, True),
        "shared_guidance": (ratio, True),
    }
    device_batch = jax.device_put(batch, train_step.batch_sharding(mesh))
    steps, first, compile_s, times = {}, {}, {}, {name: [] for name in sides}
    # Each side its own copy of the state: the steps donate it.
    states = {name: jax.tree.map(jnp.copy, state) for name in sides}

    def run(name):
        states[name], metrics = steps[name](states[name], device_batch)
        jax.block_until_ready(states[name])
        return metrics

    for name, (alpha, share) in sides.items():
        plan = guidance.GuidanceConfig(ratio=alpha, initial_length=ell, max_length=ell)
        steps[name] = train_step.make_train_step(
            graphdef,
            grpo_config,
            opt_config,
            plan,
            mesh,
            state,
            remat=args.remat,
            share_prefix=share,
        )
        log(f"{name}: compile + first step")
        compile_s[name] = timed(lambda n=name: first.update({n: run(n)}))
    for i in range(args.runs):
        log(f"pass {i + 1}/{args.runs}")
        for name in sides:
            times[name].append(timed(lambda n=name: run(n)))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    losses = {name: float(jax.device_get(m["loss"])) for name, m in first.items()}
    return dict(
        bench="train_step_guided",
        ratio=ratio,
        guidance_tokens=ell,
        step_s={name: round(s, 4) for name, s in seconds.items()},
        speedup_vs_row_wise={
            name: round(seconds["row_wise"] / s, 2) for name, s in seconds.items()
        },
        compile_s={name: round(c - seconds[name], 2) for name, c in compile_s.items()},
        first_loss=losses,
        max_loss_diff=max(abs(v - losses["row_wise"]) for v in losses.values()),
    )


def torch_update(policy, reference, optimizer, batch: dict, group: int, device, dtype):
    """The same update in torch: per-token log-probs via log_softmax + gather, ρ with μ = 1,
    k3 KL to the frozen reference, seq_mean, clip 1.0, AdamW. Returns (loss, grad_norm)."""
    ids = torch.from_numpy(np.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1))
    ids = ids.long().to(device)
    targets = ids[:, batch["prompt_ids"].shape[1] :]
    mask = torch.from_numpy(batch["completion_mask"]).float().to(device)
    rewards = torch.from_numpy(batch["rewards"]).to(device).view(-1, group)
    adv = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    adv = adv.view(-1, 1)
    keep = targets.shape[1] + 1  # logits of the last prompt token and every completion token

    def log_probs(model):
        # No attention mask: prompts are unpadded and completions right-padded, so every real
        # token sees exactly the tokens it sees in ours.
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(input_ids=ids, logits_to_keep=keep).logits[:, :-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]

    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        ref_lp = log_probs(reference)
    lp = log_probs(policy)
    ratio = torch.exp(lp - lp.detach())
    pg = -torch.minimum(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv)
    kl = torch.exp(ref_lp - lp) - (ref_lp - lp) - 1
    per_token = pg + BETA * kl
    loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), CLIP)
    optimizer.step()
    return loss.detach(), norm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default="large",
        help="'large', 'tiny' (the anchors' sizes) or a preset (qwen3-0.6b)",
    )
    parser.add_argument("--shape", choices=SHAPES, default="default")
    parser.add_argument("--dtype", default="float32", help="compute dtype (params stay fp32)")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument(
        "--torch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time transformers + torch",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed passes (median)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S s for other processes to idle",
    )
    parser.add_argument(
        "--shared-prompts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the G rows of a group share their prompt (a real GRPO batch)",
    )
    parser.add_argument(
        "--guided",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="time ours only, on guided rows (ratio α): shared guidance vs row-wise",
    )
    args = parser.parse_args()
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    transformers.logging.set_verbosity_error()
    rows, group, prompt, completion = SHAPES[args.shape]

    log("matmul peak")
    peak = matmul_peak_gflops(args.runs, dtype=jnp.dtype(args.dtype))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    config = hf_config(args.model)
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(config)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        model, model_config = from_pretrained(directory, dtype=args.dtype, param_dtype="float32")
    params = int(sum(p.numel() for p in hf.parameters()))
    if not args.torch:
        del hf

    batch = make_batch(rows, group, prompt, completion, config.vocab_size, args.shared_prompts)
    if args.guided:
        batch = make_guided_batch(rows, group, prompt, completion, config.vocab_size, args.guided)
    grpo_config = grpo.GRPOConfig(group_size=group, beta=BETA)
    opt_config = optimization.OptimizerConfig(
        total_steps=1000,
        learning_rate=LR,
        warmup_steps=0,
        final_lr_fraction=1.0,
        max_grad_norm=CLIP,
    )
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state = train_step.init_train_state(model, grpo_config, opt_config, GUIDANCE)
    state = jax.device_put(state, train_step.state_shardings(state, mesh))
    graphdef = nnx.graphdef(model)
    del model  # its buffers are the state's, which the step donates
    if args.guided:
        result = guided_comparison(args, graphdef, state, batch, group, args.guided)
        shape = dict(rows=rows, group=group, prompt=prompt, completion=completion, beta=BETA)
        result |= dict(model=args.model, params=params, dtype=args.dtype, remat=args.remat)
        result |= dict(batch=shape)
        print(json.dumps(result | {"machine": machine()}), flush=True)
        return
    step = train_step.make_train_step(
        graphdef, grpo_config, opt_config, GUIDANCE, mesh, state, remat=args.remat
    )
    device_batch = jax.device_put(batch, train_step.batch_sharding(mesh))
    holder = {"state": state}

    def ours():
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(holder["state"])
        return metrics

    log("ours: compile + first step")
    first_call = timed(lambda: holder.update(first=ours()))
    first = jax.device_get(holder["first"])

    if args.torch:
        policy = hf.to(device).train()
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(
            policy.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )

        def theirs():
            out = torch_update(policy, reference, optimizer, batch, group, device, torch_dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        log("torch: first step")
        torch_first = [float(x) for x in theirs()]

    times = {"ours": [], "torch": []}
    monitor, load = CpuMonitor(), {}
    with monitor.measure(load):
        timed(ours)  # a second warm-up: the first donated call may still settle buffers
        for i in range(args.runs):
            log(f"pass {i + 1}/{args.runs}")
            times["ours"].append(timed(ours))
            if args.torch:
                times["torch"].append(timed(theirs))
    seconds = {k: statistics.median(v) for k, v in times.items() if v}

    tokens = rows * (prompt + completion)
    # 3 forwards' worth for the policy's forward + backward, 1 for the reference forward.
    flops = lambda shared: (
        4 * grpo_forward_flops(model_config, rows, group, prompt, completion, shared)
    )
    step_flops = flops(args.shared_prompts)  # what ours computes
    gflops = step_flops / seconds["ours"] / 1e9
    result = dict(
        bench="train_step",
        model=args.model,
        params=params,
        dtype=args.dtype,
        remat=args.remat,
        batch=dict(rows=rows, group=group, prompt=prompt, completion=completion, beta=BETA),
        step_s=round(seconds["ours"], 4),
        tokens_per_s=round(tokens / seconds["ours"], 1),
        shared_prompts=args.shared_prompts,
        step_gflop=round(step_flops / 1e9, 1),
        per_row_step_gflop=round(flops(False) / 1e9, 1),
        gflops=round(gflops, 1),
        matmul_peak_gflops=round(peak, 1),
        mfu=round(gflops / peak, 3),
        compile_s=round(first_call - seconds["ours"], 2),
        first_loss=float(first["loss"]),
        first_grad_norm=float(first["grad_norm"]),
        ours_seconds=[round(t, 3) for t in times["ours"]],
    )
    if args.torch:
        result.update(
            torch_step_s=round(seconds["torch"], 4),
            torch_tokens_per_s=round(tokens / seconds["torch"], 1),
            torch_gflops=round(flops(False) / seconds["torch"] / 1e9, 1),
            speedup_vs_torch=round(seconds["torch"] / seconds["ours"], 2),
            torch_first_loss=torch_first[0],
            torch_first_grad_norm=torch_first[1],
            torch_seconds=[round(t, 3) for t in times["torch"]],
        )
    result["machine"] = machine(
        torch=torch.__version__,
        transformers=transformers.__version__,
        torch_threads=torch.get_num_threads(),
        torch_device=str(device),
        **load,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
