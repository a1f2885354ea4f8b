"""Helpers the benchmarks share: the machine's matmul peak, timing, load, model FLOPs."""

import contextlib
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

MATMUL_N = 2048


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak_gflops(runs: int = 5, n: int | None = None, dtype=jnp.float32) -> float:
    """A jitted [n, n] @ [n, n] matmul: the FLOP rate XLA reaches on this device (median).

    n defaults to 2048 on CPU and 8192 on accelerators (a 2048 matmul cannot fill a GPU).
    """
    n = n or (MATMUL_N if jax.default_backend() == "cpu" else 4 * MATMUL_N)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    seconds = statistics.median(
        timed(lambda: jax.block_until_ready(matmul(a, b))) for _ in range(runs)
    )
    return 2 * n**3 / seconds / 1e9


def torch_matmul_peak_gflops(runs: int = 5, n: int = MATMUL_N, dtype=None) -> float:
    """The same matmul in torch (its CPU kernels differ from XLA's)."""
    import torch

    a = torch.randn(n, n, dtype=dtype or torch.float32)
    b = torch.randn(n, n, dtype=dtype or torch.float32)
    a @ b
    seconds = statistics.median(timed(lambda: a @ b) for _ in range(runs))
    return 2 * n**3 / seconds / 1e9


def forward_flops(config, rows: int, length: int, head_tokens: int) -> float:
    """Model FLOPs of one forward over `rows` × `length` tokens (matmuls only).

    Every token through the layers costs 2 · (non-embedding matmul params); attention
    costs 4 · layers · N · H · length² per row (QKᵀ and PV over the full square, as the
    model computes them); the LM head costs 2 · V · D for each of `head_tokens` tokens
    (only the completion positions need logits). `config` is a ModelConfig.
    """
    c = config
    D, F, N, K, H = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    layer_params = D * (N + 2 * K) * H + N * H * D + 3 * D * F
    layers = 2 * c.num_layers * layer_params * rows * length
    attention = 4 * c.num_layers * N * H * length**2 * rows
    return layers + attention + 2 * c.vocab_size * D * head_tokens


def grpo_forward_flops(
    config, rows: int, group: int, prompt: int, completion: int, shared_prompt: bool
) -> float:
    """Model FLOPs of one forward of a GRPO batch (log-probs of the completion tokens).

    Per row: `prompt + completion` tokens, attention over that square, the LM head on the
    completion. With shared_prompt (what train_step.py runs when each group of `group` rows shares
    its prompt): the prompt once per group, its queries and the completion's attending to
    all prompt + completion cache slots (as the model's cache path computes them).
    """
    if not shared_prompt:
        return forward_flops(config, rows, prompt + completion, rows * completion)
    c = config
    N, H = c.num_heads, c.head_dim
    prompts = rows // group
    keys = prompt + completion
    layers = forward_flops(c, 1, 1, 0) - 4 * c.num_layers * N * H  # per token, no attention
    attention = 4 * c.num_layers * N * H * keys * (prompts * prompt + rows * completion)
    head = 2 * c.vocab_size * c.hidden_size * rows * completion
    return layers * (prompts * prompt + rows * completion) + attention + head


class CpuMonitor:
    """Share of the machine's CPU time that *other* processes used while a block ran."""

    def __init__(self):
        self.ncpu = os.cpu_count() or 1
        self.tick = os.sysconf("SC_CLK_TCK")

    def _busy_s(self) -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return (sum(v) - v[3] - v[4]) / self.tick  # all but idle and iowait

    @staticmethod
    def _self_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    @contextlib.contextmanager
    def measure(self, out: dict):
        b0, s0, w0 = self._busy_s(), self._self_s(), time.perf_counter()
        yield
        b1, s1, w1 = self._busy_s(), self._self_s(), time.perf_counter()
        wall = max(w1 - w0, 1e-9)
        out["others_cpu_frac"] = round(max(0.0, (b1 - b0) - (s1 - s0)) / (wall * self.ncpu), 3)


def machine(**versions) -> dict:
    """Where the numbers come from."""
    return dict(
        device=str(jax.devices()[0].device_kind),
        platform=jax.default_backend(),
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        loadavg=[round(x, 2) for x in os.getloadavg()],
        **versions,
    )


def wait_for_quiet(max_wait_s: float, threshold: float = 0.05) -> float:
    """Waits up to max_wait_s until other processes use < threshold of the CPUs."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        load = {}
        with CpuMonitor().measure(load):
            time.sleep(2.0)
        if load["others_cpu_frac"] < threshold or time.perf_counter() > deadline:
            return load["others_cpu_frac"]
        log(f"others use {load['others_cpu_frac']:.0%} of the CPUs; waiting")
