"""The 0/50/100 normalisation rule and both constant tables."""

import pytest

from lmrlgym import registry
from lmrlgym.envs import TASK_IDS
from lmrlgym.eval.normalize import PAPER, PROJECT, Constants, normalized_score, score


def test_formula_hand_computed():
    c = Constants(-101, -83, -6.84, "test")
    assert score(-101, c) == 0.0
    assert score(-83, c) == 50.0
    assert score(-6.84, c) == pytest.approx(100.0)
    assert score(-92, c) == pytest.approx(25.0)  # halfway between min and avg
    assert score(-44.92, c) == pytest.approx(75.0)  # halfway between avg and max
    assert score(-401, c) == pytest.approx(50 * -300 / 18)  # unclipped below 0
    assert score(0, c) == pytest.approx(50 + 50 * 83 / 76.16)  # unclipped above 100


@pytest.mark.parametrize("table", [PAPER, PROJECT], ids=["paper", "project"])
def test_constants_map_to_0_50_100(table):
    for task, c in table.items():
        assert task in registry
        assert c.min < c.avg < c.max, task
        assert c.source, task
        name = "paper" if table is PAPER else "project"
        assert normalized_score(task, c.min, name) == pytest.approx(0.0)
        assert normalized_score(task, c.avg, name) == pytest.approx(50.0)
        assert normalized_score(task, c.max, name) == pytest.approx(100.0)


def test_paper_table5_values():
    assert PAPER["Wordle-v0"] == Constants(-6, -4.12, -1.94, PAPER["Wordle-v0"].source)
    assert "CarDealer-v0" not in PAPER


def test_errors():
    with pytest.raises(ValueError, match="'project' or 'paper'"):
        normalized_score("Maze-FO-v0", 0.0, "mine")
    with pytest.raises(KeyError, match="no paper normalisation constants"):
        normalized_score("CarDealer-v0", 0.0, "paper")


def test_every_registered_task_has_project_constants_with_provenance():
    assert set(PROJECT) == set(TASK_IDS)
    for task, c in PROJECT.items():
        assert "20" in c.source and len(c.source) > 40, (task, c.source)  # dated, explained
