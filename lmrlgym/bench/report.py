"""Benchmark results: aggregation over seeds, the paper-style table, plots, paper comparison.

Per seed, a cell's mean evaluation return is normalised (not each episode: the kink at the
dataset average makes these differ); a table cell is the mean over seeds with a 95 %
t-interval ``t_{0.975,k-1} * s / sqrt(k)`` (docs/algorithms.md §4.5), honest and wide for 2-3 seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Columns of the paper's Table 2, in its order, with our method keys.
METHODS: dict[str, str] = {
    "bc": "BC",
    "filtered_bc": "filtered BC",
    "mc": "MC Returns",
    "ilql": "ILQL",
    "ppo": "online PPO",
    "online_filtered_bc": "online filtered BC",
    # Beyond the paper (docs/algorithms.md §3.8-3.9): not in its Table 2.
    "grpo": "GRPO",
    "rloo": "RLOO",
    "gigpo": "GiGPO",
    "archer": "ArCHer",
}
REFERENCES: dict[str, str] = {"behaviour": "behaviour policy", "optimal": "scripted optimum"}

# LMRL-Gym paper, Table 2 (normalised scores; GPT-2 policies; one run per cell, no error bars).
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "TwentyQuestions-v0": dict(zip(METHODS, (57.1, 77.1, 87.1, 82.9, 72.9, 55.2), strict=False)),
    "GuessCity-v0": dict(zip(METHODS, (30.0, 48.0, 88.0, 75.0, 49.9, 31.6), strict=False)),
    "CarDealer-v0": dict(zip(METHODS, (44.5, 54.8, 57.2, 46.3, 50.5, 40.4), strict=False)),
    "Maze-FO-v0": dict(zip(METHODS, (58.2, 68.9, 75.0, 99.9, 79.7, 57.4), strict=False)),
    "Maze-PO-v0": dict(zip(METHODS, (53.1, 50.1, 52.4, 76.3, 42.4, 53.1), strict=False)),
    "TextNav-FO-v0": dict(zip(METHODS, (53.7, 65.1, 71.9, 91.8, 87.1, 74.5), strict=False)),
    "TextNav-PO-v0": dict(zip(METHODS, (49.7, 60.5, 71.6, 83.7, 85.5, 68.4), strict=False)),
    "Wordle-v0": dict(zip(METHODS, (79.9, 79.1, 94.9, 97.7, 84.2, 95.2), strict=False)),
    "Chess-v0": dict(zip(METHODS, (47.2, 42.9, 46.5, 47.3, 48.0, 47.2), strict=False)),
    "Endgames-v0": dict(zip(METHODS, (35.1, 17.7, 50.2, 45.8, 77.5, 36.2), strict=False)),
}

# Two-sided 97.5 % Student-t quantiles for k - 1 = 1 .. 30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def print_table(header: list[str], cells: list[list[str]]) -> None:
    """A plain left-aligned table on stdout, two spaces between columns (the speed benches)."""
    cells = [header, *cells]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % t-interval half-width over seeds (half-width NaN for a single seed)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values")
    if x.size == 1:
        return float(x[0]), math.nan
    t = _T975[min(x.size - 1, len(_T975)) - 1] if x.size - 1 <= len(_T975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def aggregate(cells: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Group per-seed cell results into ``{task: {method: summary}}``.

    Each cell is a dict with ``task``, ``method``, ``seed``, ``mean_return`` and
    ``normalized_score`` (and optionally ``paper_normalized_score``).
    """
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        grouped.setdefault((c["task"], c["method"]), []).append(c)
    from lmrlgym.registry import registry

    task_order = {t: i for i, t in enumerate(registry)}  # the paper's task order, not alphabetical
    method_order = {m: i for i, m in enumerate([*METHODS, *REFERENCES])}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (task, method), cs in sorted(grouped.items(), key=lambda kv: (
            task_order.get(kv[0][0], len(task_order)), kv[0][0],
            method_order.get(kv[0][1], len(method_order)), kv[0][1])):
        cs = sorted(cs, key=lambda c: c["seed"])
        score, half = t_interval([c["normalized_score"] for c in cs])
        ret, ret_half = t_interval([c["mean_return"] for c in cs])
        out.setdefault(task, {})[method] = {
            "seeds": [c["seed"] for c in cs],
            "normalized_score": score,
            "normalized_score_ci95": half,
            "mean_return": ret,
            "mean_return_ci95": ret_half,
            "per_seed_normalized_score": [c["normalized_score"] for c in cs],
            "per_seed_mean_return": [c["mean_return"] for c in cs],
            "success_rate": float(np.mean([c.get("success_rate", math.nan) for c in cs])),
        }
    return out


def _cell(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "—"
    s, h = summary["normalized_score"], summary["normalized_score_ci95"]
    return f"{s:.1f}" if math.isnan(h) else f"{s:.1f} ± {h:.1f}"


def markdown_table(agg: dict[str, dict[str, dict[str, Any]]], title: str = "") -> str:
    """Rows = tasks; columns = the methods, then the behaviour and optimum references."""
    cols = list(METHODS) + list(REFERENCES)
    names = {**METHODS, **REFERENCES}
    lines = [f"### {title}", ""] if title else []
    lines.append("| task | " + " | ".join(names[c] for c in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for task, row in agg.items():
        lines.append(f"| {task} | " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    lines.append("")
    lines.append("Cells: mean normalised score over seeds ± 95 % t-interval "
                 "(0 = min return, 50 = dataset average, 100 = max; project constants).")
    raw = ["", "Raw mean returns:", "",
           "| task | " + " | ".join(names[c] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for task, row in agg.items():
        raw.append(f"| {task} | " + " | ".join(
            f"{row[c]['mean_return']:.3g}" if c in row else "—" for c in cols) + " |")
    return "\n".join(lines + raw) + "\n"


def paired_vs_bc(agg: dict[str, dict[str, dict[str, Any]]],
                 base: str = "bc") -> dict[str, dict[str, dict[str, Any]]]:
    """Per task and method: the per-seed difference ``score(method, s) - score(base, s)`` over
    the seeds both have, its mean with a 95 % t-interval, and how many seeds are above the
    ``base`` method (BC by default; the report also pairs with online PPO).

    At CPU scale the BC runs alone spread by ~10 points between seeds, which hides a few-point
    gain in the unpaired table. MC, ILQL and the online methods start from the same seed's BC
    run, so pairing compares each with its own starting point (filtered BC shares only the
    seed)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, row in agg.items():
        if base not in row:
            continue
        bc = dict(zip(row[base]["seeds"], row[base]["per_seed_normalized_score"], strict=True))
        for m in METHODS:
            if m == base or m not in row:
                continue
            diffs = [x - bc[s] for s, x in zip(row[m]["seeds"], row[m]["per_seed_normalized_score"],
                                               strict=True) if s in bc]
            if not diffs:
                continue
            mean, half = t_interval(diffs)
            out.setdefault(task, {})[m] = {"mean": mean, "ci95": half, "diffs": diffs,
                                           "above": sum(d > 0 for d in diffs)}
    return out


def paired_text(d: dict[str, Any]) -> str:
    """One paired difference as text: mean ± 95 % interval (seeds above / seeds)."""
    ci = "" if math.isnan(d["ci95"]) else f" ± {d['ci95']:.1f}"
    return f"{d['mean']:+.1f}{ci} ({d['above']}/{len(d['diffs'])})"


def paired_table(paired: dict[str, dict[str, dict[str, Any]]], base: str = "bc") -> str:
    """Markdown: rows = tasks, columns = methods other than ``base``, cells = mean difference
    from it ± 95 % t-interval (seeds above it / seeds)."""
    cols = [m for m in METHODS if m != base]
    lines = ["| task | " + " | ".join(METHODS[m] for m in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for task, row in paired.items():
        cells = []
        for m in cols:
            d = row.get(m)
            cells.append("—" if d is None else paired_text(d))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ordering_flags(
    agg: dict[str, dict[str, dict[str, Any]]], paper: dict[str, dict[str, float]] = PAPER_TABLE2
) -> list[str]:
    """Method pairs whose order differs from the paper's (same task, both cells present)."""
    flags = []
    for task, row in agg.items():
        ref = paper.get(task, {})
        methods = [m for m in METHODS if m in row and m in ref]
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                ours = row[a]["normalized_score"] - row[b]["normalized_score"]
                theirs = ref[a] - ref[b]
                if ours * theirs < 0:
                    flags.append(
                        f"{task}: paper has {METHODS[a]} {'>' if theirs > 0 else '<'} "
                        f"{METHODS[b]} ({ref[a]:.1f} vs {ref[b]:.1f}); ours "
                        f"{row[a]['normalized_score']:.1f} vs {row[b]['normalized_score']:.1f}"
                    )
    return flags


def comparison_table(agg: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Our score next to the paper's Table 2, per cell, as markdown."""
    lines = ["| task | method | ours | paper | diff |", "|---|---|---|---|---|"]
    for task, row in agg.items():
        for m in METHODS:
            if m not in row:
                continue
            paper = PAPER_TABLE2.get(task, {}).get(m)
            diff = "" if paper is None else f"{row[m]['normalized_score'] - paper:+.1f}"
            lines.append(f"| {task} | {METHODS[m]} | {_cell(row[m])} | "
                         f"{'—' if paper is None else f'{paper:.1f}'} | {diff} |")
    return "\n".join(lines) + "\n"


def plot_scores(agg: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Grouped bars of normalised scores with 95 % intervals, paper values as hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in agg if any(m in agg[t] for m in METHODS)]  # references-only rows: no bars
    methods = [m for m in METHODS if any(m in agg[t] for t in tasks)]
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(tasks) + 2), 4.5))
    for k, m in enumerate(methods):
        xs = np.arange(len(tasks)) + (k - (len(methods) - 1) / 2) * width
        ys = [agg[t][m]["normalized_score"] if m in agg[t] else np.nan for t in tasks]
        err = [agg[t][m]["normalized_score_ci95"] if m in agg[t] else np.nan for t in tasks]
        err = [0 if math.isnan(e) else e for e in err]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=METHODS[m])
        paper = [PAPER_TABLE2.get(t, {}).get(m, np.nan) for t in tasks]
        ax.scatter(xs, paper, marker="_", s=120, color="black", zorder=3,
                   label="paper (Table 2)" if k == 0 else None)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=15)
    ax.set_ylabel("normalised score (50 = dataset average)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("normalised score, mean ± 95% CI over seeds (paper Table 2: black bars)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(curves: dict[str, dict[str, list[list[tuple[float, float]]]]],
                         path: Path) -> None:
    """One panel per ``"<task> <metric>"``; one line per (method, seed) of ``(step, value)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(curves)
    if not panels:
        return
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, panel in zip(axes.flat, panels, strict=False):
        for method, runs in curves[panel].items():
            for i, pts in enumerate(runs):
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, color=colors.get(method), alpha=0.8, marker="." if len(xs) < 20
                        else None, label=METHODS.get(method, method) if i == 0 else None)
        task, _, metric = panel.partition(" ")
        ax.set_title(f"{task}: {metric}", fontsize=9)
        ax.set_xlabel("round" if metric.startswith("rollout") else "optimizer step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_results(path: Path) -> dict[str, Any]:
    """Read a ``results.json``; a clear error if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"results file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or "cells" not in data:
        raise ValueError(f"{path}: not a results.json (no 'cells' list)")
    return data
