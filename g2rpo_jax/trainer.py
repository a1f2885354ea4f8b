"""The G²RPO-A training loop (DESIGN.md "One training step") and run set-up; evaluation and
scoring are g2rpo_jax/evaluation.py.

Per step k (0-based; the checkpoint after it is step k+1):
  batch (Grain, B prompts) → ℓ from the controller → guidance plan (first ceil(α·G)
  candidates of each group get min(ℓ, trace length) trace tokens) → prompts repeated G times
  → Sampler with key fold_in(key(seed), k) → decode → rewards (worker processes) →
  train_step (jitted, state donated) → metrics of step k-1 to the logs (one step late, so
  nothing waits on the step just dispatched) → eval / checkpoint when due.
The host reads ℓ once per step: the guidance plan needs it, and it depends on the previous
step's rewards, so that read is where the previous train step is waited for.

With grpo.filter_zero_std_groups the sampling of a step is DAPO's dynamic sampling
(`dynamic_sampling`): tied groups are dropped and refilled from the next batches. With
guidance.when = unguided_failed each sampling is two sampler calls (`batch_rollout`).

SIGTERM / SIGINT set a flag read between steps: the loop saves a checkpoint and returns.
A second SIGINT interrupts at once.

Many processes (one per host): each host reads its own shard of every batch, samples it as
part of one global batch over the mesh, decodes and scores its own rows
(`distributed.local_rows`), and feeds the rewards back as global arrays. A candidate's
sampling key depends on its source row and index in the group, not on where it sits in the
batch, so a run samples the same completions on any number of hosts. Only process 0 logs.
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable

import jax
import ml_collections
from absl import logging
from flax import nnx

from g2rpo_jax import (
    alarms,
    distributed,
    dynamic_sampling,
    evaluation,
    experiment,
    guidance,
    hub,
    logging_utils,
    sharding,
    train_step,
)
from g2rpo_jax import checkpoint as checkpoint_lib
from g2rpo_jax import config as config_lib
from g2rpo_jax import lora as lora_lib
from g2rpo_jax import rollout as rollout_lib
from g2rpo_jax.batch_rollout import BatchRollout
from g2rpo_jax.data import make_dataset
from g2rpo_jax.data.tokenization import TOKENIZER_DIR, TokenIds, Tokenizer, load_tokenizer
from g2rpo_jax.models import ModelConfig, Qwen, abstract_model, from_pretrained
from g2rpo_jax.preemption import Preemption, stop_requested
from g2rpo_jax.rewards import RewardPool, parse_gold
from g2rpo_jax.sampling import rollout_params

BASE_MODEL = checkpoint_lib.BASE_MODEL


# --- Set-up: tokenizer, model, compiled functions ------------------------------------------


def initial_model(exp: experiment.Experiment, tokenizer: Tokenizer, mesh) -> Qwen:
    """The policy to start from: the Hugging Face checkpoint, or a random init of the preset;
    with model.lora.rank > 0, that base with fresh adapters (B = 0: the same function)."""
    model = _base_model(exp, tokenizer, mesh)
    if exp.model.lora.rank:
        return lora_lib.add_adapters(model, exp.model.lora, exp.seed, mesh)
    return model


def _base_model(exp: experiment.Experiment, tokenizer: Tokenizer, mesh) -> Qwen:
    source = exp.model
    if source.path:
        model, model_config = from_pretrained(
            source.path,
            dtype=source.dtype,
            param_dtype=source.param_dtype,
            mesh=mesh,
            attention=source.attention,
        )
        if model_config.vocab_size < len(tokenizer):
            raise ValueError(
                f"{source.path}: vocab_size {model_config.vocab_size} < the "
                f"tokenizer's {len(tokenizer)} tokens"
            )
        if source.preset:  # the name in the config file should describe the weights
            named = experiment.preset_model_config(source)
            for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size"):
                if getattr(named, field) != getattr(model_config, field):
                    logging.warning(
                        "%s: %s=%s, but config.model.preset=%r has %s",
                        source.path,
                        field,
                        getattr(model_config, field),
                        source.preset,
                        getattr(named, field),
                    )
        return model
    vocab = len(tokenizer) if source.fit_vocab_to_tokenizer else None
    model_config = experiment.preset_model_config(source, vocab).replace(
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id
    )
    return lora_lib.random_model(model_config, mesh, exp.seed)


def abstract_train_state(model_config: ModelConfig, exp: experiment.Experiment, mesh):
    """(graphdef, abstract TrainState with shardings) for restoring a checkpoint: what
    `TrainState.checkpointed` holds (under LoRA no base weights, `frozen` is None)."""
    graphdef, params = nnx.split(abstract_model(model_config))
    state = jax.eval_shape(
        lambda p: train_step.init_train_state(
            nnx.merge(graphdef, p), exp.grpo, exp.optimizer, exp.guidance
        ).checkpointed(),
        params,
    )
    return graphdef, checkpoint_lib.abstract_like(state, train_step.state_shardings(state, mesh))


# Compiled train steps shared by every run in a process (tests, repeated runs).
_STEPS: dict = {}


def _train_step(graphdef, exp: experiment.Experiment, mesh, state):
    share = exp.sampling.share_prefix
    key = (graphdef, exp.grpo, exp.optimizer, exp.guidance, mesh, exp.train.remat, share)
    if key not in _STEPS:
        _STEPS[key] = train_step.make_train_step(
            graphdef,
            exp.grpo,
            exp.optimizer,
            exp.guidance,
            mesh,
            state,
            remat=exp.train.remat,
            share_prefix=share,
        )
    return _STEPS[key]


# --- Rollouts and rewards ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int  # completed steps (the last checkpoint's)
    total_steps: int
    preempted: bool


@dataclasses.dataclass(frozen=True)
class _Run:
    """A run as set up before its first step: what the loop reads and never replaces."""

    exp: experiment.Experiment
    workdir: str
    start: int  # the step resumed from (0: a new run)
    total_steps: int
    checkpointer: checkpoint_lib.Checkpointer
    tokenizer: Tokenizer
    meta: dict  # written into every checkpoint
    step_fn: Callable  # the jitted train step
    rollout: "BatchRollout"
    sample: Callable  # (policy, batch, ℓ, k) -> (rows, host numbers, samples)
    evaluate: Callable | None  # policy -> report, when the run evaluates
    logger: logging_utils.RunLogger
    logs: logging_utils.StepLogs


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    step_callback: Callable[[int], None] | None = None,
) -> TrainResult:
    """Trains (or resumes from the newest checkpoint in `workdir`) until the run's last step
    or a SIGTERM/SIGINT. `step_callback(step)` runs after each completed step."""
    run, state, iterator = _setup(config, workdir)
    exp, logs = run.exp, run.logs
    step = saved = run.start
    preemption = Preemption()
    if run.evaluate and run.start == 0 and exp.train.eval_at_start:  # the step-0 baseline
        run.logger.evaluation(0, run.evaluate(state.policy()))
    with preemption:
        try:
            for k in range(run.start, run.total_steps):
                t0 = time.perf_counter()
                batch = next(iterator, None)
                if batch is None:  # only when dynamic sampling drew extra batches
                    logging.warning(
                        "the data ran out after step %d of %d: grpo.filter_zero_std_groups "
                        "drew extra batches; raise data.num_epochs to train longer",
                        k,
                        run.total_steps,
                    )
                    if saved < step:
                        saved = _save(run, step, state, iterator)
                    break
                state, host, samples = _step(run, state, batch, k, t0)
                step = k + 1
                if exp.train.sample_every and step % exp.train.sample_every == 0:
                    run.logger.samples(step, samples[: exp.train.num_logged_samples])
                if run.evaluate and step % exp.train.eval_every == 0:
                    t_eval = time.perf_counter()
                    run.logger.evaluation(step, run.evaluate(state.policy()))
                    host["time/eval_s"] = time.perf_counter() - t_eval
                if step_callback is not None:
                    step_callback(step)
                stop = stop_requested(preemption) or logs.stop
                if step % exp.train.save_every == 0 or step == run.total_steps or stop:
                    t_save = time.perf_counter()
                    saved = _save(run, step, state, iterator)
                    host["time/checkpoint_s"] = time.perf_counter() - t_save
                if stop:
                    break
            jax.block_until_ready(state.step)
            logs.finished()
            logs.write()
        finally:
            run.checkpointer.close()  # waits for the last save
            run.rollout.pool.close()
            run.logger.close()
    if jax.process_index() == 0:  # before → after, the run's alarms, plots
        from g2rpo_jax import report

        report.finish(workdir, write_plots=exp.train.plots)
    if logs.stop:
        raise alarms.TrainingAlarm(f"{logs.raised[0]} (train.stop_on_alarm: saved step {saved})")
    return TrainResult(
        step=saved, total_steps=run.total_steps, preempted=bool(preemption.requested)
    )


def _step(run: _Run, state, batch: dict, k: int, t0: float):
    """Step k: ℓ, the rollout, the train step dispatched (not waited for: only the index of
    its forward is read, `TrainStep`); the previous step's numbers go to the logs. Returns
    (state, host numbers of this step, samples)."""
    t_data = time.perf_counter()
    # Reading ℓ waits for the previous train step: the plan depends on it.
    ell = int(jax.device_get(state.controller.length))
    run.logs.finished()
    t_ell = time.perf_counter()
    policy = rollout_params(state.policy(), run.exp.sampling)  # once per step
    rows, host, samples = run.sample(policy, batch, ell, k)
    del policy
    if jax.process_count() > 1:  # which rows each host read, for audits and tests
        logging_utils.append_jsonl(
            os.path.join(run.workdir, f"rows.process{jax.process_index()}.jsonl"),
            {"step": k + 1, "rows": batch["index"].tolist()},
        )
    host["time/data_s"], host["time/wait_train_s"] = t_data - t0, t_ell - t_data
    t_train = time.perf_counter()
    state, metrics = run.step_fn(state, rows)
    host["time/train_dispatch_s"] = time.perf_counter() - t_train
    host["start"] = t0
    run.logs.push(k + 1, metrics, host)  # writes the previous step's
    return state, host, samples


def _save(run: _Run, step: int, state, iterator) -> int:
    """Checkpoints step `step` (under LoRA without the base) with the alarm streaks through it
    (reading them waits for the step, as the save does); returns the step saved."""
    meta = run.meta | {"step": step, alarms.META_KEY: run.logs.streaks()}
    run.checkpointer.save(step, state.checkpointed(), iterator.get_state(), meta)
    return step


def _setup(config: ml_collections.ConfigDict, workdir: str):
    """The run (`_Run`), its train state and its data iterator, at the step it resumes from."""
    exp = experiment.build(
        config, num_devices=jax.device_count(), process_count=jax.process_count()
    )
    _check_processes(exp)
    checkpoint_lib.quiet_orbax_logs()
    os.makedirs(workdir, exist_ok=True)
    checkpointer = checkpoint_lib.Checkpointer(
        workdir, keep=exp.train.keep_checkpoints, async_save=exp.train.async_checkpointing
    )
    start = checkpointer.latest_step() or 0
    # A LoRA run reads its base weights again on resume.
    hub.fetch(hub.run_sources(exp, needs_weights=not start or exp.model.lora.rank > 0))
    tokenizer = load_tokenizer(exp.tokenizer, workdir)
    mesh = sharding.make_mesh(exp.mesh_shape)
    data = make_dataset(
        exp.data,
        tokenizer,
        answer_check=parse_gold if "accuracy" in dict(exp.rewards.weights) else None,
        tests_check=evaluation.tests_check(exp.rewards),
    )
    total_steps = exp.train.num_steps or data.stats.num_batches
    if total_steps > data.stats.num_batches:
        raise config_lib.ConfigError(
            f"config.train.num_steps={total_steps}: the data holds {data.stats.num_batches} "
            f"batches over data.num_epochs={exp.data.num_epochs}"
        )
    exp = exp.with_total_steps(total_steps)
    iterator = iter(data.batches)
    monitor = alarms.AlarmMonitor(
        exp.train.alarm_steps, exp.data.max_completion_length, exp.guidance.ratio
    )
    graphdef, state, model_config, base = _restore_or_init(
        exp, config, checkpointer, start, tokenizer, mesh, iterator, monitor
    )
    meta = {
        "config": json.loads(config.to_json_best_effort()),
        "tokenizer": TOKENIZER_DIR,
        "model_config": checkpoint_lib.model_config_to_json(model_config),
    }
    if base is not None:  # a LoRA run's base location, kept in every checkpoint's meta
        meta[BASE_MODEL] = base
    tokens = TokenIds.of(tokenizer, model_config, exp.model.path)
    sampler = rollout_lib.sampler_for(
        graphdef,
        exp.sampling,
        tokens,
        exp.grpo.group_size,
        guidance.num_guided(exp.guidance.ratio, exp.grpo.group_size),
        train_step.batch_sharding(mesh),
    )
    logger = logging_utils.RunLogger(
        workdir,
        total_steps=total_steps,
        start_step=start,
        progress_bar=exp.train.progress_bar,
        wandb_project=exp.train.wandb_project,
        config=meta["config"],
        enabled=jax.process_index() == 0,
    )
    rollout = BatchRollout(exp, tokenizer, sampler, RewardPool(exp.rewards), mesh)
    run = _Run(
        exp,
        workdir,
        start,
        total_steps,
        checkpointer,
        tokenizer,
        meta,
        _train_step(graphdef, exp, mesh, state),
        rollout,
        _sampling(exp, rollout, iterator, tokens.pad),
        _evaluation(exp, tokenizer, graphdef, tokens, rollout.pool),
        logger,
        logging_utils.StepLogs(logger, monitor, exp.train.stop_on_alarm),
    )
    return run, state, iterator


def _check_processes(exp: experiment.Experiment) -> None:
    if jax.process_count() > 1 and exp.train.eval_every:
        raise config_lib.ConfigError(
            "config.train.eval_every: periodic evaluation runs in single-process jobs only; "
            "set it to 0 and run scripts/evaluate.py on an exported checkpoint"
        )
    if jax.process_count() > 1 and exp.grpo.filter_zero_std_groups:
        raise config_lib.ConfigError(
            "config.grpo.filter_zero_std_groups: dynamic sampling refills batches on one host; "
            "multi-process runs need it off"
        )
    if jax.process_count() > 1 and exp.guidance.when is guidance.GuidanceWhen.UNGUIDED_FAILED:
        raise config_lib.ConfigError(
            "config.guidance.when: unguided_failed runs in single-process jobs only (each "
            "host would size its second sampler call's trace bucket by its own groups)"
        )


def _restore_or_init(exp, config, checkpointer, start, tokenizer, mesh, iterator, monitor):
    """(graphdef, state, model config, LoRA base location or None): restored from checkpoint
    `start` (the iterator and alarm streaks with it), or a new run's initial policy."""
    if not start:
        model = initial_model(exp, tokenizer, mesh)
        state = train_step.init_train_state(model, exp.grpo, exp.optimizer, exp.guidance)
        state = jax.device_put(state, train_step.state_shardings(state, mesh))
        base = None
        if model.config.lora.rank:
            base = lora_lib.base_location(exp.model.path, exp.seed)
        return nnx.graphdef(model), state, model.config, base
    saved_meta = checkpointer.meta(start)
    model_config = checkpoint_lib.model_config_from_json(saved_meta["model_config"])
    graphdef, abstract_state = abstract_train_state(model_config, exp, mesh)
    state, data_state, _ = checkpointer.restore(start, abstract_state)
    base = None
    if model_config.lora.rank:
        base = saved_meta[BASE_MODEL]
        state = state.replace(frozen=lora_lib.load_base(base, model_config, mesh))
    iterator.set_state(data_state)
    monitor.restore(saved_meta.get(alarms.META_KEY))
    logging.info("resumed from %s at step %d", checkpointer.directory, start)
    _warn_config_changes(saved_meta["config"], json.loads(config.to_json_best_effort()))
    return graphdef, state, model_config, base


def _sampling(exp, rollout: "BatchRollout", iterator, pad: int) -> Callable:
    """The step's rollout: one sampler call, or DAPO's dynamic sampling over extra batches."""
    if not exp.grpo.filter_zero_std_groups:
        return rollout

    def filtered(policy, batch, ell, k):
        rows, host, samples = dynamic_sampling.sample_filtered(
            rollout,
            policy,
            batch,
            ell,
            k,
            next_batch=lambda: next(iterator, None),
            config=exp.grpo,
            pad_id=pad,
        )
        return distributed.global_batch(rows, rollout.sharding), host, samples

    return filtered


def _evaluation(exp, tokenizer, graphdef, tokens: TokenIds, pool) -> Callable | None:
    """policy -> the periodic evaluation's report, or None when the run does not evaluate."""
    if not exp.train.eval_every:
        return None
    rows = evaluation.load_eval_examples(
        exp.eval,
        exp.data,
        tokenizer,
        parse_gold if exp.accuracy_reward == "accuracy" else None,
        evaluation.tests_check(exp.rewards),
    )
    sampler = rollout_lib.sampler_for(graphdef, exp.eval.sampling, tokens, exp.eval.num_samples, 0)
    return lambda policy: evaluation.evaluate(
        policy, sampler, tokenizer, rows, pool, exp.eval, exp.accuracy_reward, seed=exp.seed
    )


def _warn_config_changes(saved: dict, current: dict, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            _warn_config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            logging.warning(
                "resuming with config.%s%s = %r (the checkpoint ran with %r)", prefix, key, new, old
            )
