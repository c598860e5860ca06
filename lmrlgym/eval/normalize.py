"""Normalised scores: 0 = minimum return, 50 = dataset average, 100 = maximum (docs/tasks.md §10).

Two constant sets. ``"paper"``: LMRL-Gym Table 5 (arXiv v1), for comparison with published
numbers. ``"project"`` (default): computed by this project from its own datasets and its
optimal or best scripted policies; each entry records its provenance.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Constants:
    """Return at score 0 (min), 50 (dataset average) and 100 (max), with where they come from."""

    min: float
    avg: float
    max: float
    source: str


_T5 = "LMRL-Gym paper, Table 5 (arXiv v1)"
PAPER: dict[str, Constants] = {
    "Maze-FO-v0": Constants(-101, -83, -6.84, _T5),
    "Maze-PO-v0": Constants(-101, -83, -25.75, _T5),
    "TextNav-FO-v0": Constants(0, 0.26, 1, _T5),
    "TextNav-PO-v0": Constants(0, 0.26, 1, _T5),
    "Wordle-v0": Constants(-6, -4.12, -1.94, _T5),
    "Chess-v0": Constants(-401, 0.21, 1, _T5),
    "Endgames-v0": Constants(-1, 0.586, 1, _T5),
    "TwentyQuestions-v0": Constants(-20, -17.3, -12.6, _T5),
    "GuessCity-v0": Constants(-20, -18.8, -8.56, _T5),
    # Car Dealer: the paper prints only a minimum of 0, so no paper constants exist.
}

# Text-Nav FO and PO: one set of constants (see their entries in PROJECT).
_TEXTNAV = Constants(
    0.0, 0.262, 1.0,
    "scripts/compute_constants.py textnav: avg = textnav-half-expert(p_near=0.25,"
    "q_follow=1.0) default dataset, first 2500 episodes (seeds 1000000+i), mean 0.2624 "
    "+- 0.0088 (SE), success 0.262, length 12.56; max = textnav-walkthrough, evaluation "
    "protocol (256 episodes, 8 rooms x 32, seeds 32*i+k), mean 1.0000; min = no win; "
    "TextWorld 1.7.0; lmrlgym 0.1.0, 2026-11-25",
)

# Project constants: one entry per task, filled in from the project's default dataset (avg)
# and its optimal / best scripted policy (max) under the task's evaluation protocol.
PROJECT: dict[str, Constants] = {
    # Maze (docs/tasks.md §2): avg = the unconfined behaviour policy under the evaluation protocol
    # (the confined dataset's records are cut short, so its mean is not a policy's return).
    "Maze-FO-v0": Constants(
        -401.0, -51.46, -6.84,
        "scripts/compute_constants.py maze: avg = maze-mixture(p_solver=0.15) unconfined, "
        "evaluation protocol (800 episodes, 25 starts x 32, seeds 32*i+k), mean -51.4625 "
        "+- 1.1517 (SE); max = maze-optimal on the same 800 episodes; min = true minimum; "
        "lmrlgym 0.1.0, 2026-11-25",
    ),
    "Maze-PO-v0": Constants(
        -401.0, -51.46, -7.24,
        "scripts/compute_constants.py maze: avg = maze-mixture(p_solver=0.15) unconfined, "
        "evaluation protocol (800 episodes, 25 starts x 32, seeds 32*i+k), mean -51.4625 "
        "+- 1.1517 (SE); max = maze-belief (belief-MDP optimum) on the same 800 episodes; "
        "min = true minimum; lmrlgym 0.1.0, 2026-11-25",
    ),
    # Wordle (docs/tasks.md §4): avg = the default dataset; max = wordle-greedy (a loose bound).
    "Wordle-v0": Constants(
        -6.0, -4.082, -1.926,
        "scripts/compute_constants.py wordle: avg = wordle-mixture(p_smart=1/3) default "
        "dataset, first 100000 episodes (seeds 1000000+i), mean -4.0825 +- 0.0050 (SE); "
        "max = wordle-greedy, evaluation protocol (4096 episodes, seeds 0-4095), mean -1.9260 "
        "+- 0.0096 (SE) (one episode per answer: -1.9374); min = true minimum; "
        "lmrlgym 0.1.0, 2026-11-25",
    ),
    # Car Dealer (docs/tasks.md §9): min = no sale; avg = the default dataset; max = the best
    # scripted seller (text-only; the theoretical maximum is 1).
    "CarDealer-v0": Constants(
        0.0, 0.46, 0.972,
        "scripts/compute_constants.py car_dealer: avg = car-seller(anchor=1.8,concession=0.3,"
        "q_match=0.9) default dataset, first 19000 episodes (seeds 1000000+i), mean 0.4604 "
        "+- 0.0033 (SE), success 0.526, length 7.46; max = car-seller-expert(questions=1), "
        "evaluation protocol (256 episodes, seeds 0-255), mean 0.9717 +- 0.0016 (SE); "
        "min = no sale; lmrlgym 0.1.0, 2026-11-25",
    ),
    # Text-Nav (docs/tasks.md §3): min = no win; avg = the default dataset (the paper's 2.5k
    # trajectories; the scripted policy reads the true state, so FO and PO data are the same
    # episodes); max = the walkthrough, which wins every evaluation episode.
    "TextNav-FO-v0": _TEXTNAV,
    "TextNav-PO-v0": _TEXTNAV,
    # Twenty Questions (docs/tasks.md §7): min = no correct guess; avg = the default dataset; max =
    # the best splitter on the 158 objects (theoretical maximum 0).
    "TwentyQuestions-v0": Constants(
        -20.0, -17.56, -6.93,
        "scripts/compute_constants.py twenty_questions: avg = twentyq-splitter(guess_at=6,"
        "p_info=0.01) default dataset, first 10000 episodes (seeds 1000000+i), mean -17.5601 "
        "+- 0.0458 (SE), success 0.326, length 17.89; max = twentyq-splitter(guess_at=4,"
        "p_info=1.0), evaluation protocol (158 episodes, one per item, seed = index), mean "
        "-6.9304 +- 0.0947 (SE); min = no correct guess; lmrlgym 0.1.0, 2026-11-25",
    ),
    # Guess My City (docs/tasks.md §8): min = no correct guess; avg = the default dataset; max = the
    # best asker (-1: one open question such as the local food names the city for a KB reader).
    "GuessCity-v0": Constants(
        -20.0, -18.871, -1.0,
        "scripts/compute_constants.py guess_city: avg = guesscity-asker(guess_turn=20,"
        "p_early=0.03,p_info=0.003) default dataset, first 10000 episodes (seeds 1000000+i), "
        "mean -18.8712 +- 0.0249 (SE), success 0.530, length 19.40; max = guesscity-asker("
        "guess_turn=20,p_early=1.0,p_info=1.0), evaluation protocol (100 episodes, one per "
        "item, seed = index), mean -1.0000 +- 0.0000 (SE); min = no correct guess; "
        "lmrlgym 0.1.0, 2026-11-25",
    ),
    # Chess and Endgames (docs/tasks.md §5-6): min = 400 illegal moves; avg = the default dataset
    # against the default (seeded, replayable) opponent, with its standard error; max = a win.
    "Chess-v0": Constants(
        -400.0, 0.393, 1.0,
        "scripts/compute_constants.py chess: avg = chess-stockfish(epsilon=(0.0, 0.25),"
        "strength='nodes:500-5000') default dataset, first 150 episodes (seeds 1000000+i) "
        "against the default opponent (stockfish-elo-seeded:1350), mean 0.3933 +- 0.0726 "
        "(SE), success 0.667, length 49.8; Stockfish 15.1; min = 400 illegal moves; "
        "max = a win; lmrlgym 0.1.0, 2026-12-05",
    ),
    "Endgames-v0": Constants(
        -400.0, 0.64, 1.0,
        "scripts/compute_constants.py endgames: avg = endgame-epsilon(epsilon_dist=(0.1, 0.6),"
        "strength='nodes:2000') default dataset, first 300 episodes (seeds 1000000+i) against "
        "the default opponent (stockfish-elo-seeded:1350), mean 0.6400 +- 0.0278 (SE), "
        "success 0.640, length 17.2; Stockfish 15.1; min = 400 illegal moves; max = a win; "
        "lmrlgym 0.1.0, 2026-12-05",
    ),
}  # fmt: skip


def score(raw: float, c: Constants) -> float:
    """The piecewise-linear 0/50/100 rule; unclipped, so <0 and >100 are possible."""
    if raw < c.avg:
        return 50.0 * (raw - c.min) / (c.avg - c.min)
    return 50.0 + 50.0 * (raw - c.avg) / (c.max - c.avg)


def constants_for(task_id: str, constants: str = "project") -> Constants:
    table = {"project": PROJECT, "paper": PAPER}.get(constants)
    if table is None:
        raise ValueError(f"constants must be 'project' or 'paper', got {constants!r}")
    if task_id not in table:
        raise KeyError(f"no {constants} normalisation constants for {task_id!r}")
    return table[task_id]


def normalized_score(task_id: str, raw_return: float, constants: str = "project") -> float:
    """Normalised score of a mean raw return on ``task_id`` (see module docstring)."""
    return score(raw_return, constants_for(task_id, constants))
