"""Env cards: every task module's docstring has the same sections, in one heading style."""

import ast
import importlib.util
import re

import pytest

from lmrlgym.envs import TASK_IDS
from lmrlgym.registry import spec

SECTIONS = ["Description", "Observation", "Action", "Rewards", "Episode End", "Arguments",
            "Differences from LMRL-Gym", "References", "Version History"]
MODULES = sorted({spec(t).entry_point.partition(":")[0] for t in TASK_IDS})


def card(module: str) -> str:
    # Read the source, so a card is checked even where the env's optional dependency is missing.
    path = importlib.util.find_spec(module).origin
    with open(path, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read()))


@pytest.mark.parametrize("module", MODULES)
def test_card_sections_in_one_heading_style(module):
    text = card(module)
    underlined = re.findall(r"^(\S[^\n]*)\n(-+)$", text, flags=re.M)
    assert all(len(title) == len(rule) for title, rule in underlined)
    assert [title for title, _ in underlined] == SECTIONS
    assert not re.search(r"^#+ ", text, flags=re.M)  # no Markdown headings
