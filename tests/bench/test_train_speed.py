"""``bench train``: the FLOP count by hand, and one tiny end-to-end measurement."""

import pytest

from lmrlgym.bench.train_speed import Shape, bench_train, flops_per_row
from tests.algos.helpers import micro_model

SHAPE = Shape(n_layer=2, d=4, vocab=10, n_trunk=100)


def test_flops_per_row_by_hand():
    # L = 3 tokens, n = 2 action tokens, next_ids of 2 tokens.
    trunk = 6 * 100 * 3 + 6 * 2 * 4 * 9  # 1800 + 432
    lm = 6 * 4 * 10 * 2  # 480
    q = 6 * (16 + 40) * 2  # 672
    assert flops_per_row("bc", SHAPE, 3, 2, 0) == trunk + lm
    assert flops_per_row("filtered_bc", SHAPE, 3, 2, 0) == trunk + lm
    assert flops_per_row("mc", SHAPE, 3, 2, 0) == trunk + lm + q
    v = 6 * (16 + 4) * 3
    target = (2 * 100 * 3 + 2 * 2 * 4 * 9) + 2 * 2 * (16 + 40) * 2
    boot = 2 * 100 * 2 + 2 * 2 * 4 * 4
    assert flops_per_row("ilql", SHAPE, 3, 2, 2) == trunk + lm + 2 * q + v + target + boot
    with pytest.raises(ValueError, match="unknown algorithm"):
        flops_per_row("ppo", SHAPE, 3, 2, 0)


def test_bench_train_measures_each_algorithm(tmp_path):
    model = micro_model(tmp_path / "micro")
    rows = bench_train(model, ("bc", "ilql"), batch_size=4, steps=1, max_context_tokens=64,
                       episodes=4, workdir=str(tmp_path))  # one torch thread: tests/conftest.py
    assert [(r["algo"], r["packing"]) for r in rows] == [
        ("bc", False), ("bc", True), ("ilql", False), ("ilql", True)]
    for r in rows:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["matmul_flops_per_s"] > 0
        assert r["flops_per_token"] > 0 and 0 < r["action_fraction"] < 1
        assert 0 <= r["pad_fraction"] < 1
    assert rows[0]["rel_cost_per_token"] == 1.0
    assert rows[2]["flops_per_token"] > rows[0]["flops_per_token"]  # ILQL does more per token
    assert rows[1]["pad_fraction"] <= rows[0]["pad_fraction"]  # the same batches, packed


def test_bench_train_times_trl_sft_on_the_same_rows(tmp_path, monkeypatch):
    pytest.importorskip("trl", reason='needs trl: pip install "lmrlgym[dev]"')
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # everything is local; a download would fail
    model = micro_model(tmp_path / "micro")
    rows = bench_train(model, ("bc",), batch_size=4, steps=1, max_context_tokens=64,
                       episodes=4, workdir=str(tmp_path), packing=(True,), trl=True)
    assert [(r["algo"], r["packing"]) for r in rows] == [("bc", True), ("trl_sft", False),
                                                         ("trl_sft_shipped", False)]
    bc, trl, shipped = rows
    assert shipped["tokens_per_s"] > 0 and shipped["flops_per_token"] == bc["flops_per_token"]
    assert trl["tokens_per_s"] > 0 and 0 < trl["mfu"] < 1.5 and 0 <= trl["pad_fraction"] < 1
    # The same rows: the same FLOPs per token and workload statistics as BC's.
    assert trl["flops_per_token"] == bc["flops_per_token"]
    assert trl["rows_mean_tokens"] == bc["rows_mean_tokens"]


def test_bench_train_under_bf16_autocast(tmp_path):
    # --mixed-precision bf16 trains the algorithm under autocast (the precision TRL ships with).
    model = micro_model(tmp_path / "micro")
    (row,) = bench_train(model, ("bc",), batch_size=4, steps=1, max_context_tokens=64, episodes=4,
                         workdir=str(tmp_path), packing=(False,), mixed_precision="bf16")
    assert row["tokens_per_s"] > 0 and row["algo"] == "bc" and row["mixed_precision"] == "bf16"
    with pytest.raises(ValueError, match="mixed"):
        bench_train(model, ("bc",), episodes=4, workdir=str(tmp_path), mixed_precision="fp8")
