"""Hugging Face checkpoints <-> our decoder: config.json, safetensors (single or sharded).

Hugging Face stores a linear layer as [out, in]; we store [in..., out...] with heads split
out (q: [D, N, H], o: [N, H, D]) so einsums name every axis. `_tensor_map` is the single
table that says how each tensor moves between the two layouts.
"""

import dataclasses
import json
import logging
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from g2rpo_jax.models.config import ModelConfig, RopeScaling, dtype_name
from g2rpo_jax.models.qwen import Qwen, abstract_model

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


# ---------------------------------------------------------------- config.json


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a Hugging Face config dict (transformers 4 or 5 layout)."""
    model_type = hf.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; g2rpo-jax ports the dense "
            f"decoders {sorted(_ARCHITECTURES)} (Qwen2, Qwen2.5, Qwen2.5-Math, Qwen3)"
        )
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported")
    # transformers 5 writes rope_parameters; older files write rope_theta + rope_scaling.
    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    kind = rope.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    scaling = None
    if kind != "default":
        params = {**legacy, **rope}
        if kind not in ("linear", "yarn"):
            raise ValueError(
                f"{source}: rope type {kind!r} is not supported (default, linear, yarn are)"
            )
        scaling = RopeScaling(
            kind=kind,
            factor=float(params["factor"]),
            original_max_position_embeddings=params.get("original_max_position_embeddings"),
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            attention_factor=params.get("attention_factor"),
            mscale=params.get("mscale"),
            mscale_all_dim=params.get("mscale_all_dim"),
            truncate=params.get("truncate", True),
        )
    heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    qwen3 = model_type == "qwen3"
    return ModelConfig(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(theta),
        rope_scaling=scaling,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        qkv_bias=bool(hf.get("attention_bias", False)) if qwen3 else True,
        o_bias=bool(hf.get("attention_bias", False)) if qwen3 else False,
        qk_norm=qwen3,
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
    )


def config_to_hf(config: ModelConfig, dtype: str) -> dict:
    """A config.json that transformers' AutoConfig reads back as the same architecture."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        s = dataclasses.asdict(config.rope_scaling)
        rope = {"rope_theta": config.rope_theta, "rope_type": s.pop("kind")}
        rope.update({k: v for k, v in s.items() if v is not None})
    hf = {
        "architectures": [_ARCHITECTURES[config.model_type]],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "use_sliding_window": False,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "dtype": dtype,
    }
    if config.model_type == "qwen3":
        hf["attention_bias"] = config.qkv_bias
    return hf


# ---------------------------------------------------------------- tensor names


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One checkpoint tensor: its HF name, our state path, and how layouts relate.

    n_in: for a linear weight, how many leading axes of ours are the input (HF transposes);
    None for tensors kept as they are (norms, embeddings) or only flattened (`flat`, biases).
    """

    hf_name: str
    path: tuple
    n_in: int | None = None
    flat: bool = False


def _tensor_map(config: ModelConfig) -> list[_Tensor]:
    tensors = [_Tensor("model.embed_tokens.weight", ("embed",))]
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}", ("layers", i)
        att = ours + ("attn",)
        tensors += [
            _Tensor(f"{hf}.input_layernorm.weight", ours + ("input_norm", "weight")),
            _Tensor(
                f"{hf}.post_attention_layernorm.weight", ours + ("post_attention_norm", "weight")
            ),
            _Tensor(f"{hf}.self_attn.q_proj.weight", att + ("q_proj",), n_in=1),
            _Tensor(f"{hf}.self_attn.k_proj.weight", att + ("k_proj",), n_in=1),
            _Tensor(f"{hf}.self_attn.v_proj.weight", att + ("v_proj",), n_in=1),
            _Tensor(f"{hf}.self_attn.o_proj.weight", att + ("o_proj",), n_in=2),
            _Tensor(f"{hf}.mlp.gate_proj.weight", ours + ("mlp", "gate_proj"), n_in=1),
            _Tensor(f"{hf}.mlp.up_proj.weight", ours + ("mlp", "up_proj"), n_in=1),
            _Tensor(f"{hf}.mlp.down_proj.weight", ours + ("mlp", "down_proj"), n_in=1),
        ]
        if config.qkv_bias:
            tensors += [
                _Tensor(f"{hf}.self_attn.{n}_proj.bias", att + (f"{n}_bias",), flat=True)
                for n in "qkv"
            ]
        if config.o_bias:
            tensors.append(_Tensor(f"{hf}.self_attn.o_proj.bias", att + ("o_bias",)))
        if config.qk_norm:
            tensors += [
                _Tensor(f"{hf}.self_attn.q_norm.weight", att + ("q_norm", "weight")),
                _Tensor(f"{hf}.self_attn.k_norm.weight", att + ("k_norm", "weight")),
            ]
    tensors.append(_Tensor("model.norm.weight", ("final_norm", "weight")))
    if not config.tie_word_embeddings:
        tensors.append(_Tensor("lm_head.weight", ("lm_head",), n_in=1))
    return tensors


def _hf_shape(t: _Tensor, ours: tuple) -> tuple:
    if t.flat:
        return (int(np.prod(ours)),)
    if t.n_in is None:
        return tuple(ours)
    return (int(np.prod(ours[t.n_in :])), int(np.prod(ours[: t.n_in])))


def _to_ours(t: _Tensor, array: np.ndarray, shape: tuple) -> np.ndarray:
    return (array if t.n_in is None else array.T).reshape(shape)


def _to_hf(t: _Tensor, array: np.ndarray) -> np.ndarray:
    if t.n_in is None:
        return array.reshape(_hf_shape(t, array.shape))
    rows = int(np.prod(array.shape[: t.n_in]))
    return np.ascontiguousarray(array.reshape(rows, -1).T)


# ---------------------------------------------------------------- loading


def is_hub_id(path: str) -> bool:
    """`path` names a hub repo, not a local file or folder (which start with . / ~ or exist)."""
    return bool(path) and not os.path.exists(path) and not path.startswith((".", "/", "~"))


def resolve_model_dir(path_or_hub_id: str) -> str:
    """The local folder of a model: the path itself, or the hub repo's cached snapshot
    (downloaded on first use)."""
    if os.path.isdir(path_or_hub_id):
        return path_or_hub_id
    if not is_hub_id(path_or_hub_id):
        raise FileNotFoundError(f"{path_or_hub_id}: not a model directory")
    import huggingface_hub

    log.info("downloading %s from the Hugging Face hub", path_or_hub_id)
    return huggingface_hub.snapshot_download(
        path_or_hub_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"]
    )


def _weight_files(directory: str) -> dict[str, str]:
    """Maps every tensor name to the safetensors file that holds it."""
    index = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(directory, file) for name, file in weight_map.items()}
    single = os.path.join(directory, SINGLE_FILE)
    if not os.path.exists(single):
        raise FileNotFoundError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    with safetensors.safe_open(single, framework="numpy") as f:
        return {name: single for name in f.keys()}


def _read_tensors(files: dict[str, str], names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yields tensors one file at a time, opening each file once."""
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for file, file_names in by_file.items():
        with safetensors.safe_open(file, framework="numpy") as f:
            for name in file_names:
                yield name, f.get_tensor(name)


def from_pretrained(
    path_or_hub_id: str,
    *,
    dtype="float32",
    param_dtype=None,
    mesh: jax.sharding.Mesh | None = None,
    attention: str = "auto",
) -> tuple[Qwen, ModelConfig]:
    """Loads a Hugging Face Qwen2/Qwen3 checkpoint (a local folder or a hub id).

    dtype is the compute dtype; param_dtype (default: dtype) the dtype weights are kept in;
    each a name ("bfloat16"), a jnp dtype (jnp.bfloat16) or a numpy dtype. attention: the
    attention implementation (ModelConfig.attention; a runtime choice, not in config.json). With a mesh, each weight is placed straight into its sharding (sharding.py rules).
    """
    directory = resolve_model_dir(path_or_hub_id)
    config_path = os.path.join(directory, "config.json")
    with open(config_path) as f:
        config = config_from_hf(json.load(f), source=config_path)
    param_dtype = dtype if param_dtype is None else param_dtype
    config = config.replace(dtype=dtype, param_dtype=param_dtype, attention=attention)
    graphdef, abstract_state = nnx.split(abstract_model(config))
    flat = dict(nnx.to_flat_state(abstract_state))
    shardings = None
    if mesh is not None:
        from g2rpo_jax import sharding

        shardings = dict(nnx.to_flat_state(sharding.state_shardings(abstract_state, mesh)))

    files = _weight_files(directory)
    tensors = _tensor_map(config)
    missing = [t.hf_name for t in tensors if t.hf_name not in files]
    if missing:
        where = INDEX_FILE if os.path.exists(os.path.join(directory, INDEX_FILE)) else SINGLE_FILE
        raise KeyError(
            f"{os.path.join(directory, where)}: missing tensor {missing[0]!r}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    unused = set(files) - {t.hf_name for t in tensors}
    if unused - {"lm_head.weight"}:  # tied checkpoints sometimes also store the head
        log.warning(
            "ignoring %d tensors not used by %s: %s",
            len(unused),
            config.model_type,
            sorted(unused)[:5],
        )
    by_name = {t.hf_name: t for t in tensors}
    weight_dtype = _NUMPY_DTYPES[config.param_dtype]
    for name, array in _read_tensors(files, list(by_name)):
        t = by_name[name]
        variable = flat[t.path]
        expected = _hf_shape(t, variable.shape)
        if tuple(array.shape) != expected:
            raise ValueError(
                f"{files[name]}: tensor {name!r} has shape {tuple(array.shape)}, "
                f"expected {expected} for this config.json"
            )
        value = _to_ours(t, array, variable.shape).astype(weight_dtype)
        placed = jax.device_put(value, shardings[t.path] if shardings else None)
        flat[t.path] = variable.replace(placed)
    model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    return model, config


# ---------------------------------------------------------------- saving


def save_pretrained(
    model: Qwen,
    out_dir: str,
    *,
    dtype=None,
    max_shard_bytes: int = 4 * 2**30,
) -> None:
    """Writes config.json and safetensors (sharded with an index past max_shard_bytes).

    dtype: the dtype on disk (default: the model's param dtype), a name, jnp or numpy dtype.
    """
    config: ModelConfig = model.config
    dtype = config.param_dtype if dtype is None else dtype_name(dtype)
    os.makedirs(out_dir, exist_ok=True)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    out_dtype = _NUMPY_DTYPES[dtype]
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for t in _tensor_map(config):
        array = np.asarray(jax.device_get(flat[t.path][...]).astype(jnp.float32))
        array = _to_hf(t, array).astype(out_dtype)
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][t.hf_name] = array
        size += array.nbytes
    for stale in (SINGLE_FILE, INDEX_FILE):
        if os.path.exists(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    metadata = {"format": "pt"}
    if len(shards) == 1:
        safetensors.numpy.save_file(shards[0], os.path.join(out_dir, SINGLE_FILE), metadata)
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            safetensors.numpy.save_file(shard, os.path.join(out_dir, name), metadata)
            weight_map.update(dict.fromkeys(shard, name))
            total += sum(a.nbytes for a in shard.values())
        with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_to_hf(config, dtype), f, indent=2)
