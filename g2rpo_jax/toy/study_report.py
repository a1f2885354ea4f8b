"""The toy study's table, per-setting gaps and plots, from the records of study.py."""

import os

import numpy as np

from g2rpo_jax.toy.study import COVERAGE, NOISY_FRACTION, VARIANTS


def _stats(values) -> str:
    values = np.asarray(values, float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


_HEADERS = {
    "sampled": "sampled (T = 1)",
    "harder_greedy": "harder greedy",
    "harder_sampled": "harder sampled",
}


def table(records: list[dict], variants=VARIANTS) -> str:
    """Markdown: one row per variant, mean ± sample std over seeds, and the per-seed values;
    the harder set's (part 2) and pass@k's (part 3) columns where the records have them."""
    optional = ("harder_greedy", "harder_sampled", "pass@1", "pass@4", "pass@8")
    keys = ["greedy", "sampled"] + [k for k in optional if all(k in r for r in records)]
    columns = " | ".join(_HEADERS.get(k, k) for k in keys)
    lines = [
        f"| variant | {columns} | greedy per seed | wall s / run | seeds |",
        "| --- " * (4 + len(keys)) + "|",
    ]
    names = ["base"] + [v.name for v in variants]
    labels = {"base": "base model (before RL)"} | {v.name: v.label for v in variants}
    for name in names:
        rows = sorted((r for r in records if r["variant"] == name), key=lambda r: r["seed"])
        if not rows:
            continue
        stats = " | ".join(_stats([r[k] for r in rows]) for k in keys)
        per_seed = ", ".join(f"{r['greedy']:.3f}" for r in rows)
        wall = "–" if name == "base" else f"{np.mean([r['wall_s'] for r in rows]):.0f}"
        lines.append(f"| {labels[name]} (`{name}`) | {stats} | {per_seed} | {wall} | {len(rows)} |")
    return "\n".join(lines) + "\n"


# Part 2's settings: the SFT control of each and the RL variants that compete with it.
SETTINGS = {
    "clean traces": ("sft", ("grpo", "fixed_full", "g2rpo_a")),
    f"noisy ({NOISY_FRACTION:.0%} wrong)": (
        "sft_noisy",
        (
            "fixed_full_noisy",
            "g2rpo_a_noisy",
            "g2rpo_a_noisy_T1",
            "g2rpo_a_noisy_T4",
            "g2rpo_a_noisy_official",
        ),
    ),
    f"coverage ({COVERAGE:.0%})": ("sft_coverage", ("grpo_coverage", "g2rpo_a_coverage")),
    "SFT, then RL": ("sft", ("sft_then_grpo", "sft_then_g2rpo_a")),
}


def gaps(records: list[dict], key: str = "greedy") -> str:
    """Markdown: per setting, the best RL variant (by mean `key`) minus its SFT control, with
    the standard error of that difference over seeds, √(s²_RL/n + s²_SFT/n), and the range of
    the per-seed differences (seed k of one against seed k of the other)."""
    lines = [
        f"| setting | SFT | best RL | RL − SFT ({key}) | ± s.e. | per-seed range |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for setting, (control, contenders) in SETTINGS.items():
        by_seed = {n: _by_seed(records, n, key) for n in (control, *contenders)}
        ran = [n for n in contenders if by_seed[n]]
        if not by_seed[control] or not ran:
            continue
        best = max(ran, key=lambda n: np.mean(list(by_seed[n].values())))
        rl, sft_values = (np.asarray(list(by_seed[n].values())) for n in (best, control))
        se = np.sqrt(np.var(rl, ddof=1) / len(rl) + np.var(sft_values, ddof=1) / len(sft_values))
        paired = [
            by_seed[best][k] - by_seed[control][k] for k in by_seed[best] if k in by_seed[control]
        ]
        lines.append(
            f"| {setting} | `{control}` {sft_values.mean():.3f} | `{best}` "
            f"{rl.mean():.3f} | {rl.mean() - sft_values.mean():+.3f} | {se:.3f} | "
            f"{min(paired):+.3f} … {max(paired):+.3f} |"
        )
    return "\n".join(lines) + "\n"


def _by_seed(records: list[dict], variant: str, key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in records if r["variant"] == variant}


# Part 3's comparisons, (a, b): a − b per seed. Plain GRPO reads no trace, so `grpo` stands
# for itself on hard traces.
COMPARISONS = (
    ("g2rpo_a", "grpo"),
    ("g2rpo_a", "sft"),
    ("fixed_full", "sft"),
    ("g2rpo_a", "fixed_full"),
    ("sft_plateau_then_sft", "sft_plateau"),
    ("sft_plateau_then_grpo", "sft_plateau_then_sft"),
    ("sft_plateau_then_fixed_full", "sft_plateau_then_sft"),
    ("sft_plateau_then_g2rpo_a", "sft_plateau_then_sft"),
    ("sft_plateau_then_g2rpo_a", "sft_plateau_then_grpo"),
    ("sft_hard", "sft"),
    ("fixed_full_hard", "sft_hard"),
    ("g2rpo_a_hard", "sft_hard"),
    ("g2rpo_a_hard", "grpo"),
    ("g2rpo_a_on_failure", "g2rpo_a"),
    ("g2rpo_a_noisy_on_failure", "g2rpo_a_noisy"),
    ("g2rpo_a_hard_on_failure", "g2rpo_a_hard"),
    ("g2rpo_a_hard_on_failure", "sft_hard"),
)


def paired(
    records: list[dict],
    comparisons=COMPARISONS,
    keys=("greedy", "sampled", "pass@1", "pass@4", "pass@8"),
) -> str:
    """Markdown: per comparison (a, b) and metric, the mean ± standard error of the per-seed
    difference a − b (seed k of one against seed k of the other; s.e. = sample std / √n, over
    the n ≥ 2 seeds both have), naming the winner only where |mean| > 2 s.e."""
    lines = [
        f"| a − b | seeds | {' | '.join(keys)} |",
        "| --- " * (2 + len(keys)) + "|",
    ]
    for a, b in comparisons:
        cells, seeds = [], []
        for key in keys:
            of_a, of_b = _by_seed(records, a, key), _by_seed(records, b, key)
            seeds = sorted(set(of_a) & set(of_b))
            if len(seeds) < 2:
                break
            diff = np.asarray([of_a[k] - of_b[k] for k in seeds])
            mean, se = diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))
            winner = f" (**{a if mean > 0 else b}**)" if abs(mean) > 2 * se else ""
            cells.append(f"{mean:+.3f} ± {se:.3f}{winner}")
        if len(cells) == len(keys):
            lines.append(f"| `{a}` − `{b}` | {len(seeds)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def plateau_steps(records: list[dict]) -> str:
    """One line: where each seed's SFT plateau stopped (part 3)."""
    steps = sorted((r["seed"], r["plateau_step"]) for r in records if r["variant"] == "sft_plateau")
    return "SFT plateau stopped at step " + ", ".join(f"{s} (seed {k})" for k, s in steps) + "\n"


def markdown(records: list[dict], variants, part: int) -> str:
    """table.md: the table, then part 2's gaps or part 3's paired differences and plateaus."""
    text = table(records, variants)
    if part == 2:
        text += "".join("\n" + gaps(records, key) for key in ("greedy", "harder_greedy"))
    if part == 3:
        text += "\n" + paired(records)
        if any(r["variant"] == "sft_plateau" for r in records):
            text += "\n" + plateau_steps(records)
    return text


def write_plots(records: list[dict], out_dir: str, variants=VARIANTS) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v.name for v in variants if any(r["variant"] == v.name for r in records)]
    base = [r for r in records if r["variant"] == "base"]
    written = []

    optional = ("harder_greedy", "pass@8")
    keys = ["greedy", "sampled"] + [k for k in optional if all(k in r for r in records)]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(names)), 4), dpi=110)
    x = np.arange(len(names))
    for k, key in enumerate(keys):
        offset = (k - (len(keys) - 1) / 2) * width
        values = [[r[key] for r in records if r["variant"] == n] for n in names]
        means = [np.mean(v) for v in values]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        ax.bar(x + offset, means, width, yerr=stds, capsize=3, label=key)
        for i, v in enumerate(values):
            ax.scatter([x[i] + offset] * len(v), v, color="k", s=6, zorder=3)
    if base:
        ax.axhline(
            base[0]["greedy"], color="gray", linestyle="--", linewidth=1, label="base model, greedy"
        )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="held-out accuracy (unguided)", title="Final accuracy: mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(os.path.join(out_dir, "final_accuracy.png"))
    fig.savefig(written[-1])
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    colors = {v.name: plt.get_cmap("tab20")(i % 20) for i, v in enumerate(variants)}
    for name in names:
        runs = [r for r in records if r["variant"] == name]
        steps = [s for s, _ in runs[0]["during"]]
        if all([s for s, _ in r["during"]] == steps for r in runs) and steps:
            mean = np.mean([[a for _, a in r["during"]] for r in runs], axis=0)
            axes[0].plot(steps, mean, marker="o", markersize=3, label=name, color=colors[name])
        ells = [r["ell"] for r in runs if r["ell"]]
        if ells and not name.startswith("grpo"):  # α = 0: ℓ guides nobody
            axes[1].plot(
                np.arange(1, len(ells[0]) + 1),
                np.mean(ells, axis=0),
                label=name,
                color=colors[name],
                linestyle="--" if name == "alpha1_half" else "-",
            )
    axes[0].set(
        xlabel="step",
        ylabel="greedy accuracy (held-out subset)",
        title="During training (mean over seeds)",
    )
    axes[1].set(xlabel="step", ylabel="ℓ (tokens)", title="Guidance length (mean over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(os.path.join(out_dir, "curves.png"))
    fig.savefig(written[-1])
    plt.close(fig)
    return written
