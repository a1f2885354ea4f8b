"""Orbax checkpoints of a run: the train state, the data iterator's position and the config.

Layout: `WORKDIR/checkpoints/<step>/{state,data,meta}`, `step` = completed train steps.
- state: the TrainState pytree (params, optimizer state, reference params, ℓ controller,
  optimizer step), restored straight into its shardings;
- data: the Grain iterator state (JSON), so a resumed run reads the next batch it would have;
- meta: JSON with the config, the ModelConfig and where the tokenizer is; under LoRA also
  `base_model`, where the frozen base weights are read again (they are not in `state`).
The sampling PRNG needs no entry: step k's key is fold_in(key(seed), k).

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoints intact; the half-written directory
is removed when the next CheckpointManager opens the folder.
"""

import dataclasses
import logging as py_logging
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from g2rpo_jax import lora as lora_lib
from g2rpo_jax import sharding
from g2rpo_jax.models import ModelConfig, Qwen, RopeScaling, abstract_model
from g2rpo_jax.models.config import LoraConfig
from g2rpo_jax.models.qwen import LoraParam

STATE, DATA, META = "state", "data", "meta"
BASE_MODEL = "base_model"  # meta key: `lora.base_location` of a LoRA run
SUBDIR = "checkpoints"


def abstract_like(tree, shardings):
    """ShapeDtypeStructs of `tree` (arrays or abstract) placed with `shardings`, a prefix tree
    of `tree` (one sharding per nnx.Variable)."""
    return jax.tree.map(
        lambda s, sub: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sub
        ),
        shardings,
        tree,
    )


def model_config_to_json(config: ModelConfig) -> dict:
    return dataclasses.asdict(config)


def model_config_from_json(d: dict) -> ModelConfig:
    d = dict(d)
    # Checkpoints written while remat was a model field (it is a train-step setting now).
    d.pop("remat", None)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    if d.get("lora") is not None:
        d["lora"] = LoraConfig(**d["lora"])
    return ModelConfig(**d)


# Orbax saves a replicated array by having each replica write a slice of it, one compiled
# slice per shape and replica at the first save (64 on the smoke model, ~2 s). Below 1 MiB
# a slice's compile costs more than the parallel write saves, so small arrays are written
# whole by one replica; a real model's matrices are still split. Other leaf types keep
# orbax's standard handlers.
_STATE_TYPES = ocp.type_handlers.create_type_handler_registry(
    (jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20)),
    *((t, ocp.type_handlers.get_type_handler(t)) for t in (np.ndarray, np.number, int, float, str)),
)


class Checkpointer:
    """Saves and restores a run's checkpoints under `WORKDIR/checkpoints`; keeps the last `keep`."""

    def __init__(
        self,
        workdir: str,
        *,
        keep: int | None = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = os.path.join(os.path.abspath(workdir), SUBDIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        handlers = {
            STATE: ocp.PyTreeCheckpointHandler(type_handler_registry=_STATE_TYPES),
            DATA: ocp.JsonCheckpointHandler(),
            META: ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(
            self.directory, item_handlers=handlers, options=options
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        """Starts saving (asynchronously when enabled); device arrays are copied to the host
        before this returns, so the caller may donate `state` right after."""
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.PyTreeSave(state),
                DATA: ocp.args.JsonSave(data_state),
                META: ocp.args.JsonSave(meta),
            }
        )
        self._manager.save(step, args=args, force=True)

    def wait(self) -> None:
        """Blocks until the last save is on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state) -> tuple[object, dict, dict]:
        """(state, data iterator state, meta) of `step`; `abstract_state` gives the tree,
        dtypes and shardings (see `abstract_like`), which may differ from the saving run's
        (another host or device count)."""
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args),
                DATA: ocp.args.JsonRestore(),
                META: ocp.args.JsonRestore(),
            }
        )
        restored = self._manager.restore(step, args=args)
        return restored[STATE], restored[DATA], restored[META]

    def restore_params(self, step: int, abstract_params):
        """Only the policy weights of `step` (export and evaluation need no optimizer state)."""
        item = {"params": abstract_params}
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        args = ocp.args.Composite(
            **{STATE: ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True)}
        )
        return self._manager.restore(step, args=args)[STATE]["params"]

    def meta(self, step: int) -> dict:
        args = ocp.args.Composite(**{META: ocp.args.JsonRestore()})
        return self._manager.restore(step, args=args)[META]

    def close(self) -> None:
        self._manager.wait_until_finished()
        # Orbax removes an interrupted save's temporary folder in a background thread and
        # waits for it only in save(): a run that opens and closes without saving would
        # leave it racing the exit.
        await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()
        self._manager.close()


def locate(path: str) -> tuple[str, int]:
    """(workdir, step) from a workdir (its newest checkpoint), its checkpoints folder, or one
    step's folder (`WORKDIR/checkpoints/<step>`)."""
    path = os.path.abspath(path.rstrip("/"))
    name = os.path.basename(path)
    parent = os.path.dirname(path)
    if re.fullmatch(r"\d+", name) and os.path.basename(parent) == SUBDIR:
        return os.path.dirname(parent), int(name)
    workdir = parent if name == SUBDIR else path
    if not os.path.isdir(os.path.join(workdir, SUBDIR)):
        raise FileNotFoundError(f"{path}: no {SUBDIR}/ folder, not a training workdir")
    checkpointer = Checkpointer(workdir, read_only=True)
    step = checkpointer.latest_step()
    checkpointer.close()
    if step is None:
        raise FileNotFoundError(f"{workdir}: no complete checkpoint")
    return workdir, step


def load_policy(path: str, device: jax.Device | None = None) -> tuple[Qwen, dict]:
    """The policy of a training checkpoint (a workdir's newest, or a step folder) on one
    device, and the checkpoint's meta with `workdir`, `step` and `tokenizer_path` added.
    A LoRA checkpoint's policy is its adapters on the base read from `meta[BASE_MODEL]`."""
    workdir, step = locate(path)
    checkpointer = Checkpointer(workdir, read_only=True)
    meta = checkpointer.meta(step)
    model_config = model_config_from_json(meta["model_config"])
    graphdef, abstract = nnx.split(abstract_model(model_config))
    if model_config.lora.rank:
        abstract = nnx.state(abstract, LoraParam)  # what the checkpoint holds as params
    placed = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    shardings = jax.tree.map(
        lambda _: placed, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    params = checkpointer.restore_params(step, abstract_like(abstract, shardings))
    checkpointer.close()
    if model_config.lora.rank:
        mesh = sharding.make_mesh((1, 1, 1), devices=[device or jax.devices()[0]])
        params = nnx.merge_state(params, lora_lib.load_base(meta[BASE_MODEL], model_config, mesh))
    tokenizer_path = os.path.join(workdir, meta["tokenizer"])
    return nnx.merge(graphdef, params), meta | {
        "workdir": workdir,
        "step": step,
        "tokenizer_path": tokenizer_path,
    }


class _QuietOrbax(py_logging.Filter):
    """Drops orbax's per-save INFO lines (a dozen per checkpoint); warnings still show."""

    def filter(self, record) -> bool:
        return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def quiet_orbax_logs() -> None:
    logger = py_logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())
