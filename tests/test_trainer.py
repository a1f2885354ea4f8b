"""The training loop: exact resume after SIGTERM, checkpoints that survive SIGKILL, pass@k.

Two runs go end to end through a SIGTERM and a resume (the handler, the save it forces,
the restart): the default smoke run, and dynamic sampling with guidance.when =
unguided_failed (two sampler calls a draw, extra draws moving the iterator). LoRA differs
only in what the checkpoint holds, so it is checked at the checkpoint instead: a step, its
save, a fresh set-up restoring it, the next step bitwise equal to the live run's.
"""

import itertools
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import ml_collections
import numpy as np
import pytest

from g2rpo_jax import alarms, evaluation, experiment, logging_utils, sharding, trainer
from g2rpo_jax import checkpoint as checkpoint_lib
from g2rpo_jax import config as config_lib
from g2rpo_jax.data import tokenization
from tests.test_train_step import make_batch

REPO = pathlib.Path(__file__).resolve().parent.parent
# One pytest-xdist worker runs the file: runs of one model reuse trainer's compiled steps.
pytestmark = pytest.mark.xdist_group("trainer")


def write_rows(path, n: int = 16) -> str:
    """Addition problems. Odd rows have a short trace that fits ℓ_max = 24 byte tokens, so
    their guided candidates copy a correct answer (reward 1); even rows' traces are cut
    before the answer closes. The accuracy signal then moves from step to step, and so ℓ."""
    rows = []
    for i in range(n):
        a, b = 1 + (7 * i) % 9, 1 + (5 * i) % 9
        short = f"<answer>{a + b}</answer>"
        trace = short if i % 2 else f"<think>{a}+{b}={a + b}</think>{short}"
        rows.append({"prompt": f"What is {a}+{b}?", "answer": str(a + b), "guidance": trace,
                     "difficulty": i % 4})  # fmt: skip
    pathlib.Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# Sampling and step programs for runs whose claim is about the loop, the data or the files,
# not about how a step samples or forwards: the row-wise sampler in one decode phase and the
# row-wise train step compile in a fraction of the default's time (the group sampler's
# compacted widths × decode phases, the step's shared-prefix branches). That the defaults
# compute the same rows and gradients is proven in test_rollout, test_sampling and
# test_shared_prefix; the SIGTERM resume below and the multi-host runs keep them end to end.
ROW_WISE = {"share_prefix": False, "compact": False, "decode_phases": 1}
ROW_WISE_FLAGS = [f"--config.sampling.{key}={value}" for key, value in ROW_WISE.items()]


def row_wise(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.sampling.update(ROW_WISE)
    return c


def smoke_config(data_path: str, **train):
    c = config_lib.smoke(config_lib.default_config())
    c.data.path = data_path
    c.train.progress_bar = False
    c.train.save_every = 3  # the SIGTERM at step 2 has to save on its own
    c.train.update(train)
    return c


def final_state(workdir):
    """The newest checkpoint's TrainState as numpy, restored without knowing the config."""
    workdir, step = checkpoint_lib.locate(str(workdir))
    checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
    meta = checkpointer.meta(step)
    exp = experiment.build(
        ml_collections.ConfigDict(meta["config"]), num_devices=jax.device_count()
    )
    exp = exp.with_total_steps(exp.train.num_steps)
    model_config = checkpoint_lib.model_config_from_json(meta["model_config"])
    mesh = sharding.make_mesh(exp.mesh_shape)
    _, abstract = trainer.abstract_train_state(model_config, exp, mesh)
    state, data_state, _ = checkpointer.restore(step, abstract)
    checkpointer.close()
    return step, jax.device_get(state), data_state


def check_outputs(workdir: pathlib.Path) -> None:
    """What a 4-step smoke run with eval every 2 steps leaves in its workdir."""
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "4"]
    records = logging_utils.read_jsonl(workdir / logging_utils.METRICS_FILE)
    for phase in ("data", "sample", "decode", "reward", "train_dispatch", "step"):
        assert all(r[f"time/{phase}_s"] >= 0 for r in records), phase
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["loss"]) for r in records)
    samples = logging_utils.read_jsonl(workdir / logging_utils.SAMPLES_FILE)
    assert [s["step"] for s in samples] == [2, 2, 4, 4]
    assert os.listdir(workdir / logging_utils.TB_DIR)
    assert (workdir / tokenization.TOKENIZER_DIR / "tokenizer.json").exists()
    evaluations = logging_utils.read_jsonl(workdir / logging_utils.EVAL_FILE)
    assert [e["step"] for e in evaluations] == [2, 4]
    assert all(e["num_rows"] == 8 and 0 <= e["pass@1"] <= e["pass@2"] <= 1 for e in evaluations)


def interrupt_and_resume(make_config, data_file, workdir: pathlib.Path) -> list[dict]:
    """A 4-step run SIGTERMed after step 2 and resumed; returns its metrics records."""

    def sigterm_after_step_2(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the trainer's handler

    previous = signal.getsignal(signal.SIGTERM)
    first = trainer.train(make_config(data_file), str(workdir), step_callback=sigterm_after_step_2)
    assert first == trainer.TrainResult(step=2, total_steps=4, preempted=True)
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    second = trainer.train(make_config(data_file), str(workdir))
    assert second == trainer.TrainResult(step=4, total_steps=4, preempted=False)
    return logging_utils.read_jsonl(workdir / logging_utils.METRICS_FILE)


def assert_same_state(workdir, baseline_workdir):
    """Both runs' last checkpoints: same step, data iterator state and every leaf bitwise."""
    step, resumed, resumed_data = final_state(workdir)
    expected_step, expected, expected_data = final_state(baseline_workdir)
    assert step == expected_step == 4 and resumed_data == expected_data
    leaves = jax.tree_util.tree_leaves_with_path(expected)
    for (path, want), got in zip(leaves, jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
    return expected


def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path):
    data_file = write_rows(tmp_path / "train.jsonl")
    uninterrupted = tmp_path / "uninterrupted"
    config = smoke_config(data_file, eval_every=2)  # evaluation must not disturb training
    config.eval.path = data_file
    result = trainer.train(config, str(uninterrupted))
    assert result == trainer.TrainResult(step=4, total_steps=4, preempted=False)
    check_outputs(uninterrupted)

    interrupted = tmp_path / "interrupted"
    records = interrupt_and_resume(smoke_config, data_file, interrupted)
    expected = assert_same_state(interrupted, uninterrupted)
    assert int(expected.controller.count) == 4

    baseline = logging_utils.read_jsonl(uninterrupted / logging_utils.METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["rows"] for r in records] == [r["rows"] for r in baseline]  # the batches seen
    for name in ("loss", "reward", "guidance_length", "kl", "grad_norm"):
        assert [r[name] for r in records] == [r[name] for r in baseline], name
    # The run exercised what it should: rewards, a moving ℓ, sharded rows, a full epoch.
    assert max(r["accuracy"] for r in baseline) > 0
    assert int(expected.controller.length) < 24  # ℓ moved (from step 5 on: 24·0.375/0.75)
    assert sorted(sum((r["rows"] for r in baseline), [])) == list(range(16))
    # The tied-group metrics of every step, in metrics.jsonl and TensorBoard.
    ties = [f"groups/{p}zero_std{s}" for p in ("", "guided_", "unguided_")
            for s in ("", "_all_correct", "_all_wrong")]  # fmt: skip
    assert all(0 <= r[name] <= 1 for r in baseline for name in ties)
    assert max(r["groups/zero_std"] for r in baseline) > 0  # the even rows' groups all fail
    assert all(r["effective_rows"] <= 16 and "truncated_fraction" in r for r in baseline)
    assert set(ties) <= tensorboard_tags(uninterrupted)
    # Entropy and the sampler–trainer gap of every step too. Same weights and fp32: the gap
    # (at the sampler's τ = 0.7) is the decode path's rounding only.
    token_stats = ["entropy", "entropy_guided", "entropy_unguided", "rollout/logp_diff_mean",
                   "rollout/logp_diff_max", "rollout/ratio_min", "rollout/ratio_max",
                   "rollout/masked_fraction"]  # fmt: skip
    assert all(r["entropy"] > 0 and r["rollout/logp_diff_max"] < 1e-3 for r in baseline)
    assert set(token_stats) <= tensorboard_tags(uninterrupted)


def short_budget_config(data_path: str, **train):
    """8-token completions, the guided ones all trace: nearly every row hits the budget."""
    c = row_wise(smoke_config(data_path, alarm_steps=1, sample_every=0, **train))
    c.data.max_completion_length = c.eval.max_completion_length = 8
    c.guidance.initial_length = c.guidance.max_length = 8
    return c


def test_stop_on_alarm_saves_and_stops_and_a_resumed_run_keeps_the_streak(tmp_path, capsys):
    data_file = write_rows(tmp_path / "train.jsonl")
    workdir = tmp_path / "run"
    # Step 1's metrics are read while step 2 runs: the run stops after step 2, saved.
    with pytest.raises(alarms.TrainingAlarm, match=r"^alarm at step 1: .* \(now 8\) "
                       r"\(train.stop_on_alarm: saved step 2\)$"):  # fmt: skip
        trainer.train(short_budget_config(data_file, stop_on_alarm=True), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    assert "alarm at step 1" in capsys.readouterr().out  # the end-of-run report repeats it

    # Resumed without stop_on_alarm: the streak goes on from the checkpoint's count, so the
    # alarm is not raised again (a lost count would raise it at step 3), nor counted twice.
    trainer.train(short_budget_config(data_file), str(workdir))
    records = logging_utils.read_jsonl(workdir / logging_utils.METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["truncated_fraction"] >= alarms.TRUNCATED_AT for r in records)
    raised = logging_utils.read_jsonl(workdir / logging_utils.ALARMS_FILE)
    assert {a["step"] for a in raised} == {1}  # truncation, and ties if every group tied

    def streak(hit) -> int:
        return sum(1 for _ in itertools.takewhile(hit, reversed(records)))

    checkpointer = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
    assert checkpointer.meta(4)[alarms.META_KEY] == {
        "truncation": 4, "ties": streak(lambda r: r["groups/zero_std"] >= 1)}  # fmt: skip
    checkpointer.close()


def tensorboard_tags(workdir: pathlib.Path) -> set[str]:
    """The scalar tags in a run's TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in (workdir / logging_utils.TB_DIR).iterdir():
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = np.frombuffer(data[at : at + 8], np.uint64)
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + int(length)])
            tags |= {value.tag for value in event.summary.value}
            at += 16 + int(length)
    return tags


def filtering_config(data_path: str):
    """The smoke run with DAPO dynamic sampling: two epochs of data, for the extra batches;
    each draw guides only the groups whose unguided candidates all failed (two sampler
    calls a draw, the plan read from the first's rewards). That needs the group sampler's
    per-row budgets, so only its compaction and decode phases are turned off."""
    c = smoke_config(data_path, save_every=2)
    c.sampling.update(compact=False, decode_phases=1)
    c.grpo.filter_zero_std_groups = True
    c.grpo.filter_max_extra_batches = 2
    c.data.num_epochs = 3
    c.guidance.when = "unguided_failed"
    return c


def test_filtered_groups_never_tie_and_resume_stays_exact(tmp_path):
    data_file = write_rows(tmp_path / "train.jsonl")
    uninterrupted = tmp_path / "uninterrupted"
    assert trainer.train(filtering_config(data_file), str(uninterrupted)).step == 4
    baseline = logging_utils.read_jsonl(uninterrupted / logging_utils.METRICS_FILE)
    # Every trained group has a reward spread: tied ones were dropped or are filler.
    assert all(r["groups/zero_std"] == 0 for r in baseline)
    assert all(r["filter/filler_groups"] == 0 for r in baseline)  # refills sufficed here
    assert sum(r["filter/extra_sampler_calls"] for r in baseline) > 0
    # The random policy's unguided candidates fail, so the second calls guide (the rule's
    # other branch is tests/test_guidance_on_failure.py's).
    assert all(0 < r["guidance/groups_guided"] <= 1 for r in baseline)
    assert all(r["filter/sampled_zero_std"] > 0 for r in baseline)
    # More rows were read than trained: the extra batches moved the iterator.
    assert all(len(r["rows"]) > 4 for r in baseline if r["filter/extra_sampler_calls"])

    # SIGTERMed after step 2 and resumed: the iterator state saved covers the extra batches
    # drawn, and the resumed steps plan their guidance as the uninterrupted run did.
    interrupted = tmp_path / "interrupted"
    records = interrupt_and_resume(filtering_config, data_file, interrupted)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert_same_state(interrupted, uninterrupted)
    filtered = ("filter/extra_sampler_calls", "filter/dropped_groups")
    guided = ("guidance/groups_guided", "guidance/trace_tokens")
    for name in ("rows", "loss", "reward", *filtered, *guided):
        assert [r[name] for r in records] == [r[name] for r in baseline], name


_KILLED_MID_SAVE = """
import asyncio, os, sys
import jax.numpy as jnp
from g2rpo_jax import checkpoint
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

checkpointer = checkpoint.Checkpointer(sys.argv[1], keep=3)
checkpointer.save(1, {"w": jnp.arange(1000.0), "step": jnp.asarray(1)}, {"next_index": 1},
                  {"step": 1})
checkpointer.wait()
folder = os.path.join(sys.argv[1], "checkpoints")

async def hang(*args, **kwargs):  # step 2's JSON items never finish writing
    while not any(p.startswith("2.") for p in os.listdir(folder)):
        await asyncio.sleep(0.01)
    print("SAVING", flush=True)
    await asyncio.sleep(600)

handler.JsonCheckpointHandler.async_save = hang
checkpointer.save(2, {"w": jnp.zeros(1000), "step": jnp.asarray(2)}, {"next_index": 2}, {})
checkpointer.wait()
"""


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_MID_SAVE), str(tmp_path)],
                             stdout=subprocess.PIPE, cwd=REPO)  # fmt: skip
    timer = threading.Timer(300, child.kill)  # never hang the suite
    timer.start()
    try:
        assert child.stdout.readline().strip() == b"SAVING"
        # The child saw step 2's temporary folder before it hung.
    finally:
        child.kill()  # SIGKILL
        child.wait()
        timer.cancel()
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
    assert checkpointer.latest_step() == 1
    abstract = {"w": jax.ShapeDtypeStruct((1000,), np.float32),
                "step": jax.ShapeDtypeStruct((), np.int32)}  # fmt: skip
    state, data_state, meta = checkpointer.restore(1, abstract)
    np.testing.assert_array_equal(state["w"], np.arange(1000.0))
    assert data_state == {"next_index": 1} and meta == {"step": 1}
    checkpointer.close()
    assert not [p for p in os.listdir(tmp_path / "checkpoints") if p.startswith("2")]


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (4, 4, 2), (6, 3, 6)])
def test_pass_at_k_is_the_probability_that_k_of_n_samples_hold_a_correct_one(n, c, k):
    import itertools

    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    assert evaluation.pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets))


def test_a_lora_checkpoint_holds_the_adapters_and_resumes_on_the_base(tmp_path):
    """Under LoRA a checkpoint holds the adapters, not the base, which a resumed run reads
    again from its location (here the seeded random init). Checked at the checkpoint: a
    step, its save, a fresh set-up that restores it; the restored state and the next step
    equal the live run's bitwise (the loop around them is the SIGTERM test's)."""
    config = _with_lora(row_wise(smoke_config(write_rows(tmp_path / "train.jsonl"))))
    workdir = tmp_path / "run"
    batches = [make_batch(seed) for seed in (0, 1)]  # rows shaped as a step's (B·G = 16)
    run, state, iterator = trainer._setup(config, str(workdir))
    place = lambda batch: jax.device_put(batch, run.rollout.sharding)
    state, _ = run.step_fn(state, place(batches[0]))
    trainer._save(run, 1, state, iterator)
    _close(run)  # waits for the save
    saved = jax.device_get(state)
    live, live_metrics = jax.device_get(run.step_fn(state, place(batches[1])))

    step, on_disk, _ = final_state(workdir)
    assert step == 1 and on_disk.frozen is None and on_disk.ref_params is None
    assert _flat_keys(on_disk.params) and all("lora_" in k for k in _flat_keys(on_disk.params))
    resumed_run, resumed, _ = trainer._setup(config, str(workdir))
    _close(resumed_run)
    assert resumed_run.start == 1
    for name, want, got in _leaves(saved, jax.device_get(resumed)):  # the base read again too
        np.testing.assert_array_equal(got, want, err_msg=name)
    after, metrics = jax.device_get(resumed_run.step_fn(resumed, place(batches[1])))
    for name, want, got in _leaves(live, after):
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert metrics.keys() == live_metrics.keys() and live_metrics["grad_norm"] > 0
    for name in metrics:
        np.testing.assert_array_equal(metrics[name], live_metrics[name], err_msg=name)


def _close(run) -> None:
    """What train() closes at its end: the checkpointer (waiting for a save), rewards, logs."""
    run.checkpointer.close()
    run.rollout.pool.close()
    run.logger.close()


def _leaves(expected, actual):
    """(path, expected leaf, actual leaf) of two trees of the same structure."""
    leaves = jax.tree_util.tree_leaves_with_path(expected)
    for (path, want), got in zip(leaves, jax.tree.leaves(actual), strict=True):
        yield jax.tree_util.keystr(path), want, got


def _with_lora(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.model.lora.rank = 4
    return c


def _flat_keys(state) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
