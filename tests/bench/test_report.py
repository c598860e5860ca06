"""Aggregation over seeds, the t-interval, the table and the paper comparison."""

import math

import pytest

from lmrlgym.bench.report import (
    aggregate,
    comparison_table,
    markdown_table,
    ordering_flags,
    paired_table,
    paired_vs_bc,
    plot_scores,
    t_interval,
)


def test_t_interval_hand_computed():
    mean, half = t_interval([1.0, 2.0, 3.0])  # s = 1, t(0.975, 2) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    mean, half = t_interval([5.0, 7.0])  # s = sqrt(2), t(0.975, 1) = 12.706
    assert half == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
    assert math.isnan(t_interval([4.0])[1])
    with pytest.raises(ValueError):
        t_interval([])


def _cells():
    out = []
    for seed, (bc, ilql) in enumerate([(40.0, 70.0), (44.0, 74.0)]):
        out.append({"task": "Maze-FO-v0", "method": "bc", "seed": seed, "mean_return": -50 + seed,
                    "normalized_score": bc, "success_rate": 0.5})
        out.append({"task": "Maze-FO-v0", "method": "ilql", "seed": seed,
                    "mean_return": -20.0, "normalized_score": ilql, "success_rate": 0.9})
    # MC below BC: the paper has MC (75.0) above BC (58.2), so this pair must be flagged.
    out.append({"task": "Maze-FO-v0", "method": "mc", "seed": 0, "mean_return": -90.0,
                "normalized_score": 10.0})
    return out


def test_aggregate_and_table():
    agg = aggregate(_cells())
    bc = agg["Maze-FO-v0"]["bc"]
    assert bc["normalized_score"] == 42.0 and bc["seeds"] == [0, 1]
    assert bc["normalized_score_ci95"] == pytest.approx(12.706 * math.sqrt(8) / math.sqrt(2))
    md = markdown_table(agg)
    assert "| Maze-FO-v0 | 42.0 ± 25.4 | — | 10.0 | 72.0 ± 25.4 |" in md


def test_ordering_flags_only_for_reversed_pairs():
    flags = ordering_flags(aggregate(_cells()))
    # Only (BC, MC) is reversed; (BC, ILQL) and (MC, ILQL) agree with the paper.
    assert flags == ["Maze-FO-v0: paper has BC < MC Returns (58.2 vs 75.0); ours 42.0 vs 10.0"]


def test_paired_difference_from_bc_hand_computed():
    cells = []
    # BC spreads by 20 points between seeds; PPO is BC + 3 at seed 0 and BC + 5 at seed 1, so
    # the unpaired intervals overlap but the paired one is 4 ± 12.706 * sqrt(2) / sqrt(2).
    for seed, (bc, ppo) in enumerate([(40.0, 43.0), (60.0, 65.0)]):
        cells.append({"task": "Maze-FO-v0", "method": "bc", "seed": seed, "mean_return": 0.0,
                      "normalized_score": bc})
        cells.append({"task": "Maze-FO-v0", "method": "ppo", "seed": seed, "mean_return": 0.0,
                      "normalized_score": ppo})
    # A seed BC lacks is left out of the pairing; a task without BC gets no row.
    cells.append({"task": "Maze-FO-v0", "method": "ppo", "seed": 7, "mean_return": 0.0,
                  "normalized_score": 0.0})
    cells.append({"task": "Wordle-v0", "method": "ilql", "seed": 0, "mean_return": 0.0,
                  "normalized_score": 9.0})
    paired = paired_vs_bc(aggregate(cells))
    assert list(paired) == ["Maze-FO-v0"] and list(paired["Maze-FO-v0"]) == ["ppo"]
    d = paired["Maze-FO-v0"]["ppo"]
    assert d["diffs"] == [3.0, 5.0] and d["mean"] == 4.0 and d["above"] == 2
    assert d["ci95"] == pytest.approx(12.706)
    # Columns: the methods other than BC (the paper's five, then GRPO, RLOO, GiGPO, ArCHer).
    assert "| Maze-FO-v0 | — | — | — | +4.0 ± 12.7 (2/2) | — | — | — | — | — |" in paired_table(paired)
    # Paired with PPO instead: ILQL on Wordle has no PPO to pair with; Maze-FO's BC is −4.
    vs_ppo = paired_vs_bc(aggregate(cells), base="ppo")
    assert list(vs_ppo) == ["Maze-FO-v0"] and vs_ppo["Maze-FO-v0"]["bc"]["diffs"] == [-3.0, -5.0]
    assert "| Maze-FO-v0 | -4.0 ± 12.7 (0/2) | — | — | — | — | — | — | — | — |" in paired_table(vs_ppo, "ppo")


def test_comparison_and_plot(tmp_path):
    agg = aggregate(_cells())
    table = comparison_table(agg)
    assert "| Maze-FO-v0 | ILQL | 72.0 ± 25.4 | 99.9 | -27.9 |" in table
    plot_scores(agg, tmp_path / "scores.png")
    assert (tmp_path / "scores.png").stat().st_size > 1000
