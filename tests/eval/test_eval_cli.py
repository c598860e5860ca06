"""eval_main (``lmrlgym eval``): scripted policies, output files and bad input."""

import json

import pytest

from lmrlgym.eval.cli import eval_main


def test_scripted_policy_writes_summary_and_prints_table(tmp_path, capsys):
    eval_main(policy="maze-optimal", task="Maze-FO-v0", episodes=25, out=tmp_path / "ev")
    text = capsys.readouterr().out
    assert "normalized score (project)  100.0" in text and "-6.840" in text
    summary = json.loads((tmp_path / "ev" / "eval_summary.json").read_text())
    assert summary["episodes"] == 25 and summary["success_rate"] == 1.0
    assert len((tmp_path / "ev" / "episodes.jsonl").read_text().splitlines()) == 25


def test_json_output(tmp_path, capsys):
    eval_main(policy="maze-optimal", task="Maze-FO-v0", episodes=3, out=tmp_path, json_output=True)
    assert json.loads(capsys.readouterr().out)["episodes"] == 3


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one of --run"),
    ({"policy": "maze-optimal", "run": "x"}, "exactly one of --run"),
    ({"policy": "maze-optimal"}, "--task is required"),
    ({"policy": "maze-optimal", "task": "Maze-FO-v0"}, "--out is required"),
    ({"policy": "maze-optimal", "task": "Maze-FO-v0", "out": "o", "env_kwargs": "{"}, "not valid JSON"),
    ({"policy": "maze-optimal", "task": "Maze-FO-v0", "out": "o", "episodes": 0}, "positive"),
    ({"policy": "maze-optimall", "task": "Maze-FO-v0", "out": "o"}, "Did you mean 'maze-optimal'"),
    ({"policy": "openai:not-a-url", "task": "Maze-FO-v0", "out": "o"}, "openai:"),
])
def test_bad_input(kwargs, match, tmp_path):
    if "out" in kwargs:
        kwargs["out"] = tmp_path / kwargs["out"]
    with pytest.raises(ValueError, match=match):
        eval_main(**kwargs)


def test_missing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        eval_main(run=tmp_path / "nope", task="Maze-FO-v0")
