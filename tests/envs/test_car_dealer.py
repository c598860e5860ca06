"""CarDealer-v0: the buyer's line reader, its six rules, decisions, golden dialogues, LM buyer."""

import json
import re
from importlib import resources

import numpy as np
import pytest

import lmrlgym
from lmrlgym.data.generate import run_episode
from lmrlgym.data.policies import OPTIMAL_POLICY, make_policy
from lmrlgym.envs.car_buyer import (
    PATIENCE,
    REVEALERS,
    BuyerState,
    LMBuyer,
    Persona,
    agrees,
    asks_budget,
    asks_wants,
    buyer_attributes,
    buyer_templates,
    counter_price,
    match_score,
    named_brand,
    named_features,
    named_type,
    next_move,
    parse_prices,
    parse_seller_line,
    persona_line,
    read_decision,
    reservation_price,
)
from lmrlgym.envs.car_dealer import CarDealerEnv

TOYOTA = Persona("polite", "a Toyota", "sedan", ("heated seats", "sunroof"), 30000)
CARD_PERSONA = {
    "personality": "polite",
    "brand": "Toyota",
    "type": "sedan",
    "features": ["heated seats", "sunroof"],
    "budget": 30000,
}


def make_env(**kwargs) -> CarDealerEnv:
    return lmrlgym.make("CarDealer-v0", **kwargs)


# --- reading a seller line ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, prices",
    [
        ("It is $29,500.", [29500]),
        ("It is $29500.", [29500]),
        ("It is 29,500.", [29500]),
        ("It is 29500.", [29500]),
        ("It is 29.5k.", [29500]),
        ("Only $30K!", [30000]),
        ("30 thousand and it's yours", [30000]),
        ("a 2023 Camry", []),  # a model year
        ("a $2023 fee", [2023]),  # with a dollar sign it is a price
        ("3 seats, 500 dollars off, $999", []),  # under 1,000 without k
        ("12,000 miles, 0% APR, $25,000", [25000]),  # quantities with units are not prices
        ("From $31,500 down to $29,000.", [31500, 29000]),
        ("US$30,000", [30000]),
        ("$ 25,000.00", [25000]),
        ("", []),
        ("9" * 400, []),  # beyond a float: not a price, and no crash
    ],
)
def test_parse_prices(line, prices):
    assert parse_prices(line) == prices


def test_last_price_is_the_ask():
    assert parse_seller_line("It listed at $31,500 but for you $29,000.").ask == 29000
    assert parse_seller_line("A lovely car.").ask is None


@pytest.mark.parametrize(
    "line, brand, car_type",
    [
        ("a VW sedan", "Volkswagen", "sedan"),
        ("this Benz is a convertible", "Mercedes-Benz", "convertible"),
        ("a Mercedes pickup", "Mercedes-Benz", "truck"),
        ("a 2023 Camry", "Toyota", "sedan"),  # catalogue model: brand and type
        ("not a Honda but a Tesla EV", "Tesla", "electric"),  # the last one named
        ("an SUV", None, "SUV"),
        ("I can't afford to lose you", None, None),  # "afford" is not "Ford"
    ],
)
def test_brand_and_type(line, brand, car_type):
    assert named_brand(line) == brand
    assert named_type(line) == car_type


@pytest.mark.parametrize(
    "line, present, absent",
    [
        ("It has heated seats and a sunroof.", {"heated seats", "sunroof"}, set()),
        ("It has heated seats but no sunroof.", {"heated seats"}, {"sunroof"}),
        ("It doesn't have a rear camera.", set(), {"backup camera"}),
        ("It lacks GPS, but it has CarPlay.", {"Apple CarPlay"}, {"navigation system"}),
        ("Sold without leather seats", set(), {"leather seats"}),
        ("Not cheap, but it has a moonroof", {"sunroof"}, set()),  # other clause
        ("no leather or heated seats", set(), {"leather seats", "heated seats"}),  # 3 back
        ("not only does it have heated seats", {"heated seats"}, set()),  # 5 words back
        (
            "a 7-seater with blind-spot monitoring",
            {"third-row seating", "blind spot monitoring"},
            set(),
        ),
    ],
)
def test_features_and_negation(line, present, absent):
    assert named_features(line) == (present, absent)


def test_questions_and_agreement():
    assert asks_wants("What kind of car are you looking for?")
    assert asks_wants("Tell me what you need in a car.")
    assert not asks_wants("What do you think of this Camry?")
    assert asks_budget("What's your budget?")
    assert asks_budget("How much are you hoping to spend?")
    assert not asks_budget("My budget pricing is great.")  # not a question
    assert all(agrees(x) for x in ("Deal!", "Agreed.", "You got it.", "It's yours.", "It's a deal"))
    assert not agrees("I have a great deal for you")


# --- negotiation rules -------------------------------------------------------------------------
def test_match_and_prices_by_hand():
    assert match_score(TOYOTA, "Toyota", "sedan", {"heated seats", "sunroof"}) == 1.0
    assert match_score(TOYOTA, "Honda", "sedan", {"sunroof", "navigation system"}) == 0.5
    assert match_score(TOYOTA, None, None, set()) == 0.0
    assert reservation_price(30000, 1.0) == 30000
    assert reservation_price(30000, 0.5) == 27000
    assert reservation_price(10000, 0.33) == 8600  # 8660 rounded down to $100
    assert [counter_price(30000, k) for k in (1, 2, 3, 4, 5)] == [25500, 27000, 28500, 30000, 30000]
    assert counter_price(27000, 1) == 22900  # 22950 rounded down


def state_after(lines, persona=TOYOTA, counters=()):
    s = BuyerState(counters=list(counters))
    for line in lines:
        s.seller_turns += 1
        s.read(parse_seller_line(line))
    return s


def move(lines, persona=TOYOTA, counters=()):
    """(kind, price) of the buyer's reply to the last of ``lines``."""
    s = state_after(lines, persona, counters)
    m = next_move(persona, s, parse_seller_line(lines[-1]))
    return m.kind, m.price


def test_rule1_accepts_an_ask_within_the_counter():
    # Perfect match -> P = 30,000, w = c1 = 25,500 before any counter.
    assert move(["A Toyota sedan with heated seats and a sunroof for $25,500."]) == (
        "accept",
        25500,
    )
    # Rule 1 comes before the patience rule.
    lines = ["Hello."] * (PATIENCE["polite"] - 1) + ["A Toyota sedan, heated seats, sunroof: $25k"]
    assert move(lines) == ("accept", 25000)


def test_rule2_agreement_to_the_latest_counter():
    lines = ["A Toyota sedan with heated seats and a sunroof for $31,000.", "Deal!"]
    assert move(lines, counters=[25500]) == ("accept", 25500)
    lines = ["A Toyota sedan with heated seats and a sunroof for $31,000.", "OK, $26,000."]
    assert move(lines, counters=[25500, 26000]) == ("accept", 26000)  # exactly that price
    assert move(["Deal!"]) == ("neutral", None)  # no counter made yet


def test_rule3_patience_then_rule4_questions():
    lines = ["Hello."] * (PATIENCE["polite"] - 1) + ["What is your budget?"]
    assert move(lines) == ("reject", None)
    lines = ["Hello."] * (PATIENCE["polite"] - 2) + ["What is your budget? It is $35,000."]
    assert move(lines) == ("answer", None)  # a question outranks countering


def test_rule5_counter_or_accept_when_the_next_counter_reaches_the_ask():
    offer = "A Toyota sedan with heated seats and a sunroof for $29,000."
    assert move([offer]) == ("counter", 25500)
    assert move([offer], counters=[25500]) == ("counter", 27000)
    # c3 = 28,500 < 29,000: another counter; an ask of 28,500 is met by c3, so accepted.
    assert move([offer], counters=[25500, 27000]) == ("counter", 28500)
    assert move(["Toyota sedan, heated seats, sunroof, $28,500"], counters=[25500, 27000]) == (
        "accept",
        28500,
    )


def test_rule6_neutral():
    assert move(["Nice weather today."]) == ("neutral", None)
    assert move(["We have a Honda."]) == ("neutral", None)


def test_new_car_forgets_the_old_features():
    s = state_after(["A Toyota sedan with heated seats and a sunroof.", "Or a Honda sedan."])
    assert (s.brand, s.type, s.features) == ("Honda", "sedan", set())
    s = state_after(["A Toyota sedan with heated seats.", "This Toyota has a sunroof too."])
    assert s.features == {"heated seats", "sunroof"}


# --- decisions ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, visible, decision, overridden",
    [
        (
            "That sounds fair. I'll take it. Output: Decision=Accept MSRP=$31,500 Buy Price=$28,500",
            "That sounds fair. I'll take it.",
            {"accept": True, "msrp": 31500, "buy_price": 28500},
            False,
        ),
        (
            "Bye. Output: Decision=Reject MSRP=$0",
            "Bye.",
            {"accept": False, "msrp": 0, "buy_price": None},
            False,
        ),
        (
            "Sure! Output:Decision=Accept MSRP=$40000 Buy Price=$35000 thanks",  # above the budget
            "Sure!",
            {"accept": False, "msrp": 40000, "buy_price": None},
            True,
        ),
        (
            "Ok. Output: Decision=Accept MSRP=$25,000",
            "Ok.",  # no buy price
            {"accept": False, "msrp": 25000, "buy_price": None},
            True,
        ),
        (
            "Fine. Output: Decision=Reject MSRP=$1 Output: Decision=Accept MSRP=$1 Buy Price=$1",
            "Fine.",
            {"accept": False, "msrp": 1, "buy_price": None},
            False,
        ),  # the first counts
        ("Decision=Accept, I guess", "Decision=Accept, I guess", None, False),
    ],
)
def test_read_decision(raw, visible, decision, overridden):
    assert read_decision(raw, budget=30000) == (visible, decision, overridden)


# --- golden dialogues --------------------------------------------------------------------------
def play(env, actions, seed, persona):
    obs, info = env.reset(seed=seed, options={"persona": persona})
    out = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((r, term, trunc))
    return obs, out, info


def test_golden_card_example():
    """docs/tasks.md §9's example: reward 28,500 / 30,000 = 0.95 (buyer wording from seed 0)."""
    actions = [
        "Hello and welcome! What kind of car are you looking for today?",
        "We have a 2023 Toyota Camry sedan with heated seats and a sunroof. It lists at $31,500.",
        "I can bring it down to $29,000.",
        "Let's meet at $28,500.",
    ]
    obs, steps, info = play(make_env(), actions, 0, CARD_PERSONA)
    assert obs == (
        "Start\n"
        "Hello and welcome! What kind of car are you looking for today?\n"
        "Hi, thank you for asking. I would like a Toyota sedan with heated seats and a sunroof.\n"
        "We have a 2023 Toyota Camry sedan with heated seats and a sunroof. It lists at $31,500.\n"
        "Would you kindly consider $25,500?\n"
        "I can bring it down to $29,000.\n"
        "That is still a bit high for me. How about $27,000?\n"
        "Let's meet at $28,500.\n"
        "Perfect, thank you. Let's do the paperwork.\n"
    )
    assert steps == [(0.0, False, False)] * 3 + [(0.95, True, False)]
    assert info["decision"] == {"accept": True, "msrp": 31500, "buy_price": 28500}
    assert info["success"] and info["seller_turns"] == 4 and not info["decision_overridden"]
    assert "Output:" not in obs


def test_golden_rude_buyer_walks_out():
    persona = {
        "personality": "rude",
        "brand": "an Audi",
        "type": "SUV",
        "features": ["sunroof", "leather seats"],
        "budget": 50000,
    }
    actions = [
        "Hi! What are you looking for, and what's your budget?",
        "What else do you want?",
        "Any particular features?",
        "This Audi Q5 SUV has leather seats but no sunroof, $60,000.",  # m = 0.75, P = 47,500
        "It has a sunroof after all. $60,000.",  # m = 1, P = 50,000
        "$60,000.",
        "Price stays at $60k.",
        "Still 60 thousand.",  # the 8th line: a rude buyer's patience
    ]
    obs, steps, info = play(make_env(), actions, 5, persona)
    assert obs.split("\n")[1:-1:2] == [a for a in actions]
    assert obs.split("\n")[2:-1:2] == [
        "An Audi. Keep up. That's my business, not yours.",
        "Whatever. An SUV.",
        "Whatever. Leather seats.",
        "Too much. $40,300.",
        "Too much. $45,000.",
        "Too much. $47,500.",
        "I'll pay $50,000. Not more.",
        "Forget it. I'm leaving.",
    ]
    assert steps[-1] == (0.0, True, False)
    assert info["decision"] == {"accept": False, "msrp": 60000, "buy_price": None}
    assert not info["success"]


def test_seeded_personas_and_replay():
    env = make_env()
    personas = {json.dumps(env.reset(seed=s)[1]["persona"]) for s in range(50)}
    assert len(personas) > 40
    policy = make_policy("car-seller", "CarDealer-v0")
    for seed in (1_000_000, 1_000_001, 1_000_002):
        ep = run_episode(env, policy, seed, "CarDealer-v0")
        assert run_episode(env, policy, seed, "CarDealer-v0").turns == ep.turns
        obs, info = env.reset(seed=seed)
        for a in ep.actions:
            obs, r, *_ = env.step(a)
        assert obs == "".join(t.text for t in ep.turns)  # a stored episode replays exactly
    _, info = env.reset(seed=3, options={"persona": {"budget": 90000}})
    assert info["persona"]["budget"] == 90000
    assert {k: v for k, v in info["persona"].items() if k != "budget"} == {
        k: v for k, v in env.reset(seed=3)[1]["persona"].items() if k != "budget"
    }


@pytest.mark.parametrize(
    "persona, match",
    [
        ({"personality": "grumpy"}, r"persona.personality='grumpy' is not one of"),
        ({"brand": "Kia"}, r"persona.brand='Kia'"),
        ({"features": []}, r"non-empty list"),
        ({"features": ["sunroof", "sunroof"]}, r"duplicates"),
        ({"budget": 20000}, r"persona.budget=20000"),
        ({"colour": "red"}, r"unknown field"),
    ],
)
def test_persona_option_is_validated(persona, match):
    with pytest.raises(ValueError, match=match):
        make_env().reset(seed=0, options={"persona": persona})
    with pytest.raises(ValueError, match="unknown reset option"):
        make_env().reset(seed=0, options={"start": 1})


# --- properties over many episodes -------------------------------------------------------------
SELLER_LINES = [
    "What kind of car do you want, and what's your budget?",
    "We have a Toyota sedan with heated seats for $35,000.",
    "How about $12k?",
    "Deal!",
    "I can do 60 thousand for this BMW SUV with a sunroof.",
    "",
    "ünïcødé 🚗 ?",
    "a" * 5000,
    "$" + "9" * 500,
    "It has no sunroof. $90,000.",
    "You got it, $9,000.",
]


def test_buyer_never_pays_above_budget_and_stays_in_character():
    env = make_env()
    rng = np.random.default_rng(0)
    profanity = re.compile(r"\b(damn|hell|crap|shit|fuck|bitch|bastard|idiot|moron)\b")
    for seed in range(300):
        obs, info = env.reset(seed=seed)
        persona = info["persona"]
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(SELLER_LINES[rng.integers(len(SELLER_LINES))])
            done = term or trunc
            reply = info["turns"][-1].text
            assert reply.endswith("\n") and "Output:" not in reply
            if persona["personality"] == "uncommunicative":
                assert len(reply.split()) <= 6, reply
        assert term and not trunc  # the rule buyer always decides within its patience
        assert info["seller_turns"] <= PATIENCE[persona["personality"]]
        if info["decision"]["accept"]:
            assert info["decision"]["buy_price"] <= persona["budget"]
            assert r == info["decision"]["buy_price"] / persona["budget"] <= 1.0
        else:
            assert r == 0.0
        assert not profanity.search(obs.lower()), obs


def test_templates_cover_every_personality_and_kind():
    personalities = buyer_attributes()["DEFAULT_PERSONALITIES"]
    assert sorted(buyer_templates()) == sorted(personalities)
    common = {"counter", "accept", "reject", "neutral_car", "neutral_none"}
    for name, kinds in buyer_templates().items():
        need = common | (
            {"wants_full", "budget_name"}
            if name in REVEALERS
            else {"wants_item", "wants_done", "budget_refuse"}
        )
        assert need <= set(kinds), name
        for kind in need:
            assert len(kinds[kind]) >= 5 and len(set(kinds[kind])) == len(kinds[kind]), (name, kind)
            for t in kinds[kind]:
                assert "Output:" not in t and not re.search(r"\d", t)


def test_catalogue_schema():
    data = json.loads(
        resources.files("lmrlgym.envs").joinpath("data/car_catalogue.json").read_text()
    )
    a = buyer_attributes()
    brands = {b.split(" ", 1)[1] for b in a["DEFAULT_BRANDS"]}
    models = set()
    for car in data["cars"]:
        assert set(car) == {"brand", "model", "type", "features", "msrp"}, car
        assert car["brand"] in brands and car["type"] in a["DEFAULT_TYPES"], car
        assert set(car["features"]) <= set(a["DEFAULT_FEATURES"]) and car["features"], car
        assert isinstance(car["msrp"], int) and 10_000 <= car["msrp"] <= 200_000, car
        assert car["model"] not in models
        models.add(car["model"])
        assert named_brand(f"the {car['model']}") == car["brand"]
    assert {c["brand"] for c in data["cars"]} == brands
    assert {c["type"] for c in data["cars"]} == set(a["DEFAULT_TYPES"])


# --- LM buyer ----------------------------------------------------------------------------------
class StubPartner:
    """A chat partner that replays canned lines and records what it was sent."""

    deterministic = False

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def complete(self, messages):
        self.calls.append(messages)
        return self.replies.pop(0) if self.replies else "Hmm, tell me more."


def test_lm_buyer_prompt_and_decision():
    partner = StubPartner(
        [
            "Buyer: Hello!\nI want a Toyota sedan.",
            "Great. Output: Decision=Accept MSRP=$31,500 Buy Price=$28,500 (thanks)",
        ]
    )
    env = make_env(buyer=partner)
    assert not env.deterministic
    obs, info = env.reset(seed=0, options={"persona": CARD_PERSONA})
    assert not info["deterministic"]
    env.step("Hi, what do you want?")
    obs, r, term, trunc, info = env.step("A Camry for $28,500.")
    system, *dialogue = partner.calls[-1]
    assert system["role"] == "system"
    assert persona_line(env.persona) in system["content"]
    assert persona_line(env.persona) == (
        "Buyer persona: polite; wants a Toyota sedan with heated seats, sunroof; budget $30,000."
    )
    assert "Output: Decision=Accept" in system["content"]
    assert dialogue == [
        {"role": "user", "content": "Hi, what do you want?"},
        {"role": "assistant", "content": "Hello! I want a Toyota sedan."},
        {"role": "user", "content": "A Camry for $28,500."},
    ]
    assert obs.endswith("A Camry for $28,500.\nGreat.\n")
    assert (r, term, trunc) == (0.95, True, False)


def test_lm_buyer_override_and_truncation():
    env = make_env(
        buyer=StubPartner(["Yes! Output: Decision=Accept MSRP=$99,000 Buy Price=$95,000"])
    )
    env.reset(seed=0, options={"persona": CARD_PERSONA})
    _, r, term, _, info = env.step("$95,000")
    assert (r, term, info["decision_overridden"], info["success"]) == (0.0, True, True, False)
    assert info["decision"] == {"accept": False, "msrp": 99000, "buy_price": None}

    env = make_env(buyer=LMBuyer(StubPartner([])))  # never decides
    env.reset(seed=1)
    for i in range(25):
        _, r, term, trunc, info = env.step(f"Line {i}")
    assert (r, term, trunc, info["seller_turns"], info["decision"]) == (0.0, False, True, 25, None)
    with pytest.raises(RuntimeError):
        env.step("one more")


def test_partner_spec_string_makes_an_lm_buyer():
    env = make_env(buyer="openai:http://127.0.0.1:9/v1/buyer-model")  # nothing is contacted yet
    assert isinstance(env.buyer, LMBuyer) and env.buyer.partner.model == "buyer-model"
    assert env.deterministic is False


def test_buyer_argument_errors():
    with pytest.raises(ValueError, match="valid forms"):
        make_env(buyer="gpt-4")
    with pytest.raises(TypeError, match="buyer must be"):
        make_env(buyer=3)


# --- sellers -----------------------------------------------------------------------------------
def test_behaviour_policy_near_targets():
    """car-seller defaults: success 0.526, mean 0.460 on 19,000 episodes; a 300-episode sample."""
    env, policy = make_env(), make_policy("car-seller", "CarDealer-v0")
    eps = [run_episode(env, policy, 1_000_000 + i, "CarDealer-v0") for i in range(300)]
    success = np.mean([e.success for e in eps])
    mean = np.mean([e.ret for e in eps])
    assert 0.43 < success < 0.63 and 0.37 < mean < 0.57, (success, mean)
    assert all(e.meta["persona"] for e in eps)


def test_expert_seller_is_the_upper_reference():
    assert OPTIMAL_POLICY["CarDealer-v0"] == "car-seller-expert"
    env, policy = make_env(), make_policy("car-seller-expert", "CarDealer-v0")
    eps = [run_episode(env, policy, i, "CarDealer-v0") for i in range(60)]
    assert all(e.success for e in eps)
    assert np.mean([e.ret for e in eps]) > 0.94
    # Revealing buyers name their budget: the expert sells at exactly the budget.
    assert all(e.ret == 1.0 for e in eps if e.meta["persona"]["personality"] in REVEALERS)


def test_check_env():
    lmrlgym.check_env(make_env(), n_steps=40)
