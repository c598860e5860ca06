"""What a value method could reach on a Maze-FO dataset with exact, tabular values.

Maze-FO has 26 observation texts, so the Q and V that MC Returns and ILQL try to learn can be
computed exactly from the dataset: MC's Q is the mean discounted return-to-go of each (cell,
move); ILQL's fixed point iterates ``Q(s, a) = mean(r + γ V(s'))`` and ``V(s) = expectile_τ of
Q(s, ·)``. Reranking the four moves by these values (argmax, or softmax sampling) is then the
best either method can do with perfect function approximation: a ceiling that tells a method
which does not learn apart from data that cannot support it (docs/cpu-scale.md).

    python scripts/maze_value_ceiling.py DATA_DIR [--gamma 0.99] [--tau 0.9]
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable

import numpy as np

from lmrlgym.data.io import read_episodes
from lmrlgym.envs.maze import COMMANDS, Cell, load_maze
from lmrlgym.eval.normalize import normalized_score

MAZE = load_maze("double_t_maze")
CELLS = MAZE.start_cells
Transition = tuple[Cell, str, float, Cell | None, bool, float]  # s, a, r, s', terminal, G


def transitions(data: str, gamma: float) -> list[Transition]:
    """Every (s, a, r, s', terminal, return-to-go) of the dataset; G is pure MC (0 after the
    recorded end, as MC Returns trains it)."""
    cell_of = {text: cell for cell, text in MAZE.fo_texts.items()}
    episodes, _ = read_episodes(data)
    out: list[Transition] = []
    for ep in episodes:
        turns = ep.turns
        steps = []
        for k in range(0, len(turns) - 1, 2):
            nxt = turns[k + 2].text if k + 2 < len(turns) else None
            steps.append((cell_of[turns[k].text], turns[k + 1].text.strip().lower(),
                          turns[k + 1].reward, cell_of.get(nxt) if nxt else None))
        g, rtg = 0.0, []
        for _, _, r, _ in reversed(steps):
            g = r + gamma * g
            rtg.append(g)
        for j, ((s, a, r, s2), g) in enumerate(zip(steps, reversed(rtg), strict=True)):
            out.append((s, a, r, s2, j == len(steps) - 1 and ep.terminated, g))
    return out


def expectile(values: np.ndarray, tau: float, iters: int = 50) -> float:
    v = float(values.mean())
    for _ in range(iters):
        w = np.where(values >= v, tau, 1.0 - tau)
        v = float((w * values).sum() / w.sum())
    return v


def mc_q(data: list[Transition]) -> dict[tuple[Cell, str], float]:
    returns: dict[tuple[Cell, str], list[float]] = collections.defaultdict(list)
    for s, a, _, _, _, g in data:
        returns[s, a].append(g)
    return {k: float(np.mean(v)) for k, v in returns.items()}


def iql_q(data: list[Transition], gamma: float, tau: float, iters: int = 300
          ) -> tuple[dict[tuple[Cell, str], float], dict[Cell, float]]:
    """Tabular fixed point of ILQL's losses (TD to V(s'), expectile V over the data's moves)."""
    by_pair: dict[tuple[Cell, str], list[tuple[float, Cell | None, bool]]] = collections.defaultdict(list)
    for s, a, r, s2, terminal, _ in data:
        by_pair[s, a].append((r, s2, terminal))
    q: dict[tuple[Cell, str], float] = {}
    v: dict[Cell, float] = collections.defaultdict(float)
    for _ in range(iters):
        for (s, a), rows in by_pair.items():
            q[s, a] = float(np.mean([r + (0.0 if done or s2 is None else gamma * v[s2])
                                     for r, s2, done in rows]))
        for c in CELLS:
            v[c] = expectile(np.array([q[c, a] for a in COMMANDS if (c, a) in q]), tau)
    return q, dict(v)


def play(choose: Callable[[Cell], str], episodes_per_start: int = 1) -> float:
    """Mean return over the 25 starts (the evaluation protocol's cells, 100-move cap)."""
    returns = []
    for start in CELLS:
        for _ in range(episodes_per_start):
            cell, ret = start, 0.0
            for step in range(101):
                if step == 100:
                    ret -= 1.0  # the cap step
                    break
                cell = MAZE.transition[cell, choose(cell)]
                if cell == MAZE.goal:
                    break
                ret -= 1.0
            returns.append(ret)
    return float(np.mean(returns))


def report(name: str, q: dict[tuple[Cell, str], float], rng: np.random.Generator) -> None:
    def greedy(c: Cell) -> str:
        return max(COMMANDS, key=lambda a: q.get((c, a), -np.inf))

    def softmax(beta: float) -> Callable[[Cell], str]:
        def choose(c: Cell) -> str:
            z = beta * np.array([q.get((c, a), -1e9) for a in COMMANDS])
            p = np.exp(z - z.max())
            return COMMANDS[rng.choice(len(COMMANDS), p=p / p.sum())]
        return choose

    accuracy = np.mean([greedy(c) == MAZE.optimal_command(c) for c in CELLS])
    ret = play(greedy)
    print(f"{name:>14}: greedy move accuracy {accuracy:.2f}, argmax return {ret:7.1f} "
          f"(score {normalized_score('Maze-FO-v0', ret):5.1f})", end="")
    for beta in (1.0, 4.0):
        r = play(softmax(beta), episodes_per_start=40)
        print(f"; softmax β={beta:g} {r:7.1f} ({normalized_score('Maze-FO-v0', r):5.1f})", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a Maze-FO dataset directory or JSONL file")
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--tau", type=float, default=0.9)
    args = parser.parse_args()
    data = transitions(args.data, args.gamma)
    rng = np.random.default_rng(0)
    print(f"{args.data}: {len(data)} transitions, γ {args.gamma}, τ {args.tau}")
    report("tabular MC", mc_q(data), rng)
    q, v = iql_q(data, args.gamma, args.tau)
    report("tabular ILQL", q, rng)
    rho = np.corrcoef([v[c] for c in CELLS], [-MAZE.distance[c] for c in CELLS])[0, 1]
    print(f"{'':>14}  ILQL V vs −distance: Pearson {rho:.3f}")


if __name__ == "__main__":
    main()
