"""The ten registered environments (docs/tasks.md §1). Each task lives in its own module."""

from lmrlgym.registry import Requirement, register, registry

CHESS = Requirement("chess", 'pip install "lmrlgym[chess]"')
STOCKFISH = Requirement(
    "stockfish", "apt-get install stockfish (or set LMRLGYM_STOCKFISH)", "binary", "LMRLGYM_STOCKFISH"
)
TEXTWORLD = Requirement("textworld", 'pip install "lmrlgym[textnav]"')

register(
    "Maze-FO-v0",
    "lmrlgym.envs.maze:MazeEnv",
    {"observability": "full"},
    max_turns=101,
    description="Double-T maze, fully observed: goal, position and nearby walls.",
)
register(
    "Maze-PO-v0",
    "lmrlgym.envs.maze:MazeEnv",
    {"observability": "partial"},
    max_turns=101,
    description="Double-T maze, partially observed: nearby walls only, 40-turn window.",
)
register(
    "TextNav-FO-v0",
    "lmrlgym.envs.textnav:TextNavEnv",
    {"observability": "full"},
    max_turns=15,
    requires=(TEXTWORLD,),
    description="TextWorld house: put the stale food in the fridge; room and inventory shown.",
)
register(
    "TextNav-PO-v0",
    "lmrlgym.envs.textnav:TextNavEnv",
    {"observability": "partial"},
    max_turns=15,
    requires=(TEXTWORLD,),
    description="TextWorld house without room/inventory lines.",
)
register(
    "Wordle-v0",
    "lmrlgym.envs.wordle:WordleEnv",
    max_turns=6,
    description="Wordle with letter-by-letter feedback, 6 guesses.",
)
register(
    "Chess-v0",
    "lmrlgym.envs.chess:ChessEnv",
    {"mode": "game"},
    nondeterministic=True,  # default opponent: Stockfish with UCI_LimitStrength and a time limit
    requires=(CHESS, STOCKFISH),
    description="Full chess game as White against Stockfish (Elo 1350).",
)
register(
    "Endgames-v0",
    "lmrlgym.envs.chess:ChessEnv",
    {"mode": "endgame"},
    nondeterministic=True,
    requires=(CHESS, STOCKFISH),
    description="Chess endgames (kQK, kRK, kQRK, kRRK) as White against Stockfish.",
)
register(
    "TwentyQuestions-v0",
    "lmrlgym.envs.twenty_questions:TwentyQuestionsEnv",
    max_turns=20,
    description="Twenty Questions over 158 objects with a knowledge-grounded oracle.",
)
register(
    "GuessCity-v0",
    "lmrlgym.envs.guess_city:GuessCityEnv",
    max_turns=20,
    description="Guess My City over 100 cities with a knowledge-grounded oracle.",
)
register(
    "CarDealer-v0",
    "lmrlgym.envs.car_dealer:CarDealerEnv",
    max_turns=25,
    description="Sell a car to a rule-based buyer with a persona.",
)

# The package's own task ids, in the paper's order (tests and users may register more).
TASK_IDS: tuple[str, ...] = tuple(registry)
