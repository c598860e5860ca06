"""TwentyQuestions-v0: knowledge base, question reading, golden transcripts, LM oracle, policy."""

import json
from importlib import resources

import pytest

import lmrlgym
from lmrlgym.checker import check_env
from lmrlgym.data.generate import run_episode
from lmrlgym.data.policies import OPTIMAL_POLICY, make_policy
from lmrlgym.data.policies.twenty_questions import UNMAPPABLE, WORDINGS, answer_table
from lmrlgym.envs.twenty_questions import (
    NO,
    UNKNOWN,
    YES,
    TwentyQuestionsEnv,
    find_item,
    kb_answer,
    load_kb,
    parse_kb,
    read_question,
)

KB = load_kb()
# docs/tasks.md §7: the general attributes the knowledge base must cover.
SPEC_ATTRIBUTES = (
    "alive man_made edible plant mammal can_fly water has_legs has_wheels engine transport "
    "electric screen music breadbox bigger_than_person pocket metal wood plastic fabric glass "
    "round sharp soft ball worn outdoors kitchen office bedroom cooking_eating writing cleaning "
    "grows_on_trees sweet sports_equipment animal fruit vegetable vehicle clothing electronic "
    "musical_instrument furniture office_supply art_supply kitchen_tool nature toy jewelry "
    "garden_tool hand_tool"
).split()


def answer(name: str, key: str) -> bool:
    return KB.answer(find_item(name), key)


# --- knowledge base -----------------------------------------------------------------------
def test_kb_schema():
    raw = json.loads(resources.files("lmrlgym.envs").joinpath("data/twenty_questions_kb.json").read_text())
    assert raw["format"] == "lmrlgym.twenty_questions_kb/1"
    assert len(KB.items) == 158
    assert [KB.items[i].name for i in (0, 34, 53, 157)] == ["Basketball", "Airplane", "Television", "Drill"]
    assert KB.items[34].names == ("Airplane", "Plane")
    assert KB.items[156].names == ("Pliers", "plier", "Pair of pliers")
    assert len({it.category for it in KB.items}) == 17
    keys = [a.key for a in KB.attributes]
    assert len(keys) == len(set(keys)) >= 40
    assert set(SPEC_ATTRIBUTES) <= set(keys)
    assert {a.key for a in KB.attributes if a.core} == set(SPEC_ATTRIBUTES)
    for a in KB.attributes:
        assert a.question.endswith("?") and len(a.phrases) >= 3, a.key
    for it in KB.items:
        assert it.yes <= set(keys), it.name
    assert "tomato" in KB.conventions


def test_kb_rejects_bad_files():
    raw = json.loads(resources.files("lmrlgym.envs").joinpath("data/twenty_questions_kb.json").read_text())
    raw["objects"][3]["yes"] = ["no_such_attribute"]
    with pytest.raises(ValueError, match="unknown attributes"):
        parse_kb(raw)


def test_every_object_has_a_distinct_attribute_vector():
    vectors = {it.yes for it in KB.items}
    assert len(vectors) == len(KB.items)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("Airplane", "vehicle", True), ("Airplane", "alive", False),
        ("Airplane", "bigger_than_car", True), ("Airplane", "wings", True),
        ("Airplane", "can_fly", True), ("Tomato", "vegetable", True), ("Tomato", "fruit", False),
        ("Tomato", "red", True), ("Cat", "mammal", True), ("Cat", "has_fur", True),
        ("Elephant", "bigger_than_person", True), ("Lion", "eats_meat", True),
        ("Cow", "milk", True), ("Banana", "grows_on_trees", True), ("Banana", "sweet", True),
        ("Carrot", "underground", True), ("Refrigerator", "electric", True),
        ("Refrigerator", "kitchen", True), ("Guitar", "strings", True), ("Trumpet", "brass", True),
        ("Golf ball", "pocket", True), ("Golf ball", "ball", True), ("Knife", "sharp", True),
        ("Pillow", "soft", True), ("Pillow", "furniture", False), ("Toothbrush", "office_supply", False),
        ("Toothbrush", "cleaning", True), ("Key", "metal", True), ("Ocean", "salty", True),
        ("Lake", "salty", False), ("River", "flows", True), ("Mountain", "man_made", False),
        ("Meteorite", "space", True), ("Scooter", "engine", False), ("Car", "has_wheels", True),
        ("Smartphone", "screen", True), ("Pen", "writing", True), ("Lego", "toy", True),
        ("Watch", "tells_time", True), ("Hammer", "hand_tool", True), ("Shovel", "garden_tool", True),
        ("Soccer ball", "round", True), ("Football", "round", False), ("Tree", "alive", True),
        ("Apple", "alive", False), ("Cactus", "plant", True), ("Spinach", "edible", True),
    ],
)  # fmt: skip
def test_kb_facts(name, key, value):
    assert answer(name, key) is value


# --- reading questions ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("question", "attribute", "flipped"),
    [
        ("Is it alive?", "alive", False),
        ("Is it a living thing?", "alive", False),
        ("Is it not alive?", "alive", True),
        ("Is it small?", "breadbox", True),
        ("Is it bigger than a breadbox?", "breadbox", False),
        ("Does it have wheels?", "has_wheels", False),
        ("Can you eat it?", "edible", False),
        ("Do you eat with it?", "for_eating", False),
        ("Is it a garden tool?", "garden_tool", False),
        ("Is it a tool?", "tool", False),
        ("Is it a kind of vehicle?", "vehicle", False),
        ("Would you find it in a kitchen?", "kitchen", False),
        ("Is it made of metal?", "metal", False),
        ("Is it natural?", "man_made", True),
        ("Is it a ball?", "ball", False),
        ("Is your object used in sports?", "sports_equipment", False),
        ("is it ELECTRONIC", "electronic", False),
    ],
)
def test_attribute_mapping(question, attribute, flipped):
    assert read_question(question) == ("attribute", None, attribute, flipped)


@pytest.mark.parametrize(
    "question",
    ["What color is it?", "Is it a fruit or a vegetable?", "Is it a zebra?", "", "??", "Hmm."],
)
def test_unmappable_questions(question):
    assert read_question(question).kind == "unknown"
    assert kb_answer(question, 0) == (UNKNOWN, "unknown")


@pytest.mark.parametrize(
    ("question", "name"),
    [
        ("Is it a plane?", "Airplane"),
        ("IS IT AN AIRPLANE", "Airplane"),
        ("Are they apples?", "Apple"),
        ("my guess is a pair of scissors", "Scissors"),
        ("Could it be a TV?", "Television"),
        ("Is it a computer monitor?", "Monitor"),
        ("Is it the computer?", "Computer"),
        ("Is the object some tomatoes?", "Tomato"),
        ("Strawberries", "Strawberry"),
        ("I guess knives", "Knife"),
        ("Is this a stuffed animal?", "Stuffed animal"),
        ("It is a pot.", "Cooking pot"),
    ],
)
def test_guess_variants(question, name):
    reading = read_question(question)
    assert reading.kind == "guess" and KB.items[reading.item].name == name


def test_guess_answers():
    assert kb_answer("Is it a basketball?", find_item("Basketball")) == (YES, "guess")
    assert kb_answer("Is it a football?", find_item("Basketball")) == (NO, "guess")
    assert read_question("Is it bigger than a car?").kind == "attribute"


# --- the env ----------------------------------------------------------------------------------
BASKETBALL = [
    ("Is it an animal?", "No.\n", -1.0),
    ("Is it used in sports?", "Yes.\n", -1.0),
    ("Is it a ball?", "Yes.\n", -1.0),
    ("What color is it?", "I don't know.\n", -1.0),
    ("Is it a football?", "No.\n", -1.0),
    ("Is it a basketball?", "Yes.\n", 0.0),
]


def test_golden_transcript_basketball():
    env = lmrlgym.make("TwentyQuestions-v0")
    obs, info = env.reset(seed=7, options={"item": "basketballs"})
    assert obs == "Questions:\n" and info["item"] == "Basketball" and info["answer_source"] is None
    total = 0.0
    for i, (q, a, r) in enumerate(BASKETBALL):
        obs, reward, terminated, truncated, info = env.step(q + "\nignored second line")
        assert obs.endswith(q + "\n" + a) and reward == r
        assert terminated == (i == len(BASKETBALL) - 1) and not truncated
        total += reward
    assert total == -5.0 and info["success"] and info["is_guess"]
    assert obs == "Questions:\n" + "".join(f"{q}\n{a}" for q, a, _ in BASKETBALL)
    sources = [kb_answer(q, find_item("Basketball"))[1] for q, _, _ in BASKETBALL]
    assert sources == ["kb", "kb", "kb", "unknown", "guess", "guess"]
    with pytest.raises(RuntimeError):
        env.step("Is it a ball?")


def test_truncation_after_twenty_questions():
    env = lmrlgym.make("TwentyQuestions-v0")
    env.reset(seed=0, options={"index": 5})
    for k in range(20):
        obs, reward, terminated, truncated, info = env.step("Is it a zebra?")
        assert reward == -1.0 and not terminated and truncated == (k == 19)
    assert sum(t.reward for t in info["turns"]) == -20.0 and not info["success"]


def test_reset_options():
    env = lmrlgym.make("TwentyQuestions-v0")
    assert env.reset(seed=0, options={"item": "Pair of Pliers"})[1]["item"] == "Pliers"
    assert env.reset(seed=0, options={"index": 34})[1]["item"] == "Airplane"
    for bad in ({"item": "zebra"}, {"index": 158}, {"index": "3"}, {"object": "cat"}, {"item": "cat", "index": 1}):
        with pytest.raises(ValueError):
            env.reset(seed=0, options=bad)
    seen = {env.reset(seed=s)[1]["item"] for s in range(40)}
    assert len(seen) > 25  # uniform default


def test_evaluation_resets_cover_every_object():
    resets = TwentyQuestionsEnv.evaluation_resets(158)
    assert resets[:2] == [(0, {"index": 0}), (1, {"index": 1})]
    assert sorted(o["index"] for _, o in resets) == list(range(158))
    assert TwentyQuestionsEnv.evaluation_resets(160)[158] == (158, {"index": 0})


def test_check_env():
    check_env(lmrlgym.make("TwentyQuestions-v0"))


# --- LM oracle -----------------------------------------------------------------------------
class StubOracle:
    deterministic = False

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def complete(self, messages):
        self.calls.append(messages)
        return self.reply


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("Yes, it is a vehicle.", YES), ("no", NO), (" No!\nmore", NO), ("Maybe", UNKNOWN), ("", UNKNOWN), ("Nobody knows", UNKNOWN)],
)
def test_lm_oracle(reply, expected):
    stub = StubOracle(reply)
    env = lmrlgym.make("TwentyQuestions-v0", oracle=stub)
    _, info = env.reset(seed=0, options={"item": "plane"})
    assert info["deterministic"] is False
    obs, reward, terminated, _, info = env.step("Is it a vehicle?")
    assert obs.endswith(expected) and info["answer_source"] == "lm" and reward == -1.0
    content = stub.calls[0][0]["content"]
    assert content == (
        "Answer truthfully with yes or no.\nObject: Airplane, Plane\nQuestion: Is it a vehicle?\nAnswer:"
    )
    _, reward, terminated, _, info = env.step("Is it an airplane?")  # guesses stay rule-based
    assert len(stub.calls) == 1 and terminated and reward == 0.0 and info["answer_source"] == "guess"


# --- behaviour policy ----------------------------------------------------------------------
def test_question_bank_maps_as_intended():
    table, _ = answer_table()
    kb_keys = {a.question: a.key for a in KB.attributes}
    for key, wordings in WORDINGS.items():
        for q in wordings:
            assert read_question(q) == ("attribute", None, key, False), q
    for q, key in kb_keys.items():
        assert read_question(q) == ("attribute", None, key, False), q
    for q in UNMAPPABLE:
        assert set(table[q]) == {UNKNOWN}, q


def test_best_splitter_solves_every_object():
    env = lmrlgym.make("TwentyQuestions-v0")
    policy = make_policy(OPTIMAL_POLICY["TwentyQuestions-v0"], "TwentyQuestions-v0")
    solved, returns = 0, []
    for seed, options in TwentyQuestionsEnv.evaluation_resets(158):
        policy.reset_options = lambda env, rng, o=options: o
        ep = run_episode(env, policy, seed)
        solved += ep.success
        returns.append(ep.ret)
    assert solved / 158 >= 0.95  # the KB separates the objects
    assert sum(returns) / 158 > -10


def test_default_dataset_is_deterministic_and_replays():
    env = lmrlgym.make("TwentyQuestions-v0")
    policy = make_policy("twentyq-splitter", "TwentyQuestions-v0")
    a = [run_episode(env, policy, 1_000_000 + i).to_json() for i in range(5)]
    b = [run_episode(env, policy, 1_000_000 + i).to_json() for i in range(5)]
    assert a == b
    for rec in a:  # replaying the actions reproduces the env texts and rewards
        obs, _ = env.reset(seed=rec["seed"], options=rec["reset_options"])
        for i in range(1, len(rec["turns"]), 2):
            obs, reward, *_ = env.step(rec["turns"][i]["text"])
            assert obs.endswith(rec["turns"][i + 1]["text"]) and reward == rec["turns"][i]["reward"]
        assert rec["meta"]["item"] in {it.name for it in KB.items}


def test_oracle_spec_strings():
    from lmrlgym.partners import OpenAICompatible

    env = lmrlgym.make("TwentyQuestions-v0", oracle="openai:http://127.0.0.1:9/v1/tiny-model")
    assert isinstance(env.partner, OpenAICompatible)  # built lazily: nothing is contacted yet
    assert env.reset(seed=0)[1]["deterministic"] is False
    assert lmrlgym.make("TwentyQuestions-v0", oracle="rules").partner is None
    with pytest.raises(ValueError, match="partner spec"):
        lmrlgym.make("TwentyQuestions-v0", oracle="gpt-4")
