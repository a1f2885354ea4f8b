"""The GRPO train step: log-probs of the sampled rows, the loss, the optimizer update, jitted
over the device mesh (SPEC §3, §4); the advantages and the loss are g2rpo_jax/grpo.py.

Shapes: B prompts, G candidates per prompt (the group), T completion length, R = B·G rows,
prompt-major (candidate j of prompt b is row b*G + j).
"""

import functools
import math
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from g2rpo_jax import guidance, sharding
from g2rpo_jax.advantages import group_advantages, group_ties
from g2rpo_jax.grpo import (
    Aggregation,
    GRPOConfig,
    loss_rows,
    policy_loss,
    rollout_metrics,
    skip_update,
    token_loss_mask,
)
from g2rpo_jax.models.log_probs import TokenStats, token_log_probs, token_stats
from g2rpo_jax.models.qwen import KVCache, LoraParam, Qwen, init_cache, positions_from_mask
from g2rpo_jax.optimization import OptimizerConfig, learning_rate_schedule, make_optimizer

# --- The train step ------------------------------------------------------------------------

# Per-row arrays a train step reads: the sampler's outputs and the host's rewards.
# sampler_log_probs: [R, C] float32, the sampler's log-probs of the completion tokens (at
# its temperature); truncated: [R] bool, the sampler stopped the row at its length budget
# (no EOS); is_filler: [R] bool, a row of a tied group kept only to fill a filtered batch.
# A row is guided when it received trace tokens (any `is_guidance`): not every planned slot
# does (a row without a trace, ℓ = 0), so the plan alone would misattribute them.
BATCH_FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask",
                "is_guidance", "sampler_log_probs", "rewards", "accuracy", "truncated",
                "is_filler")  # fmt: skip


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and changes, as one pytree (checkpointed but `frozen`).

    step: completed optimizer steps (int32). params: the trained weights (under LoRA the
    adapters only). ref_params: the frozen reference policy, None when β = 0 (no memory, no
    forward) or under LoRA (the reference is the base: the adapters' output zeroed).
    controller: ℓ state. frozen: under LoRA the base weights, not differentiated, not in the
    optimizer state and not checkpointed (`checkpointed`); None for full fine-tuning.
    """

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    ref_params: nnx.State | None
    controller: guidance.ControllerState
    frozen: nnx.State | None = None

    def policy(self) -> nnx.State:
        """The whole model's weights, what the sampler and evaluation run."""
        return _whole(self.params, self.frozen)

    def reference(self) -> nnx.State | None:
        """The reference policy's weights (β > 0): under LoRA the base, as adapters with
        A = B = 0 add exactly nothing; no copy of the base is kept."""
        if self.frozen is None:
            return self.ref_params
        return _whole(jax.tree.map(jnp.zeros_like, self.params), self.frozen)

    def checkpointed(self) -> "TrainState":
        """What a checkpoint holds: all but the frozen base (read again from its location)."""
        return self.replace(frozen=None)


def _whole(params: nnx.State, frozen: nnx.State | None) -> nnx.State:
    return params if frozen is None else nnx.merge_state(params, frozen)


def init_train_state(
    model: Qwen,
    grpo: GRPOConfig,
    optimizer: OptimizerConfig,
    guidance_config: guidance.GuidanceConfig,
) -> TrainState:
    """A LoRA model (config.lora.rank > 0) trains its adapters only, on its frozen base."""
    lora = model.config.lora.rank > 0
    params = nnx.state(model, LoraParam if lora else nnx.Param)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(optimizer).init(params),
        # A copy, so donating the policy's buffers never frees the reference's.
        ref_params=jax.tree.map(jnp.copy, params) if grpo.beta > 0 and not lora else None,
        controller=guidance.init_controller(guidance_config),
        frozen=nnx.state(model, nnx.All(nnx.Param, nnx.Not(LoraParam))) if lora else None,
    )


# What a forward takes of each completion token from the hidden state that predicts it:
# head(model, hidden [R, C, D], ids [R, C]) → [R, C] arrays (token_log_probs, token_stats).
Head = Callable[[Qwen, jax.Array, jax.Array], jax.Array | TokenStats]


def completion_log_probs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: dict,
    rows: jax.sharding.NamedSharding | None = None,
    group_size: int = 1,
    head: Head = token_log_probs,
) -> jax.Array | TokenStats:
    """log π(completion token) under `params`, float32 [R, C], from a forward over
    `[prompt ⊕ completion]` (guidance tokens stay in attention under either loss mode); with
    `head=token_stats` (a partial naming τ) the `TokenStats` of each token instead.

    rows: how the rows are split over devices (`batch_sharding`). The activations are
    pinned to it at the model's input and before the LM head, so that XLA gathers the
    fsdp-sharded weights (FSDP) instead of replicating the rows and splitting the model dim.
    group_size: G. When every G consecutive rows share their prompt (a group, as the sampler
    returns it; checked on device), each prompt runs through the model once and its KV cache
    serves the group's G completions: the same log-probs for (G−1)/G fewer prompt FLOPs.
    (Differentiating through this holds both branches' residuals; the train step branches
    outside its gradient instead.)
    """
    R = batch["prompt_ids"].shape[0]
    if group_size <= 1 or R % group_size:
        return _log_probs(graphdef, params, batch, rows, head)
    shared = lambda p, b: _log_probs_shared_prompt(graphdef, p, b, rows, head, group_size)
    full = lambda p, b: _log_probs(graphdef, p, b, rows, head)
    return jax.lax.cond(_groups_share_prompt(batch, group_size), shared, full, params, batch)


def _log_probs(graphdef, params, batch, rows, head: Head):
    """Every row's `[prompt ⊕ completion]` through the model."""
    pin = lambda x: x if rows is None else _constrain_rows(x, rows)
    model = nnx.merge(graphdef, params)
    ids = pin(jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], axis=1))
    mask = pin(jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1))
    hidden = pin(model.hidden_states(ids, positions_from_mask(mask), mask)[0])
    P, C = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    out = head(model, hidden[:, P - 1 : P + C - 1], pin(batch["completion_ids"]))
    return jax.tree.map(pin, out)


def _log_probs_shared_prompt(graphdef, params, batch, rows, head: Head, group_size: int):
    """Each group's prompt once (a prefill into a KV cache), the cache repeated to the G rows,
    then the completions: positions and masks exactly as in `_log_probs`."""
    G = group_size
    pin = lambda x: x if rows is None else _constrain_rows(x, rows)
    first = lambda x: x.reshape(-1, G, *x.shape[1:])[:, 0]  # [R, ...] → [R/G, ...]
    expand = lambda x: jnp.repeat(x, G, axis=0)  # [R/G, ...] → [R, ...]
    model = nnx.merge(graphdef, params)
    P, C = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1)
    positions = positions_from_mask(mask)
    prompt_mask = pin(first(batch["prompt_mask"]))
    cache = init_cache(model.config, prompt_mask.shape[0], P + C)
    hidden_prompt, cache = model.hidden_states(
        pin(first(batch["prompt_ids"])), pin(first(positions[:, :P])), prompt_mask, cache
    )
    cache = KVCache(k=tuple(map(expand, cache.k)), v=tuple(map(expand, cache.v)),
                    mask=expand(cache.mask), index=cache.index)  # fmt: skip
    completion_ids = pin(batch["completion_ids"])
    hidden, _ = model.hidden_states(
        completion_ids, pin(positions[:, P:]), pin(batch["completion_mask"]), cache
    )
    # Token t is predicted from the hidden state before it: the prompt's last, then t − 1.
    hidden = jnp.concatenate([expand(hidden_prompt[:, -1:]), hidden[:, : C - 1]], axis=1)
    return jax.tree.map(pin, head(model, pin(hidden), completion_ids))


def _groups_share_prompt(batch: dict, G: int) -> jax.Array:
    """bool scalar: each G consecutive rows have the same prompt tokens and padding."""
    ids = batch["prompt_ids"].reshape(-1, G, batch["prompt_ids"].shape[1])
    mask = batch["prompt_mask"].reshape(ids.shape).astype(bool)
    same_mask = jnp.all(mask == mask[:, :1])
    return same_mask & jnp.all((ids == ids[:, :1]) | jnp.logical_not(mask))


def _constrain_rows(x: jax.Array, rows: jax.sharding.NamedSharding) -> jax.Array:
    """x with its leading (row) dim split as `rows`; unchanged when the devices don't divide it."""
    ways = math.prod(rows.mesh.shape[a] for a in jax.tree.leaves(rows.spec[0]))
    if x.shape[0] % ways:
        return x
    return jax.lax.with_sharding_constraint(x, rows)


def _split(tree, parts: int, block: int = 1):
    """[R, ...] leaves → [parts, R/parts, ...]: micro-batch i holds the blocks of `block`
    consecutive rows numbered i, i + parts, i + 2·parts, ….

    Strided, not contiguous: rows sharded in contiguous chunks over the data axes keep their
    devices (each device gives every micro-batch its share), so no micro-batch is gathered
    onto, or computed on, every device. block = G keeps groups whole.
    """

    def split(x):
        x = x.reshape(x.shape[0] // (parts * block), parts, block, *x.shape[1:])
        return x.swapaxes(0, 1).reshape(parts, -1, *x.shape[3:])

    return jax.tree.map(split, tree)


def _merge(x: jax.Array, block: int = 1) -> jax.Array:
    """The inverse of `_split` for one array: [parts, R/parts, ...] → [R, ...]."""
    parts = x.shape[0]
    x = x.reshape(parts, -1, block, *x.shape[2:]).swapaxes(0, 1)
    return x.reshape(-1, *x.shape[3:])


def make_train_step(
    graphdef: nnx.GraphDef,
    grpo: GRPOConfig,
    optimizer: OptimizerConfig,
    guidance_config: guidance.GuidanceConfig,
    group_size: int,
    mesh: jax.sharding.Mesh,
    state: TrainState,
):
    """`train_step(state, batch) -> (state, metrics)`, jitted once over `mesh`, state donated.

    One step: group advantages → reference and (μ > 1) old log-probs, one forward each →
    μ optimizer updates, each accumulating gradients over `optimizer.micro_batches` →
    the controller takes this step's signal r_k (SPEC §2–4). `state` gives the shardings.
    """
    tx = make_optimizer(optimizer)
    schedule = learning_rate_schedule(optimizer)
    micro = optimizer.micro_batches
    rows = batch_sharding(mesh)
    devices = mesh.shape["data"] * mesh.shape["fsdp"]

    def block(batch) -> int:
        """G when micro-batches hold whole groups (the prompt forward is then shared within
        each group): one micro-batch, or every device giving each micro-batch whole groups;
        else 1 (single rows, so that micro-batches stay on their devices)."""
        groups = batch["prompt_ids"].shape[0] // group_size
        return group_size if micro == 1 or groups % (devices * micro) == 0 else 1

    # The loss forward's head: log π, π_old's log-probs at the sampler's τ, the entropy.
    stats_head = functools.partial(token_stats, sampling_temperature=grpo.sampling_temperature)

    def log_probs_by_micro_batch(params, batch, head: Head = token_log_probs):
        """Forward without gradient, micro-batch by micro-batch: [R, C] arrays."""
        # params ride in the carry rather than the closure: a model merged from values of an
        # outer trace cannot run nnx.remat'd layers (TraceContextError with remat on).
        b = block(batch)
        _, per_mb = jax.lax.scan(
            lambda p, mb: (p, completion_log_probs(graphdef, p, mb, rows, b, head)),
            params,
            _split(batch, micro, b),
        )
        return jax.tree.map(lambda x: _merge(x, b), per_mb)

    def gradients(params, frozen, batch, advantages, rows_in_loss, loss_mask, old, ref_lp):
        """The full batch's loss gradient, summed over micro-batches with exact weights;
        `frozen` (the LoRA base, or None) enters the forward but is not differentiated.
        old: (log π_old, log π_old at τ), or None for this forward's (μ = 1). Returns
        (grads, loss, metrics, (log π_old at τ, entropy) [R, C] each)."""
        b = block(batch)
        # Each micro-batch's share of the full batch's denominator: of the loss tokens
        # (token_mean), else of the rows in the loss.
        counts = loss_mask if grpo.aggregation == Aggregation.TOKEN_MEAN else rows_in_loss
        per_mb = _split(counts, micro, b).reshape(micro, -1).sum(1)
        weights = per_mb / jnp.maximum(counts.sum(), 1.0)
        inputs = _split((batch, advantages, old, ref_lp, rows_in_loss), micro, b) + (weights,)

        def micro_step(grad_sum, mb):
            mb_batch, mb_adv, mb_old, mb_ref, mb_rows, weight = mb

            def loss_and_grad(forward, p, frozen):
                def loss_fn(p, frozen):
                    # Fresh Variables of this trace: nnx.remat'd layers cannot update the
                    # outer trace's (TraceContextError), and a constant's are those.
                    frozen = jax.tree.map(lambda x: x, frozen)
                    stats = forward(graphdef, _whole(p, frozen), mb_batch, rows, stats_head)
                    lp = stats.log_probs
                    old, old_sampling = (
                        (jax.lax.stop_gradient(lp), stats.sampling_log_probs)
                        if mb_old is None else mb_old
                    )  # fmt: skip
                    loss, metrics = policy_loss(
                        lp, old, mb_adv, mb_batch["completion_mask"], mb_batch["is_guidance"],
                        grpo, mb_ref, mb_rows, sampler_logp=mb_batch["sampler_log_probs"],
                        old_sampling_logp=old_sampling,
                    )  # fmt: skip
                    return weight * loss, (metrics, (old_sampling, stats.entropy))

                return jax.value_and_grad(loss_fn, has_aux=True)(p, frozen)

            if b > 1:  # the branch is taken outside the gradient, so only its residuals live
                shared = functools.partial(_log_probs_shared_prompt, group_size=b)
                (loss, (metrics, tokens)), grads = jax.lax.cond(
                    _groups_share_prompt(mb_batch, b),
                    functools.partial(loss_and_grad, shared),
                    functools.partial(loss_and_grad, _log_probs),
                    params,
                    frozen,
                )
            else:
                (loss, (metrics, tokens)), grads = loss_and_grad(_log_probs, params, frozen)
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return grad_sum, (loss, metrics, tokens)

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, (losses, metrics, tokens) = jax.lax.scan(micro_step, zeros, inputs)
        tokens = jax.tree.map(lambda x: _merge(x, b), tokens)
        return grads, losses.sum(), _combine_micro_batches(metrics, weights), tokens

    def train_step(state: TrainState, batch: dict):
        advantages = group_advantages(batch["rewards"], group_size, grpo.advantage_std)
        rows_in_loss = loss_rows(batch, grpo)
        loss_mask = token_loss_mask(batch["completion_mask"], batch["is_guidance"],
                                    grpo.guidance_loss, rows_in_loss)  # fmt: skip
        is_guided = jnp.any(batch["is_guidance"], axis=-1)
        ref_lp = None
        if grpo.beta > 0:
            ref_lp = jax.lax.stop_gradient(log_probs_by_micro_batch(state.reference(), batch))
        old = None
        if grpo.num_updates > 1:  # SPEC §3: π_old is the policy before the first update
            stats = log_probs_by_micro_batch(state.policy(), batch, stats_head)
            old = jax.lax.stop_gradient((stats.log_probs, stats.sampling_log_probs))

        def update(carry, _):
            params, opt_state = carry
            grads, loss, metrics, (old_sampling, entropy) = gradients(
                params, state.frozen, batch, advantages, rows_in_loss, loss_mask, old, ref_lp
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            metrics |= _by_guidance("entropy", entropy, loss_mask, is_guided)
            metrics |= {"loss": loss, "grad_norm": optax.tree.norm(grads)}
            return (optax.apply_updates(params, updates), opt_state), (metrics, old_sampling)

        (params, opt_state), (metrics, old_sampling) = jax.lax.scan(
            update, (state.params, state.opt_state), length=grpo.num_updates
        )
        metrics = {name: _reduce_metric(name, values) for name, values in metrics.items()}
        # π_old is the same in every update: the first one's.
        metrics |= rollout_metrics(old_sampling[0], batch["sampler_log_probs"], loss_mask, grpo)
        skipped = skip_update(advantages, grpo, rows_in_loss)
        keep = lambda old, new: jax.tree.map(lambda a, b: jnp.where(skipped, a, b), old, new)

        signal = guidance.step_signal(batch["accuracy"], batch["rewards"], is_guided,
                                      guidance_config)  # fmt: skip
        completion_length = batch["completion_mask"].sum(1).astype(jnp.float32)
        guided = is_guided.astype(jnp.float32)
        accuracy = batch["accuracy"].astype(jnp.float32)
        metrics |= {
            "lr": schedule(state.step),
            "skipped": skipped.astype(jnp.float32),
            "advantage_std": jnp.std(advantages),
            "reward": jnp.mean(batch["rewards"]),
            "accuracy": jnp.mean(accuracy),
            "accuracy_guided": jnp.sum(accuracy * guided) / jnp.maximum(guided.sum(), 1.0),
            "accuracy_unguided": jnp.sum(accuracy * (1 - guided)) / jnp.maximum((1 - guided).sum(), 1.0),
            "completion_length": jnp.mean(completion_length),
            "guidance_length": state.controller.length.astype(jnp.float32),
            "signal": signal,
            # The rows that move the policy: in the loss, with A ≠ 0.
            "effective_rows": jnp.sum((advantages != 0) * rows_in_loss),
            "truncated_fraction": jnp.mean(batch["truncated"].astype(jnp.float32)),
        }  # fmt: skip
        ties = group_ties(batch["rewards"], accuracy, is_guided, group_size,
                          jnp.logical_not(batch["is_filler"]))  # fmt: skip
        metrics |= {f"groups/{name}": value for name, value in ties.items()}
        new_state = state.replace(
            step=state.step + jnp.where(skipped, 0, 1).astype(jnp.int32),
            params=keep(state.params, params),
            opt_state=keep(state.opt_state, opt_state),
            controller=guidance.update(state.controller, signal, guidance_config),
        )
        return new_state, metrics

    state_sharding = state_shardings(state, mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, None),
        donate_argnames=("state",),
    )


def _by_guidance(
    name: str, x: jax.Array, mask: jax.Array, is_guided: jax.Array
) -> dict[str, jax.Array]:
    """Means of x [R, C] over the `mask` [R, C] tokens: all rows, guided rows, unguided rows."""
    guided = is_guided.astype(jnp.float32)[:, None]
    mean = lambda m: jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)
    return {name: mean(mask), f"{name}_guided": mean(mask * guided),
            f"{name}_unguided": mean(mask * (1 - guided))}  # fmt: skip


def _combine_micro_batches(metrics: dict, loss_weights: jax.Array) -> dict:
    """The full batch's value of each loss metric from its values per micro-batch [micro]:
    `loss_tokens` summed, `pg_loss` weighted as the loss is (`loss_weights`), `*_max` /
    `*_min` their max / min, and token means by each micro-batch's share of loss tokens."""
    tokens = metrics["loss_tokens"]
    token_share = tokens / jnp.maximum(tokens.sum(), 1.0)

    def combine(name: str, values: jax.Array) -> jax.Array:
        match name:
            case "loss_tokens":
                return values.sum()
            case "pg_loss":
                return jnp.sum(loss_weights * values)
        return _reduce_metric(name, values, mean=lambda v: jnp.sum(token_share * v))

    return {name: combine(name, values) for name, values in metrics.items()}


def _reduce_metric(name: str, values: jax.Array, mean=jnp.mean) -> jax.Array:
    """One value from a metric's values [n]: max / min for `*_max` / `*_min`, else `mean`
    (plain over the μ updates, which see the same rows and tokens)."""
    if name.endswith("_max"):
        return values.max()
    if name.endswith("_min"):
        return values.min()
    return mean(values)


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Weights and their optimizer moments by the logical-axis rules; the rest replicated."""
    return sharding.state_shardings(state, mesh)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Rows split over the data-parallel axes (data × fsdp); every other dim whole."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
