"""LoRA runs: low-rank adapters trained on a frozen base (README "LoRA").

The base is the run's initial policy without adapters: a Hugging Face folder (or hub id),
or a seeded random init of the checkpoint's architecture. A checkpoint holds the adapters
and the base's location (`base_location`), never the base weights; resume, evaluation and
export read the base again from there (`load_base`). `merged` folds the adapters into the
weights, W + (alpha/r)·A·B, for a plain Hugging Face export.
"""

import functools
import os

import jax
import jax.numpy as jnp
from flax import nnx

from g2rpo_jax import sharding
from g2rpo_jax.models import ModelConfig, Qwen, abstract_model, from_pretrained
from g2rpo_jax.models.config import LoraConfig
from g2rpo_jax.models.qwen import LoraParam

# The base weights of a LoRA model: every parameter but the adapters.
BASE = nnx.All(nnx.Param, nnx.Not(LoraParam))


def random_model(config: ModelConfig, mesh: jax.sharding.Mesh, seed: int) -> Qwen:
    """A randomly initialized model, created straight into its shardings."""
    graphdef, init = _sharded_init(config, mesh)
    return nnx.merge(graphdef, init(jax.random.key(seed)))


def add_adapters(base: Qwen, lora: LoraConfig, seed: int, mesh: jax.sharding.Mesh) -> Qwen:
    """`base` (no adapters) with fresh adapters of `lora`: A random from `seed`, B = 0.

    Only the adapters are computed: the jitted init returns nothing else, so XLA drops the
    base weights' random init, and `base`'s arrays are reused as they are.
    """
    graphdef, init = _sharded_init(base.config.replace(lora=lora), mesh, (LoraParam,))
    return nnx.merge(graphdef, init(jax.random.key(seed)), nnx.state(base, nnx.Param))


@functools.lru_cache(maxsize=8)
def _sharded_init(config: ModelConfig, mesh: jax.sharding.Mesh, filters: tuple = ()):
    """(graphdef, key → the `filters` state of a fresh model of `config`, jitted straight
    into its shardings). Kept per architecture and mesh, so that a process initializing one
    model again (a LoRA resume reads its random base again; tests run many) compiles once."""
    graphdef, abstract = nnx.split(abstract_model(config))
    shardings = sharding.state_shardings(nnx.state(abstract, *filters), mesh)
    fresh = lambda key: nnx.state(Qwen(config, rngs=nnx.Rngs(key)), *filters)
    return graphdef, jax.jit(fresh, out_shardings=shardings)


def base_location(path: str, seed: int) -> dict:
    """Where a LoRA run's base is read again: {"path": a folder (absolute) or hub id} or,
    with path "", the random init of `seed` (its shape is the checkpoint's ModelConfig)."""
    return {"path": os.path.abspath(path) if os.path.isdir(path) else path, "seed": seed}


def load_base(location: dict, config: ModelConfig, mesh: jax.sharding.Mesh) -> nnx.State:
    """The frozen base weights (`BASE` of a model of `config`) placed on `mesh`."""
    base_config = config.replace(lora=LoraConfig())
    if location["path"]:
        model, loaded = from_pretrained(
            location["path"],
            dtype=config.dtype,
            mesh=mesh,
            param_dtype=config.param_dtype,
            attention=config.attention,
        )
        for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size"):
            if getattr(loaded, field) != getattr(base_config, field):
                raise ValueError(
                    f"{location['path']}: {field}={getattr(loaded, field)}, but the "
                    f"adapters were trained on {getattr(base_config, field)}"
                )
    else:
        model = random_model(base_config, mesh, location["seed"])
    return nnx.state(model, nnx.Param)


def merged(model: Qwen) -> Qwen:
    """A model without adapters whose weights are W + (alpha/r)·A·B (in float32, then cast
    to the weight dtype): the same function as `model`, up to rounding."""
    config = model.config
    if not config.lora.rank:
        return model
    base = nnx.to_pure_dict(nnx.state(model, BASE))
    adapters = nnx.to_pure_dict(nnx.state(model, LoraParam))

    def fold(weights: dict, factors: dict) -> None:
        for key, sub in factors.items():
            if isinstance(key, str) and key.endswith("_lora_a"):
                name = key[: -len("_lora_a")]
                w = weights[f"{name}_proj"]
                delta = jnp.tensordot(sub, factors[f"{name}_lora_b"], axes=1)
                weights[f"{name}_proj"] = (
                    w.astype(jnp.float32) + config.lora.scale * delta
                ).astype(w.dtype)
            elif isinstance(sub, dict):
                fold(weights[key], sub)

    fold(base, adapters)
    plain = abstract_model(config.replace(lora=LoraConfig()))
    state = nnx.state(plain)
    nnx.replace_by_pure_dict(state, base)
    return nnx.merge(nnx.graphdef(plain), state)
