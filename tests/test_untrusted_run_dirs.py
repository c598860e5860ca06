"""Run directories from elsewhere never run code (issue 13 item 1, docs/security.md): a run
whose checkpoint state and model weights were replaced by malicious pickles is refused by
``train --resume``, ``eval --run`` and ``serve`` with a one-line error (exit 2), and the
pickles are never unpickled. ``bench run`` is checked in tests/bench/test_run.py."""

import pytest
import torch

from lmrlgym.algos import bc
from lmrlgym.cli import main
from tests.algos.helpers import maze_dataset, micro_model, plant_pickles


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    run_dir = bc.train(bc.preset(
        "Maze-FO-v0", data=maze_dataset(root / "data", 20, "maze-mixture(p_solver=0.5)"),
        out=str(root / "run"), model=micro_model(root / "micro"), vocab_size=300, batch_size=8,
        max_steps=2, save_every=1, tensorboard=False))
    marker = root / "MARKER"
    files = plant_pickles(run_dir, marker)
    # The planted files are live: unpickling any of them creates the marker.
    for path in files:
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()
    return run_dir, marker


@pytest.mark.parametrize(("command", "message"), [
    (["train", "bc", "--resume"], "state.pt: refused: this pickled checkpoint"),
    (["eval", "--episodes", "1", "--run"], "reads model weights from safetensors only"),
    (["serve", "--port", "1"], "reads model weights from safetensors only"),
])
def test_planted_pickles_are_refused_and_never_run(planted, command, message, capsys):
    run_dir, marker = planted
    with pytest.raises(SystemExit) as exit_info:
        main([*command, str(run_dir)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err and "Traceback" not in err
    assert not marker.exists()
