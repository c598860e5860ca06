"""Episode record I/O: round trips, validation errors that name file/line/field, atomic writes."""

import json

import pytest

from lmrlgym.core import Episode, Turn
from lmrlgym.data.io import (
    DatasetError,
    atomic_write_text,
    episode_from_json,
    read_episodes,
    write_shard,
)
from lmrlgym.data.policies import make_policy, parse_policy_spec
from lmrlgym.data.stats import episode_stats


def _ep(i: int, ret: float, success: bool) -> Episode:
    return Episode("Wordle-v0", [Turn("Wordle:\n", False), Turn("c r a n e\n", True, ret),
                                 Turn("b b b b b\n", False)], terminated=success,
                   truncated=not success, success=success, seed=i, meta={"i": i})


def test_round_trip(tmp_path):
    eps = [_ep(i, -float(i), i % 2 == 0) for i in range(5)]
    write_shard(tmp_path / "shard-00000.jsonl", eps)
    back, skipped = read_episodes(tmp_path)
    assert skipped == 0
    assert [e.to_json() for e in back] == [e.to_json() for e in eps]


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r.pop("turns"), "turns"),
        (lambda r: r["turns"][1].update(is_action="yes"), "turns[1].is_action"),
        (lambda r: r["turns"][0].update(reward=1.0), "turns[0].reward"),
        (lambda r: r["turns"][2].update(text=""), "turns[2].text"),
        (lambda r: r.update(terminated=None), "terminated"),
        (lambda r: r.update({"return": 99.0}), "return"),
        (lambda r: r.update(format="other/1"), "format"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, mutate, field):
    good = _ep(0, -1.0, True).to_json()
    bad = _ep(1, -1.0, True).to_json()
    mutate(bad)
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DatasetError) as e:
        read_episodes(tmp_path)
    assert f"a.jsonl:2: field {field!r}" in str(e.value)
    eps, skipped = read_episodes(tmp_path, skip_bad=True)
    assert len(eps) == 1 and skipped == 1


def test_invalid_json_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"task": \n')
    with pytest.raises(DatasetError, match=r"a.jsonl:1: invalid JSON"):
        read_episodes(tmp_path)


def test_not_an_object():
    with pytest.raises(DatasetError, match="expected a JSON object"):
        episode_from_json([1, 2], "x:1")


def test_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_episodes(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no \\*.jsonl"):
        read_episodes(tmp_path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old\n")

    with pytest.raises(TypeError):
        atomic_write_text(path, 3)  # type: ignore[arg-type]  # fails mid-write
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_stats():
    s = episode_stats([_ep(0, -1.0, True), _ep(1, -3.0, False)])
    assert s["episodes"] == 2 and s["success_rate"] == 0.5
    assert s["return_mean"] == -2.0 and s["return_std"] == 1.0 and s["length_mean"] == 1.0


def test_policy_spec_parsing():
    assert parse_policy_spec("maze-mixture") == ("maze-mixture", {})
    assert parse_policy_spec("maze-mixture(p_solver=0.3)") == ("maze-mixture", {"p_solver": 0.3})
    assert parse_policy_spec("x(a=1, b='y', c=(1, 2))") == ("x", {"a": 1, "b": "y", "c": (1, 2)})
    for bad in ("x(1)", "x(a=)", "x(a=foo)", "(a=1)"):
        with pytest.raises(ValueError):
            parse_policy_spec(bad)


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(ValueError, match="Did you mean 'maze-mixture'.*Valid policies"):
        make_policy("maze-mixtur")
    with pytest.raises(ValueError, match="is for Wordle-v0"):
        make_policy("wordle-random", "Maze-FO-v0")
