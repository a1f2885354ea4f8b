"""The toy study's table, per-setting gaps and plots, from the records of study.py."""

import os

import numpy as np

from g2rpo_jax.toy.study import COVERAGE, NOISY_FRACTION, VARIANTS


def _stats(values) -> str:
    values = np.asarray(values, float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def table(records: list[dict], variants=VARIANTS) -> str:
    """Markdown: one row per variant, mean ± sample std over seeds, and the per-seed values;
    the harder set's columns where the records have them (part 2)."""
    harder = all("harder_greedy" in r for r in records)
    extra = " harder greedy | harder sampled |" if harder else ""
    lines = [
        f"| variant | greedy | sampled (T = 1) |{extra} greedy per seed | wall s / run | seeds |",
        "| --- " * (6 + 2 * harder) + "|",
    ]
    names = ["base"] + [v.name for v in variants]
    labels = {"base": "base model (before RL)"} | {v.name: v.label for v in variants}
    for name in names:
        rows = sorted((r for r in records if r["variant"] == name), key=lambda r: r["seed"])
        if not rows:
            continue
        keys = ("greedy", "sampled") + (("harder_greedy", "harder_sampled") if harder else ())
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
        by_seed = {
            n: {r["seed"]: r[key] for r in records if r["variant"] == n}
            for n in (control, *contenders)
        }
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


def write_plots(records: list[dict], out_dir: str, variants=VARIANTS) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v.name for v in variants if any(r["variant"] == v.name for r in records)]
    base = [r for r in records if r["variant"] == "base"]
    written = []

    keys = ["greedy", "sampled"] + ["harder_greedy"] * all("harder_greedy" in r for r in records)
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
