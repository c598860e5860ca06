"""The Maze value-map diagnostic: rank correlation, the bookkeeping of which hidden state each
value is read from, and the picture."""

import numpy as np
import pytest
import torch

from lmrlgym.envs.maze import COMMANDS, MazeEnv
from lmrlgym.eval.value_map import maze_value_map, plot_value_map, rank_correlation
from lmrlgym.models.factory import build_model
from lmrlgym.models.tokenizer import train_tokenizer


def test_rank_correlation_hand_values():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([5, 5, 5], [1, 2, 3]) == 0.0  # a flat map orders nothing
    # ties share their mean rank: ranks (0.5, 0.5, 2) vs (0, 1, 2) -> Pearson 0.866
    assert rank_correlation([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)


@pytest.fixture(scope="module")
def tiny():
    env = MazeEnv()
    texts = [env.cell_text(c) for c in env.maze.start_cells] + [m + "\n" for m in COMMANDS]
    tok = train_tokenizer(texts * 4, vocab_size=300)
    torch.manual_seed(0)
    return tok, build_model("gpt2-tiny", tok, dropout=0.0, n_positions=256).eval()


def test_values_are_read_where_the_losses_put_them(tiny):
    """Q(s, a) at the state before the action's newline (indexed by the newline id), V(s) at
    the last observation token: checked against one unpadded forward pass per (cell, move)."""
    tok, model = tiny
    w = torch.randn(model.config.n_embd, len(tok), generator=torch.Generator().manual_seed(1))
    u = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(2))

    def readout(h):
        return h @ w, h @ u

    vm = maze_value_map(model, tok, readout, "Maze-FO-v0")
    env = MazeEnv()
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    for i, cell in enumerate(vm.cells[:6]):
        obs = [tok.bos_token_id, *tok(env.cell_text(cell), add_special_tokens=False)["input_ids"]]
        for j, move in enumerate(COMMANDS):
            ids = obs + tok(move + "\n", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                h = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            assert vm.q[i, j] == pytest.approx(float(h[-2] @ w[:, newline]), abs=1e-4)
        assert vm.values[i] == pytest.approx(float(h[len(obs) - 1] @ u), abs=1e-4)
    assert vm.q.shape == (25, 4) and len(vm.cells) == 25


def test_oracle_values_score_one_and_flat_values_zero(tiny, tmp_path):
    """With V and Q taken from the true distances (a readout that looks the cell up), the map
    has ρ = 1 and every greedy move optimal; a constant readout has ρ = 0."""
    tok, model = tiny
    vm = maze_value_map(model, tok, lambda h: (torch.zeros(len(h), len(tok)), torch.zeros(len(h))))
    assert vm.rank_corr == 0.0
    oracle = vm.__class__(vm.task, vm.cells, vm.true_values, np.array(
        [[0.0 if m == o else -1.0 for m in COMMANDS] for o in vm.optimal]), vm.true_values,
        vm.optimal, rank_correlation(vm.true_values, vm.true_values), 1.0)
    assert oracle.rank_corr == pytest.approx(1.0) and oracle.greedy == oracle.optimal
    path = plot_value_map(oracle, tmp_path / "values.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_rejects_non_maze_tasks(tiny):
    tok, model = tiny
    with pytest.raises(ValueError, match="Maze task"):
        maze_value_map(model, tok, lambda h: (h, None), "Wordle-v0")
