"""What a run writes and reads besides weights: datasets without a manifest only with
``allow_partial``, files and directories with the umask's permissions, and JSONL logs split on
``\\n`` only (issue 13, items 5, 7 and 10 as they reach the training code)."""

import json
import os
import shutil

import pytest

from lmrlgym.algos import mc
from lmrlgym.algos.cli import parse_config
from lmrlgym.algos.metrics import trim_jsonl
from lmrlgym.algos.online import load_replay
from lmrlgym.algos.rundir import REPLAY_FILE
from lmrlgym.core import Episode, Turn
from lmrlgym.data.io import DatasetError
from tests.algos.helpers import maze_dataset, micro_model


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_partial_dataset_needs_allow_partial_and_every_file_honours_the_umask(tmp_path, umask_022):
    data = tmp_path / "partial"
    shutil.copytree(maze_dataset(tmp_path / "data", 20, "maze-mixture(p_solver=0.5)"), data)
    (data / "manifest.json").unlink()  # an interrupted `data generate`
    config = mc.preset("Maze-FO-v0", data=str(data), out=str(tmp_path / "run"),
                       model=micro_model(tmp_path / "micro"), vocab_size=300, batch_size=8,
                       max_steps=1, tensorboard=False)
    with pytest.raises(DatasetError, match="manifest.json"):
        mc.train(config)
    run_dir = mc.train(mc.MCConfig(**{**config.__dict__, "out": str(tmp_path / "run2"),
                                      "allow_partial": True}))
    modes = {str(p.relative_to(run_dir)): p.stat().st_mode & 0o777 for p in run_dir.rglob("*")}
    assert {"checkpoints/latest", "heads.safetensors", "model", "tokenizer",
            "checkpoints/step_00000001"} <= modes.keys()
    wrong = {p: oct(m) for p, m in modes.items()
             if m != (0o755 if (run_dir / p).is_dir() else 0o644)}
    assert not wrong, wrong


def test_allow_partial_is_a_flag_of_the_offline_methods_only():
    assert parse_config("bc", ["--allow-partial"]).allow_partial
    assert parse_config("ppo", ["--allow-partial"]).allow_partial  # its BC term reads data
    with pytest.raises(SystemExit):
        parse_config("online_filtered_bc", ["--allow-partial"])


def test_jsonl_logs_split_on_newline_only_and_drop_an_unfinished_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "note\u2028\x85\x1c": 1.0}, ensure_ascii=False) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "tr', encoding="utf-8")
    assert [r["step"] for r in trim_jsonl(path, "step", lambda s: s <= 2)] == [1, 2]
    assert path.read_text(encoding="utf-8") == lines[0] + "\n" + lines[1] + "\n"
    path.write_text(lines[0] + '\n{"step": \n' + lines[1] + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON object with 'step'"):
        trim_jsonl(path, "step", lambda s: True)


def test_the_replay_buffer_keeps_text_with_line_separators(tmp_path):
    ep = Episode(task="Maze-FO-v0", turns=[Turn("a\u2028b\n", False), Turn("go\u0085\n", True, -1.0)],
                 terminated=True, truncated=False, success=False)
    rec = {"round": 0, "episode": ep.to_json(), "action_ids": [[5, 6]]}
    (tmp_path / REPLAY_FILE).write_text(json.dumps(rec, ensure_ascii=False) + "\n" +
                                        json.dumps({**rec, "round": 1}) + "\n", encoding="utf-8")
    (replayed,) = load_replay(tmp_path, start=1)
    assert replayed.episode.turns == ep.turns and replayed.action_ids == [[5, 6]]
