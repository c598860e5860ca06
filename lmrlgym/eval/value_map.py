"""The value-map diagnostic of a value method on Maze (``lmrlgym diagnose values``).

Maze has one observation text per free cell (Maze-FO: position and walls), so a value method's
learned values can be laid on the grid and compared with the true optimal ones. For every
non-goal cell ``s`` and move ``a`` we read, from one forward pass over ``BOS + obs(s) + a``:

- ``Q(s, a)``: the Q head at the action's last token (its newline). With per-turn discounting
  every token of a turn regresses toward the same end-of-turn target, so this is the turn's
  ``r + γ V(s')`` (docs/algorithms.md §1.7); ILQL uses ``min(Q1, Q2)``.
- ``V(s)``: ILQL's V head at the last observation token; MC has no V, so ``max_a Q(s, a)``.

Reported: the Spearman rank correlation of ``V`` with the true optimal value ``−(d − 1)`` over
the non-goal cells (1 = the learned values order the cells as the shortest paths do), and the
share of cells whose greedy move ``argmax_a Q(s, a)`` is a shortest-path move (0.25 is chance).
A PNG shows both maps side by side with the greedy moves as arrows.

Maze-PO's observation shows only the walls, so its cells are not identified by their text: on
PO the map reads each cell's wall text alone and says so (a history-free probe).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lmrlgym.envs.maze import COMMANDS, Cell, MazeEnv
from lmrlgym.models.policy import ValueReadout
from lmrlgym.models.render import pad_ids

MAZE_TASKS = ("Maze-FO-v0", "Maze-PO-v0")


@dataclasses.dataclass(frozen=True)
class ValueMap:
    """Learned and true values of every non-goal cell of a maze."""

    task: str
    cells: tuple[Cell, ...]
    values: np.ndarray  # (n,) learned V(s)
    q: np.ndarray  # (n, 4) learned Q(s, a) in COMMANDS order
    true_values: np.ndarray  # (n,) optimal return from s: −(d − 1)
    optimal: tuple[str, ...]  # a shortest-path move per cell
    rank_corr: float
    move_accuracy: float

    @property
    def greedy(self) -> tuple[str, ...]:
        return tuple(COMMANDS[int(j)] for j in self.q.argmax(1))

    def metrics(self) -> dict[str, float]:
        return {"eval/value_rank_corr": self.rank_corr, "eval/move_accuracy": self.move_accuracy}


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (Pearson correlation of average ranks, ties shared); 0 when either side
    is constant (a flat value map carries no ordering)."""

    def ranks(x: Sequence[float]) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # ties share their mean rank
            r[x == value] = r[x == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def maze_value_map(model: torch.nn.Module, tokenizer, readout: ValueReadout,
                   task: str = "Maze-FO-v0") -> ValueMap:
    """The value map of a trunk ``model`` (a Hugging Face causal LM) with value ``readout``."""
    if task not in MAZE_TASKS:
        raise ValueError(f"the value map needs a Maze task ({', '.join(MAZE_TASKS)}), got {task!r}")
    env = MazeEnv(observability="full" if task == "Maze-FO-v0" else "partial")
    maze = env.maze
    cells = maze.start_cells

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    moves = [ids(m + "\n") for m in COMMANDS]
    rows, spans = [], []  # spans: (last observation index, last action-token state index, id)
    for cell in cells:
        obs = [tokenizer.bos_token_id, *ids(env.cell_text(cell))]
        for move in moves:
            rows.append(obs + move)
            spans.append((len(obs) - 1, len(obs) + len(move) - 2, move[-1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, mask = pad_ids(rows, pad)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        h = model.base_model(input_ids=input_ids.to(device),
                             attention_mask=mask.to(device)).last_hidden_state  # (R, T, d)
    finally:
        model.train(was_training)
    index = torch.arange(len(rows), device=device)
    last_obs = torch.tensor([s[0] for s in spans], device=device)
    last_state = torch.tensor([s[1] for s in spans], device=device)
    newline = torch.tensor([s[2] for s in spans], device=device)
    q_all, _ = readout(h[index, last_state])  # (R, V)
    q = q_all.float().gather(1, newline[:, None]).squeeze(1).view(len(cells), len(COMMANDS))
    first = index[:: len(COMMANDS)]  # one row per cell: V(s) does not depend on the move
    _, v_obs = readout(h[first, last_obs[first]])
    values = q.max(1).values if v_obs is None else v_obs.float()
    q_np, v_np = q.cpu().numpy(), values.cpu().numpy()
    true = np.array([-(maze.distance[c] - 1) for c in cells], dtype=float)
    optimal = tuple(maze.optimal_command(c) for c in cells)
    greedy = [COMMANDS[int(j)] for j in q_np.argmax(1)]
    accuracy = float(np.mean([g == o for g, o in zip(greedy, optimal, strict=True)]))
    return ValueMap(task, cells, v_np, q_np, true, optimal, rank_correlation(v_np, true), accuracy)


_ARROW = {"move up": (0, -0.3), "move down": (0, 0.3), "move left": (-0.3, 0),
          "move right": (0.3, 0)}


def plot_value_map(vm: ValueMap, path: str | Path, title: str = "") -> Path:
    """Learned V (left) and true optimal value (right) on the grid, greedy / shortest-path
    moves as arrows; written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maze = MazeEnv().maze
    rows, cols = len(maze.walls), len(maze.walls[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    panels = ((vm.values, vm.greedy, f"learned V (Spearman ρ {vm.rank_corr:.2f}, greedy move "
               f"= shortest path in {vm.move_accuracy:.0%} of cells)"),
              (vm.true_values, vm.optimal, "optimal value −(d − 1), shortest-path moves"))
    for ax, (values, moves, label) in zip(axes, panels, strict=True):
        grid = np.full((rows, cols), np.nan)
        for cell, value in zip(vm.cells, values, strict=True):
            grid[cell] = value
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis")
        for r in range(rows):
            for c in range(cols):
                if maze.walls[r][c]:
                    ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, color="0.25"))
        for cell, move in zip(vm.cells, moves, strict=True):
            dx, dy = _ARROW[move]
            ax.arrow(cell[1] - dx / 2, cell[0] - dy / 2, dx, dy, head_width=0.18,
                     length_includes_head=True, color="white")
        ax.text(maze.goal[1], maze.goal[0], "G", ha="center", va="center", color="red",
                fontweight="bold")
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.suptitle(title or vm.task, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)  # a reader never sees half a PNG
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def diagnose_values_main(run: Path, task: str | None = None, out: Path | None = None) -> None:
    """Draw a value method's learned values on the maze next to the true ones (PNG) and print
    the Spearman ρ of V with the optimal values and the greedy-move accuracy.

    Args:
        run: A finished MC or ILQL run directory.
        task: Maze-FO-v0 or Maze-PO-v0 (default: the run's task).
        out: Where the PNG goes (default: RUN/value_map.png).
    """
    from lmrlgym.algos import load_config, load_policy

    config = load_config(run)
    policy = load_policy(run)
    readout = getattr(policy, "value_readout", None)
    if readout is None:
        raise ValueError(f"{run}: a {config.ALGO} run has no value heads; the value map needs "
                         "an MC or ILQL run")
    task = task or config.task
    vm = maze_value_map(policy.value_trunk, policy.tokenizer, readout, task)
    path = plot_value_map(vm, out or Path(run) / "value_map.png",
                          f"{task}: {config.ALGO} run {Path(run).name}")
    print(f"{task} {config.ALGO}: Spearman ρ(V, optimal value) = {vm.rank_corr:.3f} over "
          f"{len(vm.cells)} cells; greedy move = a shortest-path move in "
          f"{vm.move_accuracy:.0%} of cells (25% is chance)")
    print(f"wrote {path}")
