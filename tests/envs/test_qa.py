"""The question interpreter shared by Twenty Questions and Guess My City (pure functions)."""

import pytest

from lmrlgym.envs import qa


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Is it a Soccer-Ball?", "is it a soccer ball"),
        ("  São   Paulo!! ", "sao paulo"),
        ("Don't you know?", "dont you know"),
        ("Xi'an / Xī'ān", "xian xian"),
        ("", ""),
        ("???", ""),
    ],
)
def test_normalize(text, expected):
    assert qa.normalize(text) == expected


@pytest.mark.parametrize(
    ("name", "forms"),
    [
        ("Basketball", {"basketball", "basketballs"}),
        ("Strawberry", {"strawberry", "strawberries"}),
        ("Peach", {"peach", "peaches"}),
        ("Tomato", {"tomato", "tomatoes"}),
        ("Knife", {"knife", "knives"}),
        ("Shoes", {"shoes", "shoe"}),
        ("Pair of scissors", {"pair of scissors", "pair of scissor"}),
    ],
)
def test_plural_forms(name, forms):
    assert forms <= qa.plural_forms(name)


def test_phrase_matcher_longest_match_negation_and_plurals():
    m = qa.PhraseMatcher({"tool": "tool", "garden tool": "garden", "wheel": "wheels", "alive": "alive"})
    found = m.find(qa.normalize("Is it a garden tool with wheels?"))
    assert [(x.label, x.negated) for x in found] == [("garden", False), ("wheels", False)]
    assert [(x.label, x.negated) for x in m.find("is it not alive")] == [("alive", True)]
    assert m.find("is it a toolbox") == []  # whole words only
    with pytest.raises(ValueError, match="empty phrase"):
        qa.PhraseMatcher({"!!": "x"})


def test_match_guess_needs_the_whole_rest_of_the_question():
    names = qa.name_table({"monitor": ["Monitor", "Computer monitor"], "computer": ["Computer"]})
    prefixes = ("is it", "my guess is", "")
    assert qa.match_guess("is it a computer monitor", prefixes, names) == "monitor"
    assert qa.match_guess("is it the computers", prefixes, names) == "computer"
    assert qa.match_guess("my guess is a monitor", prefixes, names) == "monitor"
    assert qa.match_guess("monitors", prefixes, names) == "monitor"
    assert qa.match_guess("is it bigger than a computer", prefixes, names) is None
    assert qa.match_guess("does it have a monitor", prefixes, names) is None


def test_name_table_rejects_ambiguous_names():
    with pytest.raises(ValueError, match="ambiguous"):
        qa.name_table({"a": ["Pan"], "b": ["Pans"]})


def test_mentions_is_whole_word():
    assert qa.mentions("is it near cali", ["cali"])
    assert not qa.mentions("is it in california", ["cali"])
    assert qa.mentions("i think it is new york city", ["new york"])


def test_wh_questions():
    assert qa.is_wh_question("what color is it")
    assert not qa.is_wh_question("is it red")
    assert not qa.is_wh_question("")


def test_first_line():
    assert qa.first_line("\n  Yes, it is.\nSecond line") == "Yes, it is."
    assert qa.first_line(" \n ") == ""


def test_resolve_partner():
    class Stub:
        deterministic = True

        def complete(self, messages):
            return "yes"

    stub = Stub()
    assert qa.resolve_partner("kb", "oracle") is None
    assert qa.resolve_partner("rules", "oracle") is None
    assert qa.resolve_partner(stub, "oracle") is stub
    with pytest.raises(TypeError, match="oracle must be"):
        qa.resolve_partner(42, "oracle")
