"""Evaluation protocols come from the env class with the registered id's kwargs."""

import lmrlgym
from lmrlgym.eval.evaluate import evaluation_resets
from tests.conftest import skip_if_missing


def test_endgames_protocol_uses_the_fixed_positions():
    skip_if_missing(lmrlgym.spec("Endgames-v0"))
    resets = evaluation_resets("Endgames-v0", 3)
    assert [opts for _, opts in resets] == [{"eval_index": i} for i in range(3)]


def test_maze_protocol_cycles_starts_and_shifts_seeds():
    base = evaluation_resets("Maze-FO-v0", 25)
    assert len({opts["start"] for _, opts in base}) == 25
    shifted = evaluation_resets("Maze-FO-v0", 25, seed=7)
    assert [s for s, _ in shifted] == [s + 7 for s, _ in base]
