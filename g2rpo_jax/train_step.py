"""The GRPO train step: log-probs of the sampled rows, the loss, the optimizer update, jitted
over the device mesh (SPEC §3, §4); the advantages and the loss are g2rpo_jax/grpo.py.

Shapes: B prompts, G candidates per prompt (the group), T completion length, R = B·G rows,
prompt-major (candidate j of prompt b is row b*G + j).
"""

import dataclasses
import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from g2rpo_jax import guidance, sharding, step_metrics
from g2rpo_jax.advantages import group_advantages
from g2rpo_jax.completion_forward import Forward, Head, forward_index, shared_forwards
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
from g2rpo_jax.models.qwen import LoraParam, Qwen
from g2rpo_jax.optimization import OptimizerConfig, make_optimizer

# --- The train step ------------------------------------------------------------------------

# Per-row arrays a train step reads: the sampler's outputs and the host's rewards.
# sampler_log_probs: [R, C] float32, the sampler's log-probs of the completion tokens (at
# its temperature); truncated: [R] bool, the sampler stopped the row at its length budget
# (no EOS); is_filler: [R] bool, a row of a tied group kept only to fill a filtered batch.
# A row is guided when it received trace tokens (any `is_guidance`): not every planned slot
# does (a row without a trace, ℓ = 0), so the plan alone would misattribute them.
BATCH_FIELDS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "is_guidance",
    "sampler_log_probs",
    "rewards",
    "accuracy",
    "truncated",
    "is_filler",
)


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


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What a train step is specialized on: static under jit (hashable)."""

    graphdef: nnx.GraphDef
    grpo: GRPOConfig
    optimizer: OptimizerConfig
    guidance: guidance.GuidanceConfig
    rows: jax.sharding.NamedSharding  # how the batch's rows split over the mesh
    data_parallel: int  # devices along (data, fsdp)
    remat: bool = False  # the gradient's forward recomputes each layer in the backward pass
    # Forwards that run each group's prompt (and its guided rows' guidance) once, when the
    # batch has that structure (completion_forward.forward_index); False: row-wise only.
    share_prefix: bool = True


class TrainStep:
    """`step(state, batch) -> (state, metrics)`: reads which forward the batch's structure
    allows (one int32 from the device: the rollout is done by then, its rewards read) and
    runs the step's program for it, jitted when first needed: a run compiles the forward
    and backward of only the forwards its batches use (usually one of up to four)."""

    def __init__(self, settings: StepSettings, state_sharding: TrainState):
        self.settings = settings
        self.state_sharding = state_sharding
        self.programs: dict[int, Callable] = {}  # forward → train_step jitted for it
        self.choose = jax.jit(
            functools.partial(step_forward_index, settings), in_shardings=(settings.rows,)
        )

    def __call__(self, state: TrainState, batch: dict):
        return self.program(self.forward(batch))(state, batch)

    def forward(self, batch: dict) -> int:
        """The index into the step's forwards (`step_forwards`) that `batch` runs."""
        return int(jax.device_get(self.choose(batch)))

    def forwards(self, batch: dict) -> tuple[Forward, ...]:
        """The forwards a batch of this shape may run (`step_forwards`)."""
        return step_forwards(self.settings, batch)

    def program(self, forward: int) -> Callable:
        """train_step with `forward`, jitted over the mesh with the state donated."""
        if forward not in self.programs:
            self.programs[forward] = jax.jit(
                functools.partial(train_step, settings=self.settings, forward=forward),
                in_shardings=(self.state_sharding, self.settings.rows),
                out_shardings=(self.state_sharding, None),
                donate_argnames=("state",),
            )
        return self.programs[forward]


def make_train_step(
    graphdef: nnx.GraphDef,
    grpo: GRPOConfig,
    optimizer: OptimizerConfig,
    guidance_config: guidance.GuidanceConfig,
    mesh: jax.sharding.Mesh,
    state: TrainState,
    *,
    remat: bool = False,
    share_prefix: bool = True,
) -> TrainStep:
    """The train step jitted over `mesh`, with the state's shardings (`state` gives them)
    and the state donated. remat: recompute each layer's activations in the backward pass
    (less memory, ~1/3 more compute). share_prefix: `sampling.share_prefix`, as in
    StepSettings."""
    settings = StepSettings(
        graphdef,
        grpo,
        optimizer,
        guidance_config,
        batch_sharding(mesh),
        mesh.shape["data"] * mesh.shape["fsdp"],
        remat,
        share_prefix,
    )
    return TrainStep(settings, state_shardings(state, mesh))


def train_step(state: TrainState, batch: dict, *, settings: StepSettings, forward: int = 0):
    """One step: group advantages → reference and (μ > 1) old log-probs, one forward each →
    μ optimizer updates, each accumulating gradients over `optimizer.micro_batches` → the
    controller takes this step's signal r_k (SPEC §2–4). forward: which of `step_forwards`
    computes the log-probs (0, row-wise, always right; `step_forward_index` gives the
    cheapest the batch allows). Returns (state, metrics)."""
    chosen = step_forwards(settings, batch)[forward]
    grpo = settings.grpo
    advantages = group_advantages(batch["rewards"], settings.grpo.group_size, grpo.advantage_std)
    rows_in_loss = loss_rows(batch, grpo)
    loss_mask = token_loss_mask(
        batch["completion_mask"], batch["is_guidance"], grpo.guidance_loss, rows_in_loss
    )
    is_guided = jnp.any(batch["is_guidance"], axis=-1)
    ref_lp = None
    if grpo.beta > 0:
        ref_lp = jax.lax.stop_gradient(_forward_no_grad(settings, chosen, state.reference(), batch))
    old = None
    if grpo.num_updates > 1:  # SPEC §3: π_old is the policy before the first update
        stats = _forward_no_grad(settings, chosen, state.policy(), batch, _stats_head(grpo))
        old = jax.lax.stop_gradient((stats.log_probs, stats.sampling_log_probs))
    tx = make_optimizer(settings.optimizer)

    def update(carry, _):
        params, opt_state = carry
        grads, loss, metrics, (old_sampling, entropy) = _gradients(
            settings,
            chosen,
            params,
            state.frozen,
            batch,
            advantages,
            rows_in_loss,
            loss_mask,
            old,
            ref_lp,
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        metrics |= step_metrics.by_guidance("entropy", entropy, loss_mask, is_guided)
        metrics |= {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return (optax.apply_updates(params, updates), opt_state), (metrics, old_sampling)

    (params, opt_state), (metrics, old_sampling) = jax.lax.scan(
        update, (state.params, state.opt_state), length=grpo.num_updates
    )
    metrics = {name: step_metrics.reduce_metric(name, values) for name, values in metrics.items()}
    # π_old is the same in every update: the first one's.
    metrics |= rollout_metrics(old_sampling[0], batch["sampler_log_probs"], loss_mask, grpo)
    skipped = skip_update(advantages, grpo, rows_in_loss)
    keep = lambda old, new: jax.tree.map(lambda a, b: jnp.where(skipped, a, b), old, new)
    signal = guidance.step_signal(batch["accuracy"], batch["rewards"], is_guided, settings.guidance)
    metrics |= step_metrics.batch_metrics(
        settings, state, batch, advantages, rows_in_loss, is_guided
    )
    metrics |= {"skipped": skipped.astype(jnp.float32), "signal": signal}
    new_state = state.replace(
        step=state.step + jnp.where(skipped, 0, 1).astype(jnp.int32),
        params=keep(state.params, params),
        opt_state=keep(state.opt_state, opt_state),
        controller=guidance.update(state.controller, signal, settings.guidance),
    )
    return new_state, metrics


def _stats_head(grpo: GRPOConfig) -> Head:
    """The loss forward's head: log π, π_old's log-probs at the sampler's τ, the entropy."""
    return functools.partial(token_stats, sampling_temperature=grpo.sampling_temperature)


def _block(settings: StepSettings, batch: dict) -> int:
    """G when micro-batches hold whole groups (the prompt forward is then shared within each
    group): one micro-batch, or every device giving each micro-batch whole groups; else 1
    (single rows, so that micro-batches stay on their devices)."""
    micro, G = settings.optimizer.micro_batches, settings.grpo.group_size
    groups = batch["prompt_ids"].shape[0] // G
    return G if micro == 1 or groups % (settings.data_parallel * micro) == 0 else 1


def _sharing(settings: StepSettings, block: int) -> tuple[int, int]:
    """(group size, guided slots n) that a forward may be shared over: (1, 0), row-wise,
    unless share_prefix is on and micro-batches hold whole groups."""
    if not settings.share_prefix or block == 1:
        return 1, 0
    return block, guidance.num_guided(settings.guidance.ratio, block)


def step_forwards(settings: StepSettings, batch: dict) -> tuple[Forward, ...]:
    """The forwards this step may run on `batch` (`completion_forward.shared_forwards`)."""
    G, n = _sharing(settings, _block(settings, batch))
    return shared_forwards(batch["completion_ids"].shape[1], G, n)


def step_forward_index(settings: StepSettings, batch: dict) -> jax.Array:
    """int32 scalar: the cheapest of `step_forwards` that every micro-batch's structure
    allows (each forward holds only where the ones before it do)."""
    b = _block(settings, batch)
    micro_batches = _split(batch, settings.optimizer.micro_batches, b)
    index = jax.vmap(lambda mb: forward_index(mb, *_sharing(settings, b)))(micro_batches)
    return index.min()


def _forward_no_grad(
    settings: StepSettings, forward: Forward, params, batch, head: Head = token_log_probs
):
    """`forward` without gradient, micro-batch by micro-batch: [R, C] arrays."""
    b = _block(settings, batch)
    run = lambda p, mb: (p, forward(settings.graphdef, p, mb, settings.rows, head))
    _, per_mb = jax.lax.scan(run, params, _split(batch, settings.optimizer.micro_batches, b))
    return jax.tree.map(lambda x: _merge(x, b), per_mb)


def _gradients(
    settings, forward, params, frozen, batch, advantages, rows_in_loss, loss_mask, old, ref_lp
):
    """The full batch's loss gradient through `forward`, summed over micro-batches with exact
    weights; `frozen` (the LoRA base, or None) enters the forward but is not differentiated.
    old: (log π_old, log π_old at τ), or None for this forward's (μ = 1). Returns (grads,
    loss, metrics, (log π_old at τ, entropy) [R, C] each)."""
    micro, b = settings.optimizer.micro_batches, _block(settings, batch)
    # Each micro-batch's share of the full batch's denominator: of the loss tokens
    # (token_mean), else of the rows in the loss.
    counts = loss_mask if settings.grpo.aggregation == Aggregation.TOKEN_MEAN else rows_in_loss
    weights = _split(counts, micro, b).reshape(micro, -1).sum(1) / jnp.maximum(counts.sum(), 1.0)
    inputs = _split((batch, advantages, old, ref_lp, rows_in_loss), micro, b) + (weights,)

    def micro_step(grad_sum, mb):
        (loss, (metrics, tokens)), grads = _micro_loss_and_grad(
            settings, mb, forward, params, frozen
        )
        return jax.tree.map(jnp.add, grad_sum, grads), (loss, metrics, tokens)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, metrics, tokens) = jax.lax.scan(micro_step, zeros, inputs)
    tokens = jax.tree.map(lambda x: _merge(x, b), tokens)
    return grads, losses.sum(), step_metrics.combine_micro_batches(metrics, weights), tokens


def _micro_loss_and_grad(settings: StepSettings, mb, forward, params, frozen):
    """One micro-batch's `_micro_loss` and its gradient w.r.t. params; `forward` is one of
    `step_forwards`."""

    def loss_fn(p, frozen):
        # Fresh Variables of this trace: nnx.remat'd layers cannot update the outer
        # trace's (TraceContextError), and a constant's are those.
        frozen = jax.tree.map(lambda x: x, frozen)
        whole = _whole(p, frozen)
        head = _stats_head(settings.grpo)
        stats = forward(settings.graphdef, whole, mb[0], settings.rows, head, remat=settings.remat)
        return _micro_loss(settings, mb, stats)

    return jax.value_and_grad(loss_fn, has_aux=True)(params, frozen)


def _micro_loss(settings: StepSettings, mb, stats: TokenStats):
    """One micro-batch's weighted loss from its tokens' `TokenStats` [R, C]; returns (loss,
    (metrics, (log π_old at τ, entropy)))."""
    mb_batch, mb_adv, mb_old, mb_ref, mb_rows, weight = mb
    lp = stats.log_probs
    old, old_sampling = (
        (jax.lax.stop_gradient(lp), stats.sampling_log_probs) if mb_old is None else mb_old
    )
    loss, metrics = policy_loss(
        lp,
        old,
        mb_adv,
        mb_batch["completion_mask"],
        mb_batch["is_guidance"],
        settings.grpo,
        mb_ref,
        mb_rows,
        sampler_logp=mb_batch["sampler_log_probs"],
        old_sampling_logp=old_sampling,
    )
    return weight * loss, (metrics, (old_sampling, stats.entropy))


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Weights and their optimizer moments by the logical-axis rules; the rest replicated."""
    return sharding.state_shardings(state, mesh)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Rows split over the data-parallel axes (data × fsdp); every other dim whole."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
