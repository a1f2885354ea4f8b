"""Writes controller_trajectories.json: guidance-length ℓ trajectories from SPEC §4's words.

An independent reference for g2rpo_jax.guidance: plain Python, no JAX, no import of the
library, and exact rational arithmetic (fractions.Fraction) on the decimal signals, because
float64 is not exact either (3072·0.325/0.65 evaluates to 306.99999999999994, floor 306, in
row paper_exact_ratios). Every value that is floored is asserted to be an integer or at
least 0.01 away from one, so the JAX controller, which computes in float32, must reproduce
each number exactly.

`lengths[k]` is ℓ after the update that reads `signals[k]`, i.e. the length used at step k+2.

Run from the repository root:  python tests/goldens/make_controller_goldens.py
"""

import json
import math
import pathlib
from fractions import Fraction

OUT = pathlib.Path(__file__).with_name("controller_trajectories.json")
SCHEDULES = ("constant", "linear", "step", "concave", "convex")
PAPER_SCALE = {"initial_length": 3072, "min_length": 1, "max_length": 3072}


def settled_floor(value: Fraction) -> int:
    """floor(value), asserting that value is an integer or at least 0.01 away from one."""
    frac = value - math.floor(value)
    assert frac == 0 or Fraction(1, 100) <= frac <= Fraction(99, 100), float(value)
    return math.floor(value)


def clip(length: int, cfg: dict) -> int:
    return min(max(length, cfg["min_length"]), cfg["max_length"])


def ratio_rule(length: int, recorded: list[Fraction], r: Fraction, cfg: dict) -> int:
    """clip(floor(ℓ · r̄ / r_k), ℓ_min, ℓ_max), r̄ the mean of `recorded`."""
    r_bar = sum(recorded) / len(recorded)
    return clip(settled_floor(length * r_bar / r), cfg)


def paper(cfg: dict, signals: list[Fraction]) -> list[int]:
    """Every step: r̄ = mean of the last min(T, count) signals before r_k; then record r_k."""
    length, history, out = cfg["initial_length"], [], []
    for r in signals:
        recent = history[-cfg["history"] :]
        r_bar = sum(recent) / len(recent) if recent else 0  # no history: ℓ unchanged
        if r_bar > 0 and r > 0:
            length = ratio_rule(length, recent, r, cfg)
        elif r_bar > 0 and r == 0:
            length = cfg["max_length"]
        history.append(r)
        out.append(length)
    return out


def official(cfg: dict, signals: list[Fraction]) -> list[int]:
    """Disjoint 3-step cycles: two steps record, the third applies the rule to their mean."""
    length, recorded, out = cfg["initial_length"], [], []
    for r in signals:
        if len(recorded) < 2:
            recorded.append(r)
        else:
            if sum(recorded) > 0 and r > 0:
                length = ratio_rule(length, recorded, r, cfg)
            recorded = []
        out.append(length)
    return out


def schedule(cfg: dict, num_steps: int) -> list[int]:
    """ℓ after k completed steps = clip(floor(ℓ0·f(p)), ℓ_min, ℓ_max), p = min(k/N, 1)."""
    ell0, n, s, out = cfg["initial_length"], cfg["total_steps"], cfg["steps"], []
    for k in range(1, num_steps + 1):
        p = min(Fraction(k, n), Fraction(1))
        match cfg["rule"]:
            case "constant":
                f = Fraction(1)
            case "linear":
                f = 1 - p
            case "step":
                f = 1 - Fraction(settled_floor(p * s), s)
            case "concave":
                f = 1 - p**2
            case "convex":
                f = (1 - p) ** 2
        out.append(clip(settled_floor(ell0 * f), cfg))
    return out


def case(name: str, signals: list[float], note: str, **config) -> dict:
    config = {"rule": "paper", "history": 2, "steps": 4, **PAPER_SCALE, **config}
    decimals = [Fraction(repr(r)) for r in signals]  # the numbers as written
    match config["rule"]:
        case "paper":
            lengths = paper(config, decimals)
        case "official":
            lengths = official(config, decimals)
        case _:
            lengths = schedule(config, len(signals))
    return {"name": name, "note": note, "config": config, "signals": signals, "lengths": lengths}


def cases() -> list[dict]:
    small = {"initial_length": 100, "min_length": 50, "max_length": 120}
    sched = {"initial_length": 3000, "min_length": 16, "max_length": 3072, "total_steps": 10}
    twelve = [0.5] * 12
    return [
        case("paper_rising", [0.30, 0.34, 0.40, 0.45, 0.50, 0.60], "rising reward shortens ℓ"),
        case(
            "paper_falling",
            [0.6, 0.5, 0.4, 0.3, 0.25, 0.1],
            "falling reward lengthens ℓ, then ℓ_max clips",
            initial_length=1024,
        ),
        case("paper_zeros", [0.0, 0.0, 0.0, 0.0], "r̄ = 0 keeps ℓ"),
        case("paper_flat", [0.45] * 5, "float32 ℓ·0.45/0.45 is 3071.9998: must stay 3072"),
        case(
            "paper_noisy",
            [0.3, 0.5, 0.2, 0.6, 0.4, 0.55, 0.35],
            "up and down",
            initial_length=2048,
        ),
        case(
            "paper_starting_at_zero",
            [0.0, 0.0, 0.25, 0.5, 0.25, 0.5],
            "no positive history keeps ℓ until one arrives",
            initial_length=2000,
        ),
        case(
            "paper_drop_to_zero",
            [0.5, 0.4, 0.0, 0.0, 0.0, 0.3, 0.6],
            "r_k = 0 after r̄ > 0 gives ℓ_max; r̄ = 0 then keeps it",
            initial_length=1000,
        ),
        case(
            "paper_exact_ratios",
            [0.1, 0.25, 0.35, 0.3, 0.65, 0.6],
            "exact integer ratios where naive float32 lands 1 below",
            initial_length=3072,
        ),
        case("paper_clip", [0.2, 0.5, 0.9, 0.1, 0.05, 0.05], "clips to [50, 120]", **small),
        case(
            "paper_window_1",
            [0.3, 0.5, 0.2, 0.6, 0.4],
            "T = 1: r̄ is the previous signal",
            history=1,
            initial_length=2048,
        ),
        case(
            "paper_window_3",
            [0.3, 0.5, 0.2, 0.6, 0.4, 0.55, 0.35],
            "T = 3",
            history=3,
            initial_length=2048,
        ),
        case(
            "official_worked_example",
            [0.30, 0.34, 0.40, 0.40, 0.50, 0.30, 0.45, 0.45, 0.45],
            "SPEC §4: 3072 → floor(3072·0.32/0.40) = 2457 from step 4",
            rule="official",
        ),
        case(
            "official_falling",
            [0.6, 0.6, 0.3, 0.3, 0.3, 0.2, 0.2, 0.2, 0.1, 0.4],
            "lengthens every third step",
            rule="official",
            initial_length=1000,
        ),
        case(
            "official_zeros",
            [0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.5],
            "r̄ = 0 or r_k = 0 keeps ℓ",
            rule="official",
            initial_length=1500,
        ),
        case(
            "official_clip",
            [0.1, 0.1, 0.5, 0.9, 0.9, 0.1],
            "clips to [50, 120]",
            rule="official",
            **small,
        ),
        *(
            case(f"schedule_{rule}", twelve, "runs past total_steps", rule=rule, **sched)
            for rule in SCHEDULES
        ),
        case("schedule_step_s3", twelve, "S = 3 drops", rule="step", **{**sched, "steps": 3}),
        case(
            "schedule_linear_clip",
            twelve,
            "clips to ℓ_min = 500",
            rule="linear",
            initial_length=800,
            min_length=500,
            max_length=800,
            total_steps=7,
        ),
    ]


def main() -> None:
    table = {"description": __doc__.strip().splitlines()[0], "cases": cases()}
    OUT.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(table['cases'])} cases)")


if __name__ == "__main__":
    main()
