"""Checkpoint state without pickles (issue 13 item 1): the optimizer and RNG states round-trip
exactly through JSON and safetensors, a malformed or foreign state file is a clear
``CheckpointError``, and an older run's ``state.pt`` still resumes when it holds only tensors,
containers and the RNG's NumPy array."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmrlgym.algos import bc
from lmrlgym.algos.checkpoint import (
    CheckpointError,
    pack,
    read_legacy_state,
    read_state,
    rng_state,
    set_rng_state,
    unpack,
)
from tests.algos.helpers import MaliciousPickle, maze_dataset, micro_model, rewound_copy


def _adam_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def test_optimizer_and_rng_state_round_trip_exactly_through_json():
    state = {"optimizer": _adam_state(), "rng": rng_state()}
    tensors = {}
    restored = unpack(json.loads(json.dumps(pack(state, tensors))), tensors)
    opt = restored["optimizer"]
    assert opt["param_groups"] == state["optimizer"]["param_groups"]  # betas stay a tuple
    assert opt["state"].keys() == {0, 1}  # int keys stay ints
    for k, v in state["optimizer"]["state"][0].items():
        assert torch.equal(opt["state"][0][k], v)
    draws = [random.random(), np.random.rand(), torch.rand(1).item()]
    set_rng_state(restored["rng"])
    assert [random.random(), np.random.rand(), torch.rand(1).item()] == draws


@pytest.mark.parametrize("text", ['{"optimizer": 1}', '{"eval": "os.system"}', "[" * 100_000])
def test_a_malformed_state_file_is_a_checkpoint_error_naming_it(tmp_path, text):
    from safetensors.torch import save_file

    save_file({}, str(tmp_path / "state.safetensors"))
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(CheckpointError, match="state.json"):
        read_state(tmp_path)
    (tmp_path / "state.json").unlink()
    with pytest.raises(CheckpointError, match="no state.json"):
        read_state(tmp_path)


def test_a_legacy_pickle_with_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"optimizer": MaliciousPickle(marker), "rng": {}}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="never unpickles"):
        read_legacy_state(tmp_path / "state.pt")
    assert not marker.exists()


def test_a_legacy_state_pt_resumes_to_the_uninterrupted_weights(tmp_path):
    base = dict(data=maze_dataset(tmp_path / "data", 20, "maze-mixture(p_solver=0.5)"),
                model=micro_model(tmp_path / "micro"), vocab_size=300, batch_size=8,
                max_steps=4, save_every=2, log_every=1, tensorboard=False)
    full = bc.train(bc.preset("Maze-FO-v0", out=str(tmp_path / "full"), **base))
    part = rewound_copy(full, tmp_path / "part", 2)
    # Rewrite step 2's state as the previous version did: torch.save of the RNG states' own
    # Python and NumPy tuples.
    ckpt = part / "checkpoints" / "step_00000002"
    state, _ = read_state(ckpt)
    version, internal, gauss = state["rng"]["python"]
    kind, key, pos, has_gauss, cached = state["rng"]["numpy"]
    rng = {"python": (version, tuple(internal), gauss),
           "numpy": (kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached),
           "torch": state["rng"]["torch"]}
    torch.save({"optimizer": state["optimizer"], "rng": rng}, ckpt / "state.pt")
    (ckpt / "state.json").unlink()
    (ckpt / "state.safetensors").unlink()
    bc.train(bc.BCConfig(resume=str(part)))
    a, b = (load_file(d / "model" / "model.safetensors") for d in (full, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_foreign_config_or_latest_pointer_is_an_error_naming_the_file(tmp_path):
    from lmrlgym.algos import latest_checkpoint, load_config

    (tmp_path / "config.json").write_text('{"algo": "bc", "batch_size": "x", "evil": 1}')
    with pytest.raises(ValueError, match=r"config\.json: .*evil"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match=r"config\.json: not a readable config"):
        load_config(tmp_path)
    (tmp_path / "checkpoints" / "step_1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(ValueError, match="latest: expected the name of a step_<N> directory"):
        latest_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step_1\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_1"
