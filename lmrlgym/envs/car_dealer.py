"""Car Dealer: sell a car to a buyer with a hidden persona (``CarDealer-v0``).

Description
-----------
The agent is a car seller; the env plays a buyer with a hidden persona drawn from the seed:
personality (10), brand (13), car type (6), 1-4 wanted features (of 8) and a budget ($10,000 to
$90,000). The seller should find out what the buyer wants, offer a matching car and close at a
high price. Tests persuasion and strategic dialogue (docs/tasks.md §9).

Observation
-----------
The whole transcript: ``Start\\n``, then one line per turn, seller first. The buyer's final line
carries a decision marker (``Output: Decision=Accept MSRP=$31,500 Buy Price=$28,500`` or
``Output: Decision=Reject MSRP=$31,500``) that the env removes, with the space before it, from
what the seller sees; the decision is reported in ``info["decision"]``.

Action
------
One line of seller text. Nothing is illegal.

The default buyer (``buyer="rules"``) reads each seller line for prices (``$29,500``, ``29500``,
``29.5k``, ``$30K``, ``30 thousand``; a bare 1900-2099 is a model year; numbers under 1,000
without ``k`` and numbers followed by a unit such as ``miles`` are ignored; the last price is the
ask), brands (with short forms and the catalogue's model names), types, features (with synonyms;
a negation up to three words before, in the same clause, marks a feature absent), questions about
wants or budget, and agreement words. From the car under discussion it computes the match
``m = 0.25 [brand] + 0.25 [type] + 0.5 (share of wanted features confirmed)``, the reservation
price ``P = budget (0.8 + 0.2 m)`` and the counters ``c_k = P min(1, 0.85 + 0.05 (k - 1))``, and
answers with the first rule that applies: (1) ask <= latest counter: accept at the ask; (2) the
seller agrees to the latest counter: accept at it; (3) patience used up: reject; (4) a question
about wants or budget: answer; (5) ask above the latest counter: accept at the ask if the next
counter would reach it, else make the next counter; (6) a neutral line about the car or the price.
Polite, respectful and talkative buyers reveal everything at once and name their budget; the
others reveal one wish per question and refuse to name a budget.

Before parsing, an action is cut to its first 1,000 characters and lone surrogates become U+FFFD
(the stored action too), so the transcript holds at most 25 seller lines of 1,001 characters.

Rewards
-------
Only at the end: ``buy_price / budget`` after a sale (at most 1), 0 otherwise. Return range [0, 1].

Episode End
-----------
A buyer decision: ``terminated``. The buyer always answers the seller's 25th line; without a
decision in that answer the episode is ``truncated`` (reward 0). The rule-based buyer decides by
its patience (6-14 seller lines), so only LM buyers reach the limit.

Arguments
---------
``buyer``: ``"rules"`` (default, deterministic), a :class:`~lmrlgym.envs.car_buyer.Buyer`, a
``lmrlgym.partners.ChatPartner`` or a partner spec string (``"openai:<base_url>/<model>"``,
``"hf:<path>"``); an LM buyer makes the env nondeterministic. Reset option
``{"persona": {...}}`` overrides any of ``personality``, ``brand`` (``"Toyota"`` or
``"a Toyota"``), ``type``, ``features`` (1-8 distinct), ``budget`` (one of the five budgets).
Extra info keys: ``persona``, ``decision`` (``{"accept", "msrp", "buy_price"}`` or None),
``decision_overridden``, ``seller_turns``.

Differences from LMRL-Gym
-------------------------
1. Reward = buy_price / budget on a sale, else 0 (the original could pay for failed sales).
2. A deterministic rule-based buyer replaces the fine-tuned GPT-2-XL buyer (no checkpoint).
3. A 25-seller-line limit (``truncated``, reward 0); the original stopped after 50 lines.
4. The persona comes from the reset seed (the original's batched env ignored seeds).
5. An Accept above the budget, or without a price, counts as a Reject.
6. The buyer also recognises catalogue model names and ignores numbers with units (miles, %),
   so "a 2023 Camry with 12,000 miles" names a Toyota sedan and no price.

References
----------
Abdulhai et al., "LMRL Gym: Benchmarks for Multi-Turn Reinforcement Learning with Language
Models" (2023); original code ``llm_rl_scripts/car_dealer`` (MIT). Persona lists:
``lmrlgym/envs/data/car_dealer_buyer_attributes.json``; the buyer's phrasing:
``car_dealer_buyer_templates.json``; the car catalogue: ``car_catalogue.json``.

Version History
---------------
v0: initial release (docs/tasks.md §9).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.envs.car_buyer import (
    Dialogue,
    Persona,
    draw_persona,
    make_buyer,
    one_line,
    override_persona,
    read_decision,
)

START_TEXT = "Start\n"
MAX_SELLER_TURNS = 25


# --- the env -----------------------------------------------------------------------------------
class CarDealerEnv(TextEnv):
    """Sell a car to a buyer with a hidden persona; see the module docstring (the card)."""

    return_range = (0.0, 1.0)
    play_help = (
        "You are the seller. The buyer has a hidden persona: personality, preferred brand and\n"
        "car type, 1-4 wanted features and a budget. Find out what they want, offer a matching\n"
        "car and close at a high price; the buyer accepts, counters or walks away when their\n"
        "patience (6-14 of your lines) runs out.\n"
        "Action: one line of seller text. Examples: Hi! What are you looking for in a car?\n"
        "This Toyota sedan has a sunroof and heated seats, and it is yours for $28,500.\n"
        "Reward: at the end, sale price / budget (at most 1); 0 without a sale."
    )
    play_reveal = ("persona", "decision")

    def __init__(self, buyer: Any = "rules", render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.buyer = make_buyer(buyer)
        # An LM buyer samples, so seeds no longer fix episodes (docs/tasks.md §1, "Partners").
        self.deterministic = bool(self.buyer.deterministic)
        self.persona: Persona | None = None

    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        unknown = set(options) - {"persona"}
        if unknown:
            raise ValueError(
                f"CarDealer-v0: unknown reset option(s) {sorted(unknown)}; valid: persona"
            )
        persona = draw_persona(rng)  # drawn in full first, so an override keeps the other fields
        if "persona" in options:
            persona = override_persona(persona, options["persona"])
        self.persona = persona
        self.buyer.start(persona, rng)
        self._dialogue: Dialogue = []
        self._seller_turns = 0
        self._decision: dict[str, Any] | None = None
        self._overridden = False
        return START_TEXT, self._extra()

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        assert self.persona is not None
        self._seller_turns += 1
        self._dialogue.append(("seller", action.rstrip("\n")))
        raw = one_line(self.buyer.reply(list(self._dialogue)))
        visible, decision, overridden = read_decision(raw, self.persona.budget)
        visible = visible or "..."
        self._dialogue.append(("buyer", visible))
        self._decision, self._overridden = decision, overridden
        reward, sale = 0.0, False
        if decision is not None and decision["accept"]:
            reward, sale = decision["buy_price"] / self.persona.budget, True
        terminated = decision is not None
        truncated = not terminated and self._seller_turns >= MAX_SELLER_TURNS
        extra = self._extra()
        extra.update(illegal=False, success=sale)
        return visible + "\n", reward, terminated, truncated, extra

    def _extra(self) -> dict[str, Any]:
        assert self.persona is not None
        return {
            "persona": self.persona.to_dict(),
            "decision": self._decision,
            "decision_overridden": self._overridden,
            "seller_turns": self._seller_turns,
        }
