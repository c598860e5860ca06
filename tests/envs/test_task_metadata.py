"""Per-task metadata on the registry: one source for lengths, protocols, groups, paper sizes."""

from collections import Counter

import pytest

from lmrlgym.envs import TASK_IDS, task_group, task_lengths
from lmrlgym.registry import Lengths, Protocol, spec


@pytest.mark.parametrize("task", TASK_IDS)
def test_every_task_declares_its_facts(task):
    s = spec(task)
    assert isinstance(s.lengths, Lengths)
    assert s.group is not None and task in task_group(s.group)
    assert s.paper is not None and s.paper.data_episodes > 0 and s.paper.model.startswith("gpt2")
    assert s.protocol.episodes % s.protocol.cycle == 0


def test_eval_bench_and_training_read_the_spec():
    from lmrlgym.algos import presets
    from lmrlgym.bench.presets import PAPER_DATA, PAPER_EVAL, PAPER_MODEL
    from lmrlgym.eval.evaluate import protocol_episodes

    for task in TASK_IDS:
        s = spec(task)
        assert protocol_episodes(task) == PAPER_EVAL[task] == s.protocol.episodes
        assert PAPER_DATA[task] == s.paper.data_episodes
        assert PAPER_MODEL[task] == s.paper.model
        assert presets.TASK_LENGTHS[task] == s.lengths.as_dict()
    assert presets.TASK_LENGTHS == task_lengths()
    assert presets.MAZE == ("Maze-FO-v0", "Maze-PO-v0")
    assert presets.TEXTNAV == ("TextNav-FO-v0", "TextNav-PO-v0")
    assert presets.CHESS == ("Chess-v0", "Endgames-v0")
    assert presets.DIALOGUE == ("TwentyQuestions-v0", "GuessCity-v0", "CarDealer-v0")


def test_paper_values():
    # The numbers the presets and the CLI used before they moved onto the specs, except 20Q
    # (500 -> 632 = 4 x 158, so every object is played equally often).
    episodes = {t: spec(t).protocol.episodes for t in TASK_IDS}
    assert episodes == {
        "Maze-FO-v0": 800, "Maze-PO-v0": 800, "TextNav-FO-v0": 512, "TextNav-PO-v0": 512,
        "Wordle-v0": 4096, "Chess-v0": 1000, "Endgames-v0": 645, "TwentyQuestions-v0": 632,
        "GuessCity-v0": 500, "CarDealer-v0": 512,
    }
    assert spec("Maze-FO-v0").lengths == Lengths(256, 8)
    assert spec("Endgames-v0").lengths == Lengths(150, 10)
    assert spec("CarDealer-v0").paper.model == "gpt2-xl"


@pytest.mark.parametrize("task", [t for t in TASK_IDS if spec(t).protocol.cycle > 1])
def test_protocol_plays_every_item_equally_often(task):
    s = spec(task)
    if s.id == "Endgames-v0":  # the positions file is read through python-chess
        pytest.importorskip("chess")
    resets = s.evaluation_resets()
    assert len(resets) == s.protocol.episodes
    assert len({seed for seed, _ in resets}) == len(resets)  # no episode repeats
    items = Counter(tuple(sorted(options.items())) for _, options in resets)
    assert len(items) == s.protocol.cycle
    assert set(items.values()) == {s.protocol.repeats}


def test_protocol_refuses_unequal_coverage():
    with pytest.raises(ValueError, match="equally often"):
        Protocol(500, cycle=158, cycle_over="objects")
    with pytest.raises(ValueError, match="positive"):
        Protocol(0)
    with pytest.raises(ValueError, match="positive"):
        Lengths(0, 8)


def test_unknown_group_names_the_valid_ones():
    with pytest.raises(ValueError, match="dialogue"):
        task_group("dialog")


def test_spec_resets_use_the_spec_kwargs():
    pytest.importorskip("chess")  # the env module needs it; Stockfish does not matter here
    assert spec("Endgames-v0").evaluation_resets(2) == [(0, {"eval_index": 0}), (1, {"eval_index": 1})]
    assert spec("Chess-v0").evaluation_resets(2) == [(0, {}), (1, {})]
