"""The ten registered environments (docs/tasks.md §1). Each task lives in its own module.

Every ``register`` call also carries the task's facts that the rest of the package reads from
the spec, so evaluation, the benchmark presets and the training defaults agree by construction:

- ``lengths``: the original's prompt and action token budgets (docs/algorithms.md §3.1 and
  docs/algorithms.md §4.1).
- ``protocol``: the full evaluation's episode count and what its resets cycle through
  (docs/algorithms.md §4.2; the resets come from the env class's ``evaluation_resets``).
- ``group``: tasks whose per-method paper settings are shared (paper Table 3).
- ``paper``: the paper's model (Section 5) and dataset size (Table 1).
"""

from lmrlgym.registry import (
    Lengths,
    PaperSettings,
    Protocol,
    Requirement,
    register,
    registry,
)

CHESS = Requirement("chess", 'pip install "lmrlgym[chess]"')
STOCKFISH = Requirement(
    "stockfish", "apt-get install stockfish (or set LMRLGYM_STOCKFISH)", "binary", "LMRLGYM_STOCKFISH"
)
TEXTWORLD = Requirement("textworld", 'pip install "lmrlgym[textnav]"')

# 32 episodes from each of the 25 start cells (the paper's protocol).
MAZE_PROTOCOL = Protocol(800, cycle=25, cycle_over="start cells")
# The paper does not state it (its code ran 32); 64 from each of the 8 start rooms.
TEXTNAV_PROTOCOL = Protocol(512, cycle=8, cycle_over="start rooms")

register(
    "Maze-FO-v0",
    "lmrlgym.envs.maze:MazeEnv",
    {"observability": "full"},
    max_turns=101,
    description="Double-T maze, fully observed: goal, position and nearby walls.",
    lengths=Lengths(256, 8),
    protocol=MAZE_PROTOCOL,
    group="maze",
    paper=PaperSettings("gpt2", 1240),
)
register(
    "Maze-PO-v0",
    "lmrlgym.envs.maze:MazeEnv",
    {"observability": "partial"},
    max_turns=101,
    description="Double-T maze, partially observed: nearby walls only, 40-turn window.",
    lengths=Lengths(1024, 16),
    protocol=MAZE_PROTOCOL,
    group="maze",
    paper=PaperSettings("gpt2", 1240),
)
register(
    "TextNav-FO-v0",
    "lmrlgym.envs.textnav:TextNavEnv",
    {"observability": "full"},
    max_turns=15,
    requires=(TEXTWORLD,),
    description="TextWorld house: put the stale food in the fridge; room and inventory shown.",
    lengths=Lengths(1920, 128),  # P + M = 2048: the original's total and the presets' positions
    protocol=TEXTNAV_PROTOCOL,
    group="textnav",
    paper=PaperSettings("gpt2", 2500),
)
register(
    "TextNav-PO-v0",
    "lmrlgym.envs.textnav:TextNavEnv",
    {"observability": "partial"},
    max_turns=15,
    requires=(TEXTWORLD,),
    description="TextWorld house without room/inventory lines.",
    lengths=Lengths(1920, 128),  # P + M = 2048: the original's total and the presets' positions
    protocol=TEXTNAV_PROTOCOL,
    group="textnav",
    paper=PaperSettings("gpt2", 2500),
)
register(
    "Wordle-v0",
    "lmrlgym.envs.wordle:WordleEnv",
    max_turns=6,
    description="Wordle with letter-by-letter feedback, 6 guesses.",
    lengths=Lengths(1920, 128),  # P + M = 2048: the original's total and the presets' positions
    protocol=Protocol(4096),
    group="wordle",
    paper=PaperSettings("gpt2", 1_000_000),
)
register(
    "Chess-v0",
    "lmrlgym.envs.chess:ChessEnv",
    {"mode": "game"},  # the default opponent's weakened pick draws from the episode's seed
    requires=(CHESS, STOCKFISH),
    description="Full chess game as White against Stockfish (Elo 1350).",
    lengths=Lengths(256, 16),
    protocol=Protocol(1000),
    group="chess",
    paper=PaperSettings("gpt2", 625_000),
)
register(
    "Endgames-v0",
    "lmrlgym.envs.chess:ChessEnv",
    {"mode": "endgame"},
    requires=(CHESS, STOCKFISH),
    description="Chess endgames (kQK, kRK, kQRK, kRRK) as White against Stockfish.",
    lengths=Lengths(150, 10),
    protocol=Protocol(645, cycle=645, cycle_over="evaluation positions"),
    group="chess",
    paper=PaperSettings("gpt2", 97_800),
)
register(
    "TwentyQuestions-v0",
    "lmrlgym.envs.twenty_questions:TwentyQuestionsEnv",
    max_turns=20,
    description="Twenty Questions over 158 objects with a knowledge-grounded oracle.",
    lengths=Lengths(1024, 128),
    protocol=Protocol(632, cycle=158, cycle_over="objects"),
    group="dialogue",
    paper=PaperSettings("gpt2-medium", 100_000),
)
register(
    "GuessCity-v0",
    "lmrlgym.envs.guess_city:GuessCityEnv",
    max_turns=20,
    description="Guess My City over 100 cities with a knowledge-grounded oracle.",
    lengths=Lengths(1024, 128),
    protocol=Protocol(500, cycle=100, cycle_over="cities"),
    group="dialogue",
    paper=PaperSettings("gpt2-medium", 100_000),
)
register(
    "CarDealer-v0",
    "lmrlgym.envs.car_dealer:CarDealerEnv",
    max_turns=25,
    description="Sell a car to a rule-based buyer with a persona.",
    lengths=Lengths(512, 128),
    protocol=Protocol(512),
    group="dialogue",
    paper=PaperSettings("gpt2-xl", 19_000),
)

# The package's own task ids, in the paper's order (tests and users may register more).
TASK_IDS: tuple[str, ...] = tuple(registry)


def task_group(name: str) -> tuple[str, ...]:
    """The package's task ids in ``group`` ``name``, in registry order."""
    ids = tuple(t for t in TASK_IDS if registry[t].group == name)
    if not ids:
        groups = sorted({registry[t].group or "" for t in TASK_IDS} - {""})
        raise ValueError(f"unknown task group {name!r}; valid: {', '.join(groups)}")
    return ids


def task_lengths() -> dict[str, dict[str, int]]:
    """``{task: {"max_context_tokens": P, "max_new_tokens": M}}`` for the package's tasks."""
    return {t: lengths.as_dict() for t in TASK_IDS if (lengths := registry[t].lengths)}
