"""Importers for the original LMRL-Gym dataset release (docs/tasks.md §11.2).

The original data were hosted by the authors, not in their repository; these readers turn each
file layout into the project's episode records with ``policy = "original:<file>"``,
``seed = None`` and ``meta.imported = True``. The original texts differ from ours where the task
cards list differences, so imported data are for comparison, not for replay in our envs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmrlgym.core import Episode, Turn
from lmrlgym.data.io import DatasetError


def _line(text: str) -> str:
    """Strip trailing newlines and end with exactly one (original texts were stripped or not)."""
    return text.rstrip("\n") + "\n"


def _episode(task: str, source: str, turns: list[Turn], terminated: bool, success: bool,
             meta: dict[str, Any] | None = None) -> Episode:
    return Episode(task=task, turns=turns, terminated=terminated, truncated=not terminated,
                   success=success, seed=None, policy=f"original:{source}",
                   meta={"imported": True, **(meta or {})})


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for a JSON list file (``.json``) or a JSONL file (anything else)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    if path.suffix == ".json":
        data = _loads(text, str(path))
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of records")
        for i, rec in enumerate(data):
            yield f"{path}[{i}]", rec
        return
    # Lines end at "\n" only: str.splitlines() would also split a valid line at a U+2028 (or
    # \x1c, \x85, ...) inside a JSON string.
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield f"{path}:{lineno}", _loads(line, f"{path}:{lineno}")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: invalid JSON at line {e.lineno} column {e.colno}: "
                           f"{e.msg}") from None
    except RecursionError:
        raise DatasetError(f"{where}: JSON nested too deeply to read") from None


def _need(rec: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(rec, dict) or key not in rec:
        raise DatasetError(f"{where}: missing field {key!r}")
    if not isinstance(rec[key], kind):
        raise DatasetError(f"{where}: field {key!r} has the wrong type")
    return rec[key]


# --- chained step lists: Maze FO, Chess, Endgames ---------------------------------------------


def _space(s: str) -> str:
    """Character-space a FEN or SAN string unless it already is (docs/tasks.md §5 format)."""
    s = s.strip()
    if re.fullmatch(r"(\S( |$))+", s) or re.search(r"\S {3}\S", s):
        return s  # already spaced: single chars separated by spaces (FEN gaps are 3 spaces)
    return " ".join(s)


def import_steps(task: str, path: Path, rec: Any, where: str, spaced: bool) -> Episode:
    """A list of ``{"state", "action", "reward", "done"}`` steps (Maze FO, chess trajectories)."""
    if not isinstance(rec, list) or not rec:
        raise DatasetError(f"{where}: expected a non-empty list of steps")
    fix = _space if spaced else (lambda s: s)
    turns: list[Turn] = []
    for k, step in enumerate(rec):
        w = f"{where} step {k}"
        turns.append(Turn(_line(fix(_need(step, "state", str, w))), False))
        reward = float(_need(step, "reward", (int, float), w))
        turns.append(Turn(_line(fix(_need(step, "action", str, w))), True, reward))
    last = rec[-1]
    done = bool(_need(last, "done", (bool, int), where))
    if task.startswith("Maze"):
        success = done and float(last["reward"]) == 0.0
        if success:
            turns.append(Turn("Success\n", False))
    else:  # chess: White wins with the +1 of checkmate
        success = done and float(last["reward"]) == 1.0
    return _episode(task, path.name, turns, done, success)


def import_chess_bc(task: str, path: Path, rec: Any, where: str) -> Episode:
    """A BC pair ``{"from_state": FEN, "action": SAN}`` as a one-step, cut episode."""
    state = _space(_need(rec, "from_state", str, where))
    action = _space(_need(rec, "action", str, where))
    return _episode(task, path.name, [Turn(_line(state), False), Turn(_line(action), True, 0.0)],
                    False, False, {"bc_pair": True})


# --- text histories: Maze PO, Text-Nav -----------------------------------------------------------


def import_text_history(task: str, path: Path, rec: Any, where: str) -> Episode:
    """``{"text_history": [obs0, act0, obs1, ...], "rewards", "dones"}`` (Maze PO, Text-Nav)."""
    history = _need(rec, "text_history", list, where)
    rewards = _need(rec, "rewards", list, where)
    dones = _need(rec, "dones", list, where)
    if not history or not all(isinstance(t, str) for t in history):
        raise DatasetError(f"{where}: field 'text_history' must be a non-empty list of strings")
    n_actions = len(history) // 2
    textnav = task.startswith("TextNav")
    if textnav:
        # Rewards and dones are per action; the rewards are the cumulative game score.
        if len(rewards) != n_actions or len(dones) != n_actions:
            raise DatasetError(f"{where}: 'rewards'/'dones' need one entry per action "
                               f"({n_actions}), got {len(rewards)}/{len(dones)}")
        score = [float(r) for r in rewards]
        step_rewards = [s - p for s, p in zip(score, [0.0] + score[:-1], strict=False)]
    else:
        # Maze PO: aligned with text_history, read at the action indices.
        if len(rewards) != len(history) or len(dones) != len(history):
            raise DatasetError(f"{where}: 'rewards'/'dones' must align with 'text_history'")
        step_rewards = [float(rewards[2 * k + 1]) for k in range(n_actions)]
    turns = [Turn(_line(t), i % 2 == 1, step_rewards[i // 2] if i % 2 else 0.0)
             for i, t in enumerate(history)]
    if textnav:
        won = sum(step_rewards) >= 1.0
        lost = "*** You lost! ***" in history[-1]
        return _episode(task, path.name, turns, won or lost, won)
    done = bool(dones[2 * n_actions - 1]) if n_actions else False
    success = done and step_rewards[-1] == 0.0
    return _episode(task, path.name, turns, done, success)


# --- Wordle --------------------------------------------------------------------------------------


def import_wordle(task: str, path: Path, rec: Any, where: str) -> Episode:
    """``{"sequence": [[text, 0.0|1.0], ...], "reward": [...], "done": bool}``."""
    seq = _need(rec, "sequence", list, where)
    rewards = [0.0] + [float(r) for r in _need(rec, "reward", list, where)]  # none for "Wordle:"
    if len(rewards) != len(seq):
        raise DatasetError(f"{where}: 'reward' needs one entry per element after 'Wordle:'")
    turns = []
    for i, item in enumerate(seq):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise DatasetError(f"{where}: sequence[{i}] must be [text, 0.0 or 1.0]")
        is_action = float(item[1]) == 1.0
        turns.append(Turn(_line(item[0]), is_action, rewards[i] if is_action else 0.0))
    success = any(t.text.replace(" ", "").strip() == "ggggg" for t in turns if not t.is_action)
    return _episode(task, path.name, turns, bool(_need(rec, "done", (bool, int), where)), success)


# --- dialogues: 20Q, Guess My City, Car Dealer ---------------------------------------------------


def import_questions(task: str, path: Path, rec: Any, where: str) -> Episode:
    """``{"lines": ["Is it an animal? No.", ...], "correct": bool, "word": [...]}`` (20Q, Guess)."""
    lines = _need(rec, "lines", list, where)
    correct = bool(_need(rec, "correct", (bool, int), where))
    turns = [Turn("Questions:\n", False)]
    split_suspect = False
    for i, line in enumerate(lines):
        if not isinstance(line, str) or "? " not in line:
            raise DatasetError(f"{where}: lines[{i}] has no '? ' between question and answer")
        q, a = line.rsplit("? ", 1)  # as the original: an answer with '? ' splits wrongly
        split_suspect |= "? " in q
        last = i == len(lines) - 1
        turns.append(Turn(_line(q + "?"), True, 0.0 if (last and correct) else -1.0))
        turns.append(Turn(_line(a), False))
    meta = {"word": rec.get("word")}
    if split_suspect:
        meta["split_suspect"] = True
    return _episode(task, path.name, turns, correct, correct, meta)


def import_car_dealer(task: str, path: Path, rec: Any, where: str) -> Episode:
    """``{"buyer_info", "lines": [{"role", "text"}], "output"}``; reward recomputed as ours."""
    info = _need(rec, "buyer_info", dict, where)
    lines = _need(rec, "lines", list, where)
    output = _need(rec, "output", dict, where)
    budget = float(_need(info, "budget", (int, float), f"{where} buyer_info"))
    bought = bool(output.get("car_bought"))
    price = output.get("buy_price")
    # Ours (docs/tasks.md §9): buy_price / budget on a sale within budget, else 0.
    reward = price / budget if bought and price is not None and price <= budget else 0.0
    turns = [Turn("Start\n", False)]
    for i, line in enumerate(lines):
        role, text = line.get("role") if isinstance(line, dict) else None, None
        if role not in ("Seller", "Buyer") or not isinstance(line.get("text"), str):
            raise DatasetError(f"{where}: lines[{i}] needs role Seller/Buyer and a text")
        text = line["text"]
        want_action = len(turns) % 2 == 1
        if (role == "Seller") != want_action:
            raise DatasetError(f"{where}: lines[{i}] breaks the Seller/Buyer alternation")
        turns.append(Turn(_line(text), role == "Seller", 0.0))
    seller = [i for i, t in enumerate(turns) if t.is_action]
    if not seller:
        raise DatasetError(f"{where}: no seller lines")
    turns[seller[-1]] = turns[seller[-1]]._replace(reward=reward)
    meta = {"persona": info, "output": output, "original_reward": rec.get("reward")}
    return _episode(task, path.name, turns, True, reward > 0, meta)


Importer = Callable[[str, Path, Any, str], Episode]


def _importer(task: str, path: Path, rec: Any) -> Importer:
    if task == "Maze-FO-v0":
        return lambda t, p, r, w: import_steps(t, p, r, w, spaced=False)
    if task in ("Chess-v0", "Endgames-v0"):
        if isinstance(rec, dict) and "from_state" in rec:
            return import_chess_bc
        return lambda t, p, r, w: import_steps(t, p, r, w, spaced=True)
    table: dict[str, Importer] = {
        "Maze-PO-v0": import_text_history, "TextNav-FO-v0": import_text_history,
        "TextNav-PO-v0": import_text_history, "Wordle-v0": import_wordle,
        "TwentyQuestions-v0": import_questions, "GuessCity-v0": import_questions,
        "CarDealer-v0": import_car_dealer,
    }
    if task not in table:
        raise ValueError(f"no importer for task {task!r}; valid: Maze-FO-v0, Chess-v0, "
                         f"Endgames-v0, {', '.join(table)}")
    return table[task]


def import_original(task: str, path: str | Path) -> list[Episode]:
    """All episodes of one original release file for ``task``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"original data file not found: {path}")
    episodes = []
    for where, rec in _records(path):
        episodes.append(_importer(task, path, rec)(task, path, rec, where))
    return episodes
