"""Flax NNX decoder for dense Qwen2 / Qwen2.5 / Qwen3 models.

Shape legend: B batch, T query length, S key length (cache slots), D model dim,
N query heads, K kv heads, G query heads per kv head (N = K·G), H head dim,
E = N·H, F mlp dim, V vocab.

Two entry points share one layer stack:
- `model(input_ids, positions, attention_mask)` runs a full causal forward over a
  (left-)padded batch and returns logits [B, T, V];
- `model(input_ids, positions, attention_mask, cache)` writes the T new tokens into a
  fixed-size KV cache at `cache.index` and returns (logits, cache). Prefill and one-token
  decode steps are the same call with different T.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from g2rpo_jax.models import attention
from g2rpo_jax.models.config import ModelConfig
from g2rpo_jax.models.kv_cache import KVCache, write
from g2rpo_jax.models.rope import apply_rope, rope_frequencies


def _param(rngs: nnx.Rngs | None, shape, axes, dtype, init="normal") -> nnx.Param:
    """A weight tagged with logical axes; sharding.py maps them onto a mesh."""
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class LoraParam(nnx.Param):
    """A low-rank adapter factor: `nnx.state(model, LoraParam)` selects the adapters, and
    `nnx.state(model, nnx.Not(LoraParam), ...)` the frozen base."""


def _lora(module: nnx.Module, name: str, rngs, in_shape, out_shape, in_axes, out_axes) -> None:
    """Adds adapters `{name}_lora_a` [*in, r] and `{name}_lora_b` [r, *out] (zeros) to
    `module` when `config.lora` targets `name`; A is Kaiming-uniform like PEFT's."""
    lora = module.config.lora
    if not lora.applies_to(name):
        return
    fan_in = math.prod(in_shape)
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(rngs.params(), (*in_shape, lora.rank), jnp.float32, -bound, bound)
    setattr(
        module,
        f"{name}_lora_a",
        LoraParam(a, out_sharding=(*in_axes, "lora_rank"), eager_sharding=False),
    )
    b = jnp.zeros((lora.rank, *out_shape), jnp.float32)
    setattr(
        module,
        f"{name}_lora_b",
        LoraParam(b, out_sharding=("lora_rank", *out_axes), eager_sharding=False),
    )


def _lora_delta(module: nnx.Module, name: str, x_BTI: jax.Array, y_BTO: jax.Array) -> jax.Array:
    """y + (alpha/r)·(x·A)·B for `name`'s projection (y itself when it has no adapter);
    x's trailing dims contract with A's leading ones, B's trailing dims are y's. The
    factors run in the compute dtype; the merged weight is never formed."""
    lora = module.config.lora
    if not lora.applies_to(name):
        return y_BTO
    dt = module.config.compute_dtype
    a = getattr(module, f"{name}_lora_a")[...].astype(dt)
    b = getattr(module, f"{name}_lora_b")[...].astype(dt)
    n_in = a.ndim - 1
    h_BTr = jnp.tensordot(x_BTI, a, axes=n_in)
    return y_BTO + (lora.scale * jnp.tensordot(h_BTr, b, axes=1)).astype(y_BTO.dtype)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Per-row positions of a left-padded batch: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype, param_dtype, axis: str):
        self.weight = _param(None, (dim,), (axis,), param_dtype, init="ones")
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * xf.astype(self.dtype)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, kernel: attention.Kernel):
        D, N, K, H = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        pd = config.weight_dtype
        self.q_proj = _param(rngs, (D, N, H), ("embed", "q_heads", "head_dim"), pd)
        self.k_proj = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), pd)
        self.v_proj = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), pd)
        self.o_proj = _param(rngs, (N, H, D), ("q_heads", "head_dim", "embed"), pd)
        if config.qkv_bias:
            self.q_bias = _param(None, (N, H), ("q_heads", "head_dim"), pd, init="zeros")
            self.k_bias = _param(None, (K, H), ("kv_heads", "head_dim"), pd, init="zeros")
            self.v_bias = _param(None, (K, H), ("kv_heads", "head_dim"), pd, init="zeros")
        if config.o_bias:
            self.o_bias = _param(None, (D,), ("embed",), pd, init="zeros")
        if config.qk_norm:
            norm = lambda: RMSNorm(H, config.rms_norm_eps, config.compute_dtype, pd, "head_dim")
            self.q_norm, self.k_norm = norm(), norm()
        self.config, self.kernel = config, kernel
        for name, heads, axis in (("q", N, "q_heads"), ("k", K, "kv_heads"), ("v", K, "kv_heads")):
            _lora(self, name, rngs, (D,), (heads, H), ("embed",), (axis, "head_dim"))
        _lora(self, "o", rngs, (N, H), (D,), ("q_heads", "head_dim"), ("embed",))

    def _project(self, x_BTD, name: str) -> jax.Array:
        dt = self.config.compute_dtype
        y = jnp.einsum("BTD,DNH->BTNH", x_BTD, getattr(self, f"{name}_proj")[...].astype(dt))
        y = _lora_delta(self, name, x_BTD, y)
        if self.config.qkv_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(dt)
        return y

    def __call__(
        self,
        x_BTD,
        cos_BTh,
        sin_BTh,
        q_mask_BT,
        kv_mask_BS,
        kv_cache=None,
        index=None,
        last=None,
        fresh=True,
    ):
        """q_mask_BT: real tokens among x's; kv_mask_BS: real tokens among the key slots (the
        cache's, this call's included). last: queries for the last `last` positions only
        (keys and values for all). fresh: the keys are exactly this call's tokens (no cache,
        or a call that fills its whole cache), so the first query's slot is known statically.
        """
        cfg = self.config
        queries = slice(None) if last is None else slice(-last, None)
        q_BTNH, k_BTKH, v_BTKH = self.qkv(x_BTD, cos_BTh, sin_BTh, queries)
        if kv_cache is not None:
            k_BKHS, v_BKSH = kv_cache = write(kv_cache, k_BTKH, v_BTKH, index)
        B, T, N, H = q_BTNH.shape
        K = cfg.num_kv_heads
        q_offset = (0 if fresh else index) + x_BTD.shape[1] - T  # the first query's slot
        if T == 1 and kv_cache is not None:  # a decode step (or a prefill's last)
            q_BKGH = q_BTNH.reshape(B, K, N // K, H)
            out_BKGH = attention.decode(q_BKGH, k_BKHS, v_BKSH, kv_mask_BS, q_offset)
            out_BTNH = out_BKGH.reshape(B, 1, N, H)
        else:
            if fresh:
                k_BSKH, v_BSKH = k_BTKH, v_BTKH
            else:
                k_BSKH, v_BSKH = k_BKHS.transpose(0, 3, 1, 2), v_BKSH.transpose(0, 2, 1, 3)
            out_BTNH = attention.attend(
                q_BTNH, k_BSKH, v_BSKH, q_mask_BT[:, queries], kv_mask_BS, q_offset, self.kernel
            )
        return self.output(out_BTNH), kv_cache

    def qkv(self, x_BTD, cos_BTh, sin_BTh, queries: slice):
        """Queries (for the `queries` positions), keys and values, normed and rotated."""
        q_BTNH = self._project(x_BTD[:, queries], "q")
        k_BTKH, v_BTKH = self._project(x_BTD, "k"), self._project(x_BTD, "v")
        if self.config.qk_norm:
            q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
        q_BTNH = apply_rope(q_BTNH, cos_BTh[:, queries], sin_BTh[:, queries])
        return q_BTNH, apply_rope(k_BTKH, cos_BTh, sin_BTh), v_BTKH

    def output(self, out_BTNH):
        """The attention output projected back to the model dim, [B, T, D]."""
        dt = self.config.compute_dtype
        B, T, N, H = out_BTNH.shape
        # One contracting axis: with two (N, H), XLA:CPU transposed both operands per call.
        y_BTD = jnp.einsum(
            "BTE,ED->BTD",
            out_BTNH.reshape(B, T, N * H),
            self.o_proj[...].reshape(N * H, -1).astype(dt),
        )
        y_BTD = _lora_delta(self, "o", out_BTNH, y_BTD)
        if self.config.o_bias:
            y_BTD = y_BTD + self.o_bias[...].astype(dt)
        return y_BTD


# The MLP's tile along T (MLP.__call__): its [B, T, F] activations are the largest a layer
# holds once attention is blockwise (benchmarks/memory.py --hidden-states).
MLP_TILE = 512


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        D, F, pd = config.hidden_size, config.intermediate_size, config.weight_dtype
        self.gate_proj = _param(rngs, (D, F), ("embed", "mlp"), pd)
        self.up_proj = _param(rngs, (D, F), ("embed", "mlp"), pd)
        self.down_proj = _param(rngs, (F, D), ("mlp", "embed"), pd)
        self.dtype, self.config = config.compute_dtype, config
        for name, i, o, axes in (
            ("gate", D, F, ("embed", "mlp")),
            ("up", D, F, ("embed", "mlp")),
            ("down", F, D, ("mlp", "embed")),
        ):
            _lora(self, name, rngs, (i,), (o,), axes[:1], axes[1:])

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        """Tiled over T past MLP_TILE tokens: each tile's [B, tile, F] activations are
        recomputed in the backward pass, so a long sequence holds one tile's, not T's."""
        B, T, D = x_BTD.shape
        if T <= MLP_TILE:
            return self._mlp(x_BTD)
        n = -(-T // MLP_TILE)
        tile = -(-T // n)
        x_nBtD = jnp.pad(x_BTD, ((0, 0), (0, n * tile - T), (0, 0)))
        x_nBtD = x_nBtD.reshape(B, n, tile, D).swapaxes(0, 1)
        y_nBtD = jax.lax.map(jax.checkpoint(self._mlp), x_nBtD)
        return y_nBtD.swapaxes(0, 1).reshape(B, n * tile, D)[:, :T]

    def _mlp(self, x_BTD: jax.Array) -> jax.Array:
        dt = self.dtype
        gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.gate_proj[...].astype(dt))
        gate_BTF = _lora_delta(self, "gate", x_BTD, gate_BTF)
        up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.up_proj[...].astype(dt))
        up_BTF = _lora_delta(self, "up", x_BTD, up_BTF)
        hidden_BTF = jax.nn.silu(gate_BTF) * up_BTF
        down_BTD = jnp.einsum("BTF,FD->BTD", hidden_BTF, self.down_proj[...].astype(dt))
        return _lora_delta(self, "down", hidden_BTF, down_BTD)


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, kernel: attention.Kernel):
        norm = lambda: RMSNorm(
            config.hidden_size,
            config.rms_norm_eps,
            config.compute_dtype,
            config.weight_dtype,
            "norm",
        )
        self.input_norm, self.post_attention_norm = norm(), norm()
        self.attn = Attention(config, rngs, kernel)
        self.mlp = MLP(config, rngs)

    def __call__(
        self,
        x_BTD,
        cos_BTh,
        sin_BTh,
        q_mask_BT,
        kv_mask_BS,
        kv_cache=None,
        index=None,
        last=None,
        fresh=True,
    ):
        """last: the output for the last `last` positions only; all of them fill kv_cache.
        The masks and `fresh` as in Attention."""
        h_BTD, kv_cache = self.attn(
            self.input_norm(x_BTD),
            cos_BTh,
            sin_BTh,
            q_mask_BT,
            kv_mask_BS,
            kv_cache,
            index,
            last,
            fresh,
        )
        x_BTD = (x_BTD if last is None else x_BTD[:, -last:]) + h_BTD
        return x_BTD + self.mlp(self.post_attention_norm(x_BTD)), kv_cache


def _block_forward(
    block: Block, x_BTD, cos_BTh, sin_BTh, q_mask_BT, kv_mask_BS, kv_cache, index, last, fresh
):
    return block(x_BTD, cos_BTh, sin_BTh, q_mask_BT, kv_mask_BS, kv_cache, index, last, fresh)


# Recompute each layer's activations in the backward pass instead of storing them.
_remat_block_forward = nnx.remat(_block_forward, static_argnums=(8, 9))


class Qwen(nnx.Module):
    """The decoder. See the module docstring for the two ways to call it."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, platform: str | None = None):
        """platform: where the programs will run ("cpu", "gpu"/"cuda", "tpu"; default this
        process's backend): `config.attention` = "auto" resolves to that platform's kernel,
        and a program using it lowered for another platform fails instead of running the
        wrong kernel (attention.Kernel)."""
        V, D, pd = config.vocab_size, config.hidden_size, config.weight_dtype
        self.config = config
        kernel = attention.kernel_for(
            config.attention,
            platform or jax.default_backend(),
            config.compute_dtype,
            config.head_dim,
        )
        self.embed = _param(rngs, (V, D), ("vocab", "embed"), pd)
        self.layers = nnx.List([Block(config, rngs, kernel) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(D, config.rms_norm_eps, config.compute_dtype, pd, "norm")
        if not config.tie_word_embeddings:
            self.lm_head = _param(rngs, (D, V), ("embed", "vocab"), pd)
        inv_freq, attention_factor = rope_frequencies(config)
        self.rope = (tuple(inv_freq.tolist()), attention_factor)

    def __call__(
        self, input_ids, positions, attention_mask, cache: KVCache | None = None, rotary=None
    ):
        """input_ids, positions, attention_mask: [B, T] (mask: 1 for real tokens).

        Returns logits [B, T, V] in float32, or (logits, cache) when a cache is given.
        rotary: `self.rotary(positions)`, when the caller already has it.
        """
        hidden_BTD, cache = self.hidden_states(input_ids, positions, attention_mask, cache, rotary)
        logits_BTV = self.logits(hidden_BTD)
        return logits_BTV if cache is None else (logits_BTV, cache)

    def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """RoPE cos and sin [B, T, H/2] at positions [B, T], each computed once.

        Left alone, XLA:CPU fuses cos and sin into every layer's q and k and recomputes
        them there, 2 × layers times. A decode loop carries the next step's in its state
        (sampling.py). Positions are ≥ 0.
        """
        inv_freq, attention_factor = self.rope
        angles_BTh = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
        cos_BTh = jnp.cos(angles_BTh) * attention_factor
        sin_BTh = jnp.sin(angles_BTh) * attention_factor
        return attention.computed_once((cos_BTh, sin_BTh), positions)

    def hidden_states(
        self,
        input_ids,
        positions,
        attention_mask,
        cache: KVCache | None = None,
        rotary=None,
        last: int | None = None,
        remat: bool = False,
    ):
        """The final-normed hidden states [B, T, D] (and the cache), before the LM head.

        last: return the last `last` positions only, [B, last, D]. The last layer then runs
        its queries, attention output and MLP for those alone (a prefill whose other outputs
        are never read saves ~1/layers of its work); every position still fills the cache.
        remat: a differentiated forward recomputes each layer's activations in the backward
        pass instead of storing them (the train step's memory setting, not the model's).
        """
        cfg = self.config
        x_BTD = self.embed[...][input_ids].astype(cfg.compute_dtype)
        cos_BTh, sin_BTh = self.rotary(positions) if rotary is None else rotary
        T = input_ids.shape[1]
        q_mask_BT = attention_mask.astype(bool)
        if cache is None:
            kv_mask_BS, index = q_mask_BT, None
        else:
            kv_mask_BS = jax.lax.dynamic_update_slice(cache.mask, q_mask_BT, (0, cache.index))
            index = cache.index
        # A call that fills its whole cache writes at slot 0 (dynamic_update_slice clamps).
        fresh = cache is None or kv_mask_BS.shape[1] == T

        forward = _remat_block_forward if remat else _block_forward
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            trim = last if i == len(self.layers) - 1 else None
            x_BTD, kv = forward(
                block, x_BTD, cos_BTh, sin_BTh, q_mask_BT, kv_mask_BS, kv, index, trim, fresh
            )
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        if cache is not None:
            cache = KVCache(k=tuple(new_k), v=tuple(new_v), mask=kv_mask_BS, index=cache.index + T)
        return self.final_norm(x_BTD), cache

    def logits(self, hidden_BTD: jax.Array) -> jax.Array:
        """LM head in the compute dtype, accumulated and returned in float32."""
        dt = self.config.compute_dtype
        if self.config.tie_word_embeddings:
            return jnp.einsum(
                "BTD,VD->BTV",
                hidden_BTD,
                self.embed[...].astype(dt),
                preferred_element_type=jnp.float32,
            )
        return jnp.einsum(
            "BTD,DV->BTV",
            hidden_BTD,
            self.lm_head[...].astype(dt),
            preferred_element_type=jnp.float32,
        )


def abstract_model(config: ModelConfig, platform: str | None = None) -> Qwen:
    """The model with ShapeDtypeStruct leaves: no allocation, any size (`platform` as in Qwen)."""
    return nnx.eval_shape(lambda: Qwen(config, rngs=nnx.Rngs(0), platform=platform))


def param_count(model: Qwen) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
