#!/usr/bin/env bash
# One prepared check for the lent NVIDIA GPU machine (H100 / H200): numeric tests on the
# GPU, the sampler and the train step against transformers + torch on the same GPU, and the
# attention implementations compared. Prints ONE JSON line on stdout (progress goes to
# stderr); under 8 minutes. One device call, from the repository root:
#
#   bash scripts/gpu_check.sh
#
# The lent image's own python3 runs it as it is: it already has jax 0.11 with CUDA, flax,
# optax, orbax-checkpoint, transformers and torch, and everything these parts import. The
# package is used from the checkout (PYTHONPATH), not pip-installed: setup.cfg's jax range
# (what make test ran here) would make pip replace the image's CUDA jax, with no network to
# do it. A missing pure-Python package can travel as a wheel in wheels/ (carry it); it is
# unpacked into .gpu_deps/ first.
#
# Parts (each under its own timeout; a failure is recorded in the JSON, never fatal):
#   tests       pytest tests/test_models.py tests/test_sampling.py tests/test_train_step.py
#               tests/test_attention.py tests/test_rollout.py with JAX on the GPU at full fp32
#               matmul precision
#               (JAX's GPU default is TF32, too loose for the 1e-5 parity checks). The
#               multi-device sharding tests need 8 devices and are deselected on one GPU.
#   attention   benchmarks/attention.py: Qwen3-0.6B attention, 2 × 4,608 tokens, bf16, forward
#               + backward of xla, chunked and cudnn, times and gaps to xla.
#   sampler     benchmarks/gpu_sampler.py: Qwen3-0.6B-sized random model, bf16, batch 256,
#               64 prompt tokens + 512 new tokens, ours vs transformers `generate`.
#   train_step  benchmarks/train_step.py --model=qwen3-0.6b --dtype=bfloat16: the GRPO update
#               (16 × 256 tokens, fp32 weights, bf16 compute) vs transformers + torch autocast.
#   rollout     benchmarks/rollout.py --runs=1: issue 34's guided workload (large model,
#               4 prompts × G = 8), shared + compact vs row-wise vs transformers.
# Environment: PY (default python3), OUT (where logs go; default a temp dir), TIMEOUT_TESTS /
# TIMEOUT_ATTENTION / TIMEOUT_SAMPLER / TIMEOUT_TRAIN / TIMEOUT_ROLLOUT (seconds; defaults
# 150 / 60 / 140 / 90 / 90),
# ALLOW_CPU=1 (dry run of the script's plumbing without a GPU).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if compgen -G "wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target .gpu_deps wheels/*.whl >&2
fi
export PYTHONPATH="$PWD:$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false # JAX and torch share the GPU
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
START=$(date +%s)

log() { echo "[gpu_check $(($(date +%s) - START))s] $*" >&2; }

# run NAME TIMEOUT CMD...: runs CMD with a timeout, output to $OUT/NAME.log, rc to $OUT/NAME.rc.
run() {
    local name=$1 limit=$2
    shift 2
    log "$name (limit ${limit}s)"
    local t0 rc=0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$OUT/$name.rc"
    echo $(($(date +%s) - t0)) >"$OUT/$name.seconds"
    log "$name: rc=$rc"
}

run probe 120 "$PY" -c '
import json, jax
d = jax.devices()[0]
print(json.dumps({"backend": jax.default_backend(), "device": d.device_kind,
                  "count": jax.device_count(), "jax": jax.__version__}))
'
if [ -z "${ALLOW_CPU:-}" ] && ! grep -q '"backend": "gpu"' "$OUT/probe.log" 2>/dev/null; then
    "$PY" - "$OUT" <<'EOF' || echo '{"bench": "gpu_check", "ok": false, "error": "no python"}'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
tail = (out / "probe.log").read_text()[-2000:] if (out / "probe.log").exists() else ""
print(json.dumps({"bench": "gpu_check", "ok": False, "error": "no GPU for JAX", "probe": tail}))
EOF
    exit 0
fi

run nvidia_smi 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

JAX_DEFAULT_MATMUL_PRECISION=highest run tests "${TIMEOUT_TESTS:-150}" \
    "$PY" -m pytest -q -p no:cacheprovider -n 4 \
    tests/test_models.py tests/test_sampling.py tests/test_train_step.py tests/test_attention.py \
    tests/test_rollout.py \
    -k "not sharded_step_equals and not makes_no_host_transfers"

run attention "${TIMEOUT_ATTENTION:-60}" \
    "$PY" benchmarks/attention.py --batch=2 --tokens=4608 --dtype=bfloat16 --runs=5

run sampler "${TIMEOUT_SAMPLER:-140}" \
    "$PY" benchmarks/gpu_sampler.py --batch=256 --prompt=64 --new-tokens=512 --runs=3

run train_step "${TIMEOUT_TRAIN:-90}" \
    "$PY" benchmarks/train_step.py --model=qwen3-0.6b --dtype=bfloat16 --runs=5

run rollout "${TIMEOUT_ROLLOUT:-90}" "$PY" benchmarks/rollout.py --runs=1

"$PY" - "$OUT" "$START" <<'EOF'
import json, pathlib, re, sys, time

out, start = pathlib.Path(sys.argv[1]), int(sys.argv[2])


def part(name):
    log = out / f"{name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    rc = int((out / f"{name}.rc").read_text()) if (out / f"{name}.rc").exists() else None
    result = {"rc": rc, "seconds": int((out / f"{name}.seconds").read_text() or 0)}
    if rc in (124, 137):
        result["error"] = "timed out"
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if lines:
        try:
            result["result"] = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    if name == "tests":
        summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
        result["summary"] = summary[-1].strip("= ") if summary else None
        counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|error)", text))
        result.update(counts)
    if rc != 0 or "result" not in result and name != "tests":
        result["tail"] = text[-1500:]
    return result


probe = part("probe").get("result", {})
smi_ok = (out / "nvidia_smi.rc").exists() and (out / "nvidia_smi.rc").read_text().strip() == "0"
gpu = (out / "nvidia_smi.log").read_text().strip() if smi_ok else ""
parts = {name: part(name) for name in ("tests", "attention", "sampler", "train_step", "rollout")}
print(json.dumps({
    "bench": "gpu_check",
    "ok": all(p["rc"] == 0 for p in parts.values()),
    "gpu": gpu or probe.get("device"),
    "jax": probe.get("jax"),
    "seconds": int(time.time()) - start,
    "logs": str(out),
    **parts,
}))
EOF
