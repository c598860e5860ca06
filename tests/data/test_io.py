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
    back, skipped = read_episodes(tmp_path, allow_partial=True)
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
        read_episodes(tmp_path, allow_partial=True)
    assert f"a.jsonl:2: field {field!r}" in str(e.value)
    eps, skipped = read_episodes(tmp_path, skip_bad=True, allow_partial=True)
    assert len(eps) == 1 and skipped == 1


def test_invalid_json_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"task": \n')
    with pytest.raises(DatasetError) as e:
        read_episodes(tmp_path, allow_partial=True)
    # The whole message: where, what the parser expected, and the way past it.
    assert str(e.value) == (f"{tmp_path / 'a.jsonl'}:1: invalid JSON at column 10: Expecting "
                            "value (--skip-bad skips unreadable lines)")


GOOD = json.dumps(_ep(0, -1.0, True).to_json(), separators=(",", ":"))


@pytest.mark.parametrize("name, content, message", [
    ("deep.jsonl", (GOOD + "\n" + "[" * 100_000 + "\n").encode(),
     "deep.jsonl:2: JSON nested too deeply to read"),
    ("utf8.jsonl", GOOD.encode() + b"\n" + b'{"task": "\xff\xfe"}\n',
     "utf8.jsonl:2: invalid UTF-8 (byte 0xff at column 11)"),
    ("nan.jsonl", (GOOD + "\n" + GOOD.replace('"reward":-1.0', '"reward":NaN') + "\n").encode(),
     "nan.jsonl:2: field 'turns[1].reward': not a finite number: nan"),
    ("inf.jsonl", (GOOD + "\n" + GOOD.replace('"reward":-1.0', '"reward":1e999') + "\n").encode(),
     "inf.jsonl:2: field 'turns[1].reward': not a finite number: inf"),
    ("ret.jsonl", (GOOD + "\n" + GOOD.replace('"return":-1.0', '"return":-Infinity') + "\n").encode(),
     "ret.jsonl:2: field 'return': not a finite number: -inf"),
    ("notgz.jsonl.gz", (GOOD + "\n").encode(), "notgz.jsonl.gz:1: not valid gzip data"),
    ("empty.jsonl", b"", "empty.jsonl: empty file (0 bytes)"),
])
def test_unreadable_lines_are_file_line_errors_and_skippable(tmp_path, name, content, message):
    write_shard(tmp_path / "a-good.jsonl", [_ep(1, -1.0, True)])
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError) as e:
        read_episodes(tmp_path, allow_partial=True)
    assert message in str(e.value) and str(tmp_path / name) in str(e.value)
    assert str(e.value).endswith("(--skip-bad skips unreadable lines)")
    eps, skipped = read_episodes(tmp_path, skip_bad=True, allow_partial=True)
    assert skipped == 1
    assert len(eps) == (1 if name in ("notgz.jsonl.gz", "empty.jsonl") else 2)


def test_truncated_gzip_keeps_the_lines_before_the_damage(tmp_path):
    import gzip

    data = gzip.compress("".join(GOOD + "\n" for _ in range(200)).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut.jsonl.gz:\d+: not valid gzip data"):
        read_episodes(tmp_path, allow_partial=True)
    eps, skipped = read_episodes(tmp_path, skip_bad=True, allow_partial=True)
    assert 0 < len(eps) < 200 and skipped == 1


def test_a_line_holding_u2028_is_one_record(tmp_path):
    ep = _ep(0, -1.0, True)
    ep.turns[0] = Turn("Wordle:\u2028\u0085\x1c\n", False)
    write_shard(tmp_path / "a.jsonl", [ep])  # written raw (ensure_ascii=False)
    assert "\u2028" in (tmp_path / "a.jsonl").read_text(encoding="utf-8")
    back, _ = read_episodes(tmp_path, allow_partial=True)
    assert back[0].turns[0].text == "Wordle:\u2028\u0085\x1c\n"


def test_not_an_object():
    with pytest.raises(DatasetError, match="expected a JSON object"):
        episode_from_json([1, 2], "x:1")


def test_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_episodes(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no \\*.jsonl"):
        read_episodes(tmp_path, allow_partial=True)


def test_directory_without_its_manifest_is_refused(tmp_path):
    from lmrlgym.data.generate import write_dataset

    write_dataset([_ep(i, -1.0, True) for i in range(3)], tmp_path / "ds", "test")
    assert len(read_episodes(tmp_path / "ds")[0]) == 3
    (tmp_path / "ds" / "manifest.json").unlink()  # as after an interrupted data generate
    with pytest.raises(DatasetError) as e:
        read_episodes(tmp_path / "ds")
    assert str(e.value).startswith(f"{tmp_path / 'ds'}: no manifest.json, so the dataset is "
                                   "incomplete")
    assert str(e.value).endswith("pass --allow-partial to use the shards that are there")
    assert len(read_episodes(tmp_path / "ds", allow_partial=True)[0]) == 3
    # A manifest whose shards are not all there is refused the same way.
    write_dataset([_ep(i, -1.0, True) for i in range(3)], tmp_path / "ds2", "test")
    manifest = json.loads((tmp_path / "ds2" / "manifest.json").read_text())
    (tmp_path / "ds2" / "manifest.json").write_text(json.dumps(
        {**manifest, "shards": [*manifest["shards"], "shard-00001.jsonl"]}))
    with pytest.raises(DatasetError, match=r"lists 1 shard\(s\) that are missing: "
                                           r"shard-00001.jsonl; pass --allow-partial"):
        read_episodes(tmp_path / "ds2")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old\n")

    with pytest.raises(TypeError):
        atomic_write_text(path, 3)  # type: ignore[arg-type]  # fails mid-write
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    import os

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x\n")
        write_shard(tmp_path / "s.jsonl", [_ep(0, -1.0, True)])
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "s.jsonl").stat().st_mode & 0o777 == mode


def test_unwritable_target_is_named_not_its_temp_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        atomic_write_text(tmp_path / "nope" / "f.txt", "x")
    assert e.value.filename == str(tmp_path / "nope" / "f.txt")


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
    # With a task (play --policy, data generate --policy) only that task's policies are listed.
    with pytest.raises(ValueError) as e:
        make_policy("nope", "Maze-FO-v0")
    assert str(e.value) == ("unknown policy 'nope'. Valid policies for Maze-FO-v0: maze-mixture, "
                            "maze-optimal, maze-random, maze-submaze, maze-belief")
