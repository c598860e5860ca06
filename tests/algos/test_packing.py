"""Packed training rows (``collate(pack=True)``, ``--packing``) equal the padded batch."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmrlgym.algos import bc, ilql, mc
from lmrlgym.algos.backbone import batch_states
from lmrlgym.data.generate import generate_dataset
from lmrlgym.models.render import Segment, collate, pack_bins
from tests.algos.helpers import micro_model


def segment(ids: list[int]) -> Segment:
    n = len(ids)
    return Segment(input_ids=torch.tensor(ids), action_mask=torch.arange(n) % 2 == 1,
                   rewards=torch.zeros(n), turn_end=torch.zeros(n, dtype=torch.bool),
                   returns=torch.zeros(n), next_ids=torch.tensor([], dtype=torch.long),
                   terminal=True)


def test_pack_bins_first_fit_decreasing():
    # Longest first: 5 and 4 open bins, 3 opens a third (1 left beside the 4), 2 joins the 3.
    assert pack_bins([3, 5, 2, 4], 5) == [[1], [3], [0, 2]]
    assert pack_bins([2, 2, 1], 5) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="row 0 has 6 tokens, more than the capacity 5"):
        pack_bins([6, 1], 5)


def test_packed_hidden_states_equal_the_padded_batch():
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                    vocab_size=50)).eval()
    gen = torch.Generator().manual_seed(0)
    lengths = [20, 3, 9, 11, 7, 1, 16, 4]
    segs = [segment(torch.randint(3, 50, (n,), generator=gen).tolist()) for n in lengths]
    padded, packed = collate(segs, pad_id=0), collate(segs, pad_id=0, pack=True)
    p = packed.packing
    assert p is not None and p.input_ids.shape == (4, 20)  # 71 tokens in 4 rows of 20
    assert packed.pad_fraction == pytest.approx(1 - 71 / 80)
    assert padded.pad_fraction == pytest.approx(1 - 71 / 160)
    # Each packed token carries its row's id and position (restarting at 0 per row).
    real = padded.attention_mask.bool()
    flat_ids, flat_pos = p.input_ids.flatten(), p.position_ids.flatten()
    assert torch.equal(flat_ids[p.index[real]], padded.input_ids[real])
    assert torch.equal(flat_pos[p.index[real]], real.long().cumsum(1)[real] - 1)
    with torch.no_grad():
        h_pad, h_pack = batch_states(lm, padded), batch_states(lm, packed)  # (B, T, d)
    # Attention that crossed a row boundary would change every later token of the packed rows.
    torch.testing.assert_close(h_pack[real], h_pad[real], rtol=1e-4, atol=1e-5)
    assert torch.equal(h_pack[~real], torch.zeros_like(h_pack[~real]))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    data = root / "maze_po"  # append-only rows of many lengths: packing has something to do
    generate_dataset("Maze-PO-v0", data, 12, "maze-mixture(p_solver=0.5)", seed=3)
    return {"model": micro_model(root / "micro"), "data": str(data)}


def logged(run_dir, key):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x[key] for x in lines if key in x]


@pytest.mark.parametrize("module", [bc, mc, ilql], ids=["bc", "mc", "ilql"])
def test_packed_training_equals_padded_training(module, assets, tmp_path):
    # The micro model has no dropout (and MC/ILQL turn it off), so the runs differ only by
    # float rounding: the same losses, step after step, and the same validation loss.
    runs = {}
    for packing in (False, True):
        config = module.preset("Maze-PO-v0", data=assets["data"], model=assets["model"],
                               out=str(tmp_path / str(packing)), vocab_size=300, batch_size=8,
                               max_steps=3, log_every=1, max_context_tokens=256,
                               val_fraction=0.2, tensorboard=False, packing=packing)
        runs[packing] = module.train(config)
    for key in ("train/loss", "eval/loss"):
        padded, packed = logged(runs[False], key), logged(runs[True], key)
        assert len(padded) == (3 if key == "train/loss" else 1)
        assert packed == pytest.approx(padded, rel=1e-4, abs=1e-6)
    pad, pack = logged(runs[False], "time/pad_fraction"), logged(runs[True], "time/pad_fraction")
    assert all(b <= a for a, b in zip(pad, pack, strict=True)) and sum(pack) < sum(pad), (pad, pack)
