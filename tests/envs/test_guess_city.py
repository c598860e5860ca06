"""GuessCity-v0: knowledge base, question reading, no-leak rule, golden transcript, LM oracle."""

import json
from importlib import resources

import pytest

import lmrlgym
from lmrlgym.checker import check_env
from lmrlgym.data.generate import run_episode
from lmrlgym.data.policies import OPTIMAL_POLICY, make_policy
from lmrlgym.data.policies.guess_city import _UNMAPPABLE, answer_table
from lmrlgym.envs import qa
from lmrlgym.envs.guess_city import (
    NO,
    UNKNOWN,
    YES,
    GuessCityEnv,
    find_city,
    forbidden_names,
    kb_answer,
    latitude_phrase,
    load_kb,
    parse_kb,
)

KB = load_kb()
RAW = json.loads(resources.files("lmrlgym.envs").joinpath("data/guess_city_kb.json").read_text("utf-8"))
CLIMATES = {
    "tropical rainforest", "tropical monsoon", "tropical wet and dry", "hot desert", "mild desert",
    "semi-arid", "humid subtropical", "mediterranean", "oceanic", "temperate", "humid continental",
    "continental", "subtropical highland",
}  # fmt: skip
BANDS = {"over 8 million", "5 to 8 million", "3 to 5 million", "2 to 3 million", "under 2 million"}


def city(name):
    return KB.cities[find_city(name)]


# --- knowledge base -----------------------------------------------------------------------
def test_kb_schema_every_record_complete_and_typed():
    assert RAW["format"] == "lmrlgym.guess_city_kb/1"
    assert len(KB.cities) == 100
    assert [KB.cities[i].name for i in (0, 1, 58, 67, 75, 99)] == [
        "Seoul", "Sao Paulo", "Kinshaha", "Taega", "Havanna", "Caracas",
    ]
    for i, c in enumerate(KB.cities):
        rec = RAW["cities"][i]
        assert rec["rank"] == i + 1 and c.index == i
        assert isinstance(c.name, str) and all(isinstance(a, str) and a for a in c.aliases)
        assert c.country in KB.countries
        assert isinstance(c.population, int) and c.population > 1_000_000
        assert c.population_band in BANDS
        assert -90 <= c.lat <= 90 and -180 <= c.lon <= 180
        assert rec["hemispheres"] == ["northern" if c.lat >= 0 else "southern",
                                      "eastern" if c.lon >= 0 else "western"]
        assert c.continents and set(c.continents) <= {
            "Asia", "Europe", "Africa", "North America", "South America", "Oceania"}
        assert isinstance(c.region, str) and c.region
        assert c.coast in (None, "sea", "ocean", "bay", "strait", "estuary", "lagoon", "lake")
        assert (c.coast is None) == (c.water is None)
        assert c.river is None or isinstance(c.river, str)
        for flag in (c.capital, c.largest_in_country, c.snow, c.high_altitude):
            assert isinstance(flag, bool)
        assert c.regional_capital in (None, "state", "province", "prefecture", "department")
        assert not (c.capital and c.regional_capital)
        assert c.languages and all(isinstance(x, str) and x for x in c.languages)
        assert c.climate in CLIMATES and c.climate_description
        for text in (c.landmark, c.food, c.fact):
            assert isinstance(text, str) and len(text) > 4
    owner = {}
    for c in KB.cities:
        for n in c.names:
            assert owner.setdefault(qa.normalize(n), c.index) == c.index, n  # one city per name


def test_kb_rejects_bad_files():
    raw = json.loads(json.dumps(RAW))
    del raw["cities"][5]["climate"]
    with pytest.raises(ValueError, match=r"cities\[5\]"):
        parse_kb(raw)


def test_population_bands_follow_the_file():
    assert city("Seoul").population == 10_231_000 and city("Seoul").population_band == "over 8 million"
    assert city("Caracas").population == 1_823_000  # the file has "1,823,00"
    assert city("Bangkok").population_band == "5 to 8 million"
    assert city("Budapest").population_band == "under 2 million"


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("Seoul", "country", "South Korea"), ("Seoul", "capital", True), ("Seoul", "continents", ("Asia",)),
        ("Addis Ababa", "country", "Ethiopia"), ("Abidjan", "country", "Côte d'Ivoire"),
        ("Kinshasa", "country", "Democratic Republic of the Congo"), ("Taipei", "country", "Taiwan"),
        ("New York", "country", "United States"), ("London", "country", "United Kingdom"),
        ("Sydney", "continents", ("Oceania",)), ("Sydney", "capital", False),
        ("Istanbul", "continents", ("Europe", "Asia")), ("Cairo", "river", "the Nile"),
        ("Cairo", "continents", ("Africa",)), ("London", "languages", ("English",)),
        ("Mexico City", "high_altitude", True), ("Bogota", "high_altitude", True),
        ("Toronto", "capital", False), ("Brasilia", "capital", True), ("Brasilia", "largest_in_country", False),
        ("Singapore", "capital", True), ("Jakarta", "coast", "sea"), ("Moscow", "snow", True),
        ("Bangkok", "snow", False), ("Sao Paulo", "languages", ("Portuguese",)),
        ("Shanghai", "largest_in_country", True), ("Beijing", "capital", True),
        ("Chicago", "coast", "lake"), ("Yangon", "capital", False), ("Rome", "river", "the Tiber"),
    ],
)  # fmt: skip
def test_kb_facts(name, field, value):
    assert getattr(city(name), field) == value


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("Kinshasa", "Kinshaha"), ("Daegu", "Taega"), ("Taegu", "Taega"), ("Havana", "Havanna"),
        ("Incheon", "Inchon"), ("Saigon", "Ho Chi Minh City"), ("New Delhi", "Delhi"),
        ("Bengaluru", "Bangalore"), ("Mumbai", "Bombay"), ("Kolkata", "Calcutta"),
        ("Chennai", "Madras"), ("Busan", "Pusan"), ("Kyiv", "Kiev"), ("Bucharest", "Bucuresti"),
        ("Harbin", "Haerbin"), ("Pyongyang", "Pyong Yang"), ("Saint Petersburg", "St Petersburg"),
        ("SÃO PAULO", "Sao Paulo"), ("bogotá", "Bogota"), ("Xi'an", "Xian"),
    ],
)  # fmt: skip
def test_aliases(alias, name):
    assert KB.cities[find_city(alias)].name == name


# --- answers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("question", "name", "expected"),
    [
        ("Which continent is your city on?", "Jakarta", "It is in Asia.\n"),
        ("Is it in Europe?", "Jakarta", "No. It is in Asia.\n"),
        ("Is it in Asia?", "Istanbul", "Yes.\n"),
        ("Which continent is it in?", "Istanbul", "It lies in both Europe and Asia.\n"),
        ("Is it in the southern hemisphere?", "Jakarta", "Yes. It lies just south of the equator.\n"),
        ("Is it in the northern hemisphere?", "Sydney", "No. It lies well south of the equator.\n"),
        ("Is it on the coast?", "Cairo", "No. It is inland.\n"),
        ("Is it by the sea?", "Chicago", "No. It lies on the shore of one of the Great Lakes, not on the sea.\n"),
        ("Is it on a lake?", "Chicago", "Yes. It lies on the shore of one of the Great Lakes.\n"),
        ("Does a river run through it?", "Cairo", "Yes. It lies on the Nile.\n"),
        ("Is it the capital of its country?", "Toronto", "No. It is not the national capital, but it is the capital of its province.\n"),
        ("What language do most people speak there?", "Jakarta", "Most people speak Indonesian.\n"),
        ("Do people speak Spanish there?", "Lima", "Yes. Most people speak Spanish.\n"),
        ("Do they speak Chinese?", "Hong Kong", "Yes. Most people speak Cantonese and English.\n"),
        ("Does it have more than 5 million people?", "Paris", "No. It has 2 to 3 million people.\n"),
        ("Are there over 2.5 million people?", "Paris", "No. It has 2 to 3 million people.\n"),
        ("Does it snow there?", "Moscow", "Yes. It snows in most winters.\n"),
        ("Are you from Indonesia?", "Jakarta", "Yes.\n"),
        ("Is it in the USA?", "Jakarta", "No.\n"),
        ("Is it in Nigeria?", "Jakarta", "No.\n"),
        ("What country is it in?", "Jakarta", "I can't name the country, but it is in Southeast Asia.\n"),
        ("Is it in the Middle East?", "Cairo", "Yes.\n"),
        ("Is it in Latin America?", "Havana", "Yes.\n"),
        ("Is it in Asia or Europe?", "Jakarta", UNKNOWN),
        ("Is it near Bangkok?", "Jakarta", UNKNOWN),
        ("Do you like it?", "Jakarta", UNKNOWN),
        ("", "Jakarta", UNKNOWN),
        ("宇宙", "Jakarta", UNKNOWN),
        ("is it " * 500, "Jakarta", UNKNOWN),
    ],
)  # fmt: skip
def test_answers(question, name, expected):
    assert kb_answer(question, find_city(name))[0] == expected


def test_latitude_phrases():
    assert latitude_phrase(-6.2) == "It lies just south of the equator."
    assert latitude_phrase(13.7) == "It lies in the tropics, north of the equator."
    assert latitude_phrase(59.9) == "It lies far north of the equator."


@pytest.mark.parametrize(
    ("question", "name", "expected"),
    [
        ("Is the city you are from Jakarta?", "Jakarta", YES),
        ("is it JAKARTA", "Jakarta", YES),
        ("Is it near Saigon?", "Ho Chi Minh City", YES),  # an alias anywhere is a correct guess
        ("Are you from São Paulo?", "Sao Paulo", YES),
        ("Are you from Sao Paulo?", "Rio de Janeiro", NO),
        ("Is your city Kyiv?", "Moscow", NO),
        ("Bangkok", "Jakarta", NO),
        ("Are you from Singapore?", "Singapore", YES),
    ],
)
def test_guesses(question, name, expected):
    assert kb_answer(question, find_city(name)) == (expected, "guess")


EXTRA_QUESTIONS = (
    "Where is it?", "What is the population?", "Is it hot?", "Is it cold?", "Is it tropical?",
    "Is it dry?", "Is it in the mountains?", "What river is it on?", "Tell me about its history.",
    "Is it famous for anything?", "Which hemisphere is it in?", "Is it inland?",
    "Is it the largest city in its country?", "Does it have fewer than 3 million people?",
)


def test_no_answer_names_the_city_its_aliases_or_its_country():
    table = answer_table()  # every bank question (all fields, open and yes/no) x every city
    for q in EXTRA_QUESTIONS:
        table[q] = tuple(kb_answer(q, i)[0] for i in range(len(KB.cities)))
    for c in KB.cities:
        banned = [qa.normalize(n) for n in forbidden_names(c)]
        assert qa.normalize(c.country) in banned
        for q, answers in table.items():
            text = answers[c.index]
            assert text.endswith("\n") and "\n" not in text[:-1], (c.name, q)
            assert not qa.mentions(qa.normalize(text), banned), (c.name, q, text)


# --- the env ----------------------------------------------------------------------------------
JAKARTA = [
    ("Which continent is your city on?", "It is in Asia.\n"),
    ("Is it in the southern hemisphere?", "Yes. It lies just south of the equator.\n"),
    ("Is it on the coast?", "Yes. It lies on the Java Sea.\n"),
    ("What language do most people speak there?", "Most people speak Indonesian.\n"),
    ("Is it the capital of its country?", "Yes. It is the national capital.\n"),
    ("Is the city you are from Jakarta?", "Yes.\n"),
]


def test_golden_transcript_jakarta():
    env = lmrlgym.make("GuessCity-v0")
    obs, info = env.reset(seed=3, options={"city": "jakarta"})
    assert obs == "Questions:\n" and info["city"] == "Jakarta" and info["country"] == "Indonesia"
    rewards = []
    for q, _ in JAKARTA:
        obs, reward, terminated, truncated, info = env.step(q)
        rewards.append(reward)
    assert obs == "Questions:\n" + "".join(f"{q}\n{a}" for q, a in JAKARTA)
    assert rewards == [-1.0] * 5 + [0.0] and terminated and not truncated and info["success"]
    assert info["is_guess"] and info["answer_source"] == "guess"


def test_truncation_and_reset_options():
    env = lmrlgym.make("GuessCity-v0")
    assert env.reset(seed=0, options={"index": 0})[1]["city"] == "Seoul"
    for k in range(20):
        _, reward, terminated, truncated, info = env.step("Is it Paris?")
        assert reward == -1.0 and not terminated and truncated == (k == 19)
    for bad in ({"city": "Atlantis"}, {"index": 100}, {"town": "Rome"}):
        with pytest.raises(ValueError):
            env.reset(seed=0, options=bad)


def test_evaluation_resets_cover_every_city():
    resets = GuessCityEnv.evaluation_resets(100)
    assert [s for s, _ in resets] == list(range(100))
    assert sorted(o["index"] for _, o in resets) == list(range(100))


def test_check_env():
    check_env(lmrlgym.make("GuessCity-v0"))


# --- LM oracle -----------------------------------------------------------------------------
class StubOracle:
    def __init__(self, reply, deterministic=False):
        self.reply, self.deterministic, self.calls = reply, deterministic, []

    def complete(self, messages):
        self.calls.append(messages)
        return self.reply


@pytest.mark.parametrize(
    ("reply", "expected", "redacted"),
    [
        ("It is very hot and humid.\nSecond line", "It is very hot and humid.\n", False),
        ("It is the capital of Indonesia.", UNKNOWN, True),
        ("Jakarta is big.", UNKNOWN, True),
        ("   ", UNKNOWN, False),
    ],
)
def test_lm_oracle(reply, expected, redacted):
    stub = StubOracle(reply)
    env = lmrlgym.make("GuessCity-v0", oracle=stub)
    _, info = env.reset(seed=0, options={"city": "Jakarta"})
    assert info["deterministic"] is False
    obs, _, _, _, info = env.step("What is the weather like?")
    assert obs.endswith(expected) and info["redacted"] is redacted and info["answer_source"] == "lm"
    prompt = stub.calls[0][0]["content"]
    assert "Jakarta, Indonesia" in prompt and "Do not name the city or its country" in prompt
    _, reward, terminated, _, info = env.step("Is it Jakarta?")
    assert len(stub.calls) == 1 and terminated and reward == 0.0


def test_deterministic_partner_keeps_the_env_deterministic():
    env = lmrlgym.make("GuessCity-v0", oracle=StubOracle("Warm.", deterministic=True))
    assert env.reset(seed=0)[1]["deterministic"] is True


# --- behaviour policy ----------------------------------------------------------------------
def test_unmappable_bank_questions_get_i_dont_know():
    table = answer_table()
    for q in _UNMAPPABLE:
        assert set(table[q]) == {UNKNOWN}, q
    mapped = [q for q in table if q not in _UNMAPPABLE]
    assert all(set(table[q]) != {UNKNOWN} for q in mapped)


def test_best_asker_solves_every_city():
    env = lmrlgym.make("GuessCity-v0")
    policy = make_policy(OPTIMAL_POLICY["GuessCity-v0"], "GuessCity-v0")
    solved = 0
    for seed, options in GuessCityEnv.evaluation_resets(100):
        policy.reset_options = lambda env, rng, o=options: o
        solved += run_episode(env, policy, seed).success
    assert solved == 100


def test_default_asker_is_deterministic_and_replays():
    env = lmrlgym.make("GuessCity-v0")
    policy = make_policy("guesscity-asker", "GuessCity-v0")
    a = [run_episode(env, policy, 1_000_000 + i).to_json() for i in range(4)]
    assert a == [run_episode(env, policy, 1_000_000 + i).to_json() for i in range(4)]
    for rec in a:
        obs, _ = env.reset(seed=rec["seed"], options=rec["reset_options"])
        for i in range(1, len(rec["turns"]), 2):
            obs, reward, *_ = env.step(rec["turns"][i]["text"])
            assert obs.endswith(rec["turns"][i + 1]["text"]) and reward == rec["turns"][i]["reward"]
        assert rec["meta"]["city"] == rec["meta"]["city"].strip()
