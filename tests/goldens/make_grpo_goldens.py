"""Writes grpo_loss.json: the GRPO loss of SPEC §3 in plain numpy float64, every mode.

An independent reference for g2rpo_jax.grpo.policy_loss (no JAX, no import of the
library). The example: 2 prompts × 2 candidates × 4 tokens; rows 0 and 2 are guided (their
first tokens are guidance); rows 1 and 2 end early (masked tail); the ratios fall below,
inside and above the clip range [1 − ε_low, 1 + ε_high] with advantages of both signs; β > 0.

Run from the repository root:  python tests/goldens/make_grpo_goldens.py
"""

import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).with_name("grpo_loss.json")

PARAMS = {"beta": 0.04, "epsilon_low": 0.2, "epsilon_high": 0.28, "max_completion_length": 6}
INPUTS = {
    "logp": [
        [-0.50, -1.20, -0.30, -2.00],
        [-0.90, -0.40, -1.50, -0.70],
        [-0.20, -0.80, -1.10, -0.60],
        [-1.40, -0.35, -0.75, -0.95],
    ],
    # logp − old_logp: +0.40 (ρ 1.49, above 1.28), −0.35 (ρ 0.70, below 0.8), small ones inside.
    "old_logp": [
        [-0.90, -1.25, -0.05, -2.10],
        [-0.55, -0.45, -1.20, -0.70],
        [-0.60, -0.70, -1.00, -0.60],
        [-1.05, -0.40, -1.15, -1.00],
    ],
    "ref_logp": [
        [-0.60, -1.00, -0.30, -1.80],
        [-0.80, -0.50, -1.40, -0.90],
        [-0.25, -0.90, -1.00, -0.50],
        [-1.30, -0.30, -0.80, -1.00],
    ],
    "advantages": [0.8, -0.8, 1.1, -1.1],
    "completion_mask": [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]],
    "is_guidance": [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]],
}


def loss(x: dict, aggregation: str, guidance_loss: str) -> dict:
    logp, old, ref = (np.asarray(x[k], np.float64) for k in ("logp", "old_logp", "ref_logp"))
    adv = np.asarray(x["advantages"], np.float64)[:, None]
    mask = np.asarray(x["completion_mask"], np.float64)
    if guidance_loss == "mask":
        mask = mask * (1 - np.asarray(x["is_guidance"], np.float64))
    eps_low, eps_high, beta = PARAMS["epsilon_low"], PARAMS["epsilon_high"], PARAMS["beta"]

    rho = np.exp(logp - old)
    pg = -np.minimum(rho * adv, np.clip(rho, 1 - eps_low, 1 + eps_high) * adv)
    kl = np.exp(ref - logp) - (ref - logp) - 1
    per_token = pg + beta * kl

    if aggregation == "seq_mean":
        value = np.mean((per_token * mask).sum(1) / np.maximum(mask.sum(1), 1))
    elif aggregation == "token_mean":
        value = (per_token * mask).sum() / mask.sum()
    else:  # seq_sum_fixed
        value = (per_token * mask).sum() / (mask.shape[0] * PARAMS["max_completion_length"])

    def token_mean(v):
        return float((v * mask).sum() / mask.sum())

    return {
        "loss": float(value),
        "kl": token_mean(kl),
        "ratio_mean": token_mean(rho),
        "clip_fraction_low": token_mean((rho < 1 - eps_low) & (adv < 0)),
        "clip_fraction_high": token_mean((rho > 1 + eps_high) & (adv > 0)),
    }


def main() -> None:
    expected = {
        f"{aggregation}/{guidance_loss}": loss(INPUTS, aggregation, guidance_loss)
        for aggregation in ("seq_mean", "token_mean", "seq_sum_fixed")
        for guidance_loss in ("include", "mask")
    }
    table = {
        "description": __doc__.strip().splitlines()[0],
        "params": PARAMS,
        "inputs": INPUTS,
        "expected": expected,
    }
    OUT.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
