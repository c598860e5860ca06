"""lmrlgym: multi-turn RL benchmark and toolkit for language models (LMRL-Gym in PyTorch)."""

from lmrlgym import envs as _envs  # noqa: F401  (registers the ten task ids)
from lmrlgym.checker import check_env
from lmrlgym.core import Episode, Policy, TextEnv, Turn
from lmrlgym.eval.evaluate import evaluate
from lmrlgym.eval.normalize import normalized_score
from lmrlgym.registry import EnvSpec, make, register, registry, spec

__version__ = "0.1.0"
__all__ = [
    "Episode",
    "EnvSpec",
    "Policy",
    "TextEnv",
    "Turn",
    "check_env",
    "evaluate",
    "make",
    "normalized_score",
    "register",
    "registry",
    "spec",
]
