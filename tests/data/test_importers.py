"""Importers of the original LMRL-Gym release formats, on small hand-made files (docs/tasks.md §11.2),
and the Hugging Face export/import round trip."""

import json

import pytest

from lmrlgym.data.hf import export_hf, import_hf
from lmrlgym.data.importers import import_original
from lmrlgym.data.io import DatasetError, read_episodes

FO = "The goal is at position 8, 6. Your current position is at position {}. There are walls to your right, to your left.\n"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def texts(ep):
    return [(t.text, t.is_action, t.reward) for t in ep.turns]


def test_maze_fo_steps(tmp_path):
    f = write_jsonl(tmp_path / "fully_observed_maze_data.jsonl", [
        [{"state": FO.format("6, 6"), "action": "move down\n", "reward": -1.0, "done": False},
         {"state": FO.format("7, 6"), "action": "move down\n", "reward": 0.0, "done": True}],
        [{"state": FO.format("6, 6").rstrip("\n"), "action": "move left", "reward": -1.0,
          "done": False}],
    ])
    won, cut = import_original("Maze-FO-v0", f)
    assert texts(won) == [(FO.format("6, 6"), False, 0.0), ("move down\n", True, -1.0),
                          (FO.format("7, 6"), False, 0.0), ("move down\n", True, 0.0),
                          ("Success\n", False, 0.0)]
    assert won.terminated and won.success and won.ret == -1.0
    assert won.policy == "original:fully_observed_maze_data.jsonl" and won.meta["imported"]
    assert cut.truncated and not cut.success and cut.turns[0].text.endswith(".\n")


def test_jsonl_lines_split_on_newline_only(tmp_path):
    # A JSON string may hold U+2028, U+0085 or \x1c raw (json.dumps(ensure_ascii=False) writes
    # them so); str.splitlines() would cut such a valid line in two.
    f = tmp_path / "po.jsonl"
    f.write_text(json.dumps({"text_history": ["A wall\u2028\x85\x1c above.\n", "move down\n",
                                              "Success\n"], "rewards": [0, 0, 0],
                             "dones": [False, True, True]}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    (ep,) = import_original("Maze-PO-v0", f)
    assert ep.turns[0].text == "A wall\u2028\x85\x1c above.\n" and ep.success


def test_maze_po_history(tmp_path):
    f = write_jsonl(tmp_path / "po.jsonl", [{
        "text_history": ["There is a wall above you.\n", "move down\n",
                         "There are walls to your right, to your left.\n", "move down\n",
                         "Success\n"],
        "rewards": [0, -1, 0, 0, 0], "dones": [False, False, False, True, True]}])
    (ep,) = import_original("Maze-PO-v0", f)
    assert [t.reward for t in ep.turns] == [0, -1, 0, 0, 0]
    assert ep.terminated and ep.success and ep.n_actions == 2


def test_textnav_cumulative_score_and_loss(tmp_path):
    f = write_jsonl(tmp_path / "textnav.jsonl", [
        {"text_history": ["You are in a room.", "go west", "Kitchen.", "close fridge",
                          "You close the fridge. *** The End ***"],
         "rewards": [0, 1], "dones": [False, True]},
        {"text_history": ["Room.", "eat stale food", "You eat it. *** You lost! ***"],
         "rewards": [0], "dones": [True]},
        {"text_history": ["Room.", "go east", "Hall."], "rewards": [0], "dones": [True]},
    ])
    won, lost, timeout = import_original("TextNav-FO-v0", f)
    assert [t.reward for t in won.turns if t.is_action] == [0.0, 1.0]
    assert won.success and won.terminated and won.turns[0].text == "You are in a room.\n"
    assert lost.terminated and not lost.success
    assert timeout.truncated  # the original marks a 15-step timeout done


def test_wordle_sequence(tmp_path):
    f = write_jsonl(tmp_path / "train_data.jsonl", [{
        "sequence": [["Wordle:\n", 0.0], ["s l a t e\n", 1.0], ["b b b b g\n", 0.0],
                     ["h e d g e\n", 1.0], ["g g g g g\n", 0.0]],
        "reward": [-1.0, 0.0, 0.0, 0.0], "done": True}])
    (ep,) = import_original("Wordle-v0", f)
    assert texts(ep)[1] == ("s l a t e\n", True, -1.0) and ep.ret == -1.0 and ep.success


def test_chess_spacing_and_bc_pairs(tmp_path):
    start = "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1"
    f = write_jsonl(tmp_path / "train_trajectories.jsonl", [
        [{"state": start, "action": "e4", "reward": 0.0, "done": False},
         {"state": "r n b q k b n r / p p p p p p p p / 8 / 8 / 4 P 3 / 8 / P P P P 1 P P P / "
                   "R N B Q K B N R   b   K Q k q   -   0   1", "action": "Q h 5",
          "reward": 1.0, "done": True}]])
    (ep,) = import_original("Chess-v0", f)
    assert ep.turns[0].text == ("r n b q k b n r / p p p p p p p p / 8 / 8 / 8 / 8 / "
                                "P P P P P P P P / R N B Q K B N R   w   K Q k q   -   0   1\n")
    assert ep.turns[1].text == "e 4\n" and ep.turns[3].text == "Q h 5\n"  # spaced, not respaced
    assert ep.success and ep.ret == 1.0
    g = write_jsonl(tmp_path / "train_bc.jsonl", [{"from_state": start, "action": "Nf3"}])
    (pair,) = import_original("Endgames-v0", g)
    assert pair.turns[1].text == "N f 3\n" and pair.meta["bc_pair"] and pair.truncated


def test_twenty_questions_lines(tmp_path):
    f = tmp_path / "train.json"
    f.write_text(json.dumps([
        {"lines": ["Is it an animal? No.", "Is it a ball? Yes.", "Is it a basketball? Yes."],
         "correct": True, "word": ["basketball"]},
        {"lines": ["Is it alive? Maybe? Not sure."], "correct": False, "word": ["tree"]},
    ]))
    solved, odd = import_original("TwentyQuestions-v0", f)
    assert texts(solved)[:3] == [("Questions:\n", False, 0.0), ("Is it an animal?\n", True, -1.0),
                                 ("No.\n", False, 0.0)]
    assert solved.ret == -2.0 and solved.terminated and solved.success
    # split at the LAST "? ", as the original did, and flagged
    assert odd.turns[1].text == "Is it alive? Maybe?\n" and odd.meta["split_suspect"]
    assert odd.truncated and odd.ret == -1.0


def test_car_dealer_reward_recomputed(tmp_path):
    f = tmp_path / "train.json"
    info = {"personality": "polite", "preferred_brands": "Toyota", "preferred_type": "sedan",
            "preferred_features": ["sunroof"], "budget": 30000}
    f.write_text(json.dumps([
        {"buyer_info": info, "lines": [{"role": "Seller", "text": "Hi! What do you want?"},
                                       {"role": "Buyer", "text": "A Toyota sedan."},
                                       {"role": "Seller", "text": "A Camry for $27,000."},
                                       {"role": "Buyer", "text": "Deal."}],
         "output": {"car_bought": True, "msrp": 29000, "buy_price": 27000}, "reward": 0.91},
        {"buyer_info": info, "lines": [{"role": "Seller", "text": "Buy this."}],
         "output": {"car_bought": True, "msrp": 40000, "buy_price": 35000}},
    ]))
    sale, over_budget = import_original("CarDealer-v0", f)
    assert sale.turns[0].text == "Start\n" and sale.turns[3].reward == pytest.approx(0.9)
    assert sale.meta["original_reward"] == 0.91 and sale.success
    assert over_budget.ret == 0.0 and not over_budget.success  # above budget is no sale


def test_bad_original_records_name_where(tmp_path):
    f = write_jsonl(tmp_path / "w.jsonl", [{"sequence": [["Wordle:\n", 0.0]], "reward": [1.0],
                                            "done": True}])
    with pytest.raises(DatasetError, match=r"w.jsonl:1: 'reward' needs one entry"):
        import_original("Wordle-v0", f)
    g = tmp_path / "q.json"
    g.write_text(json.dumps([{"lines": ["no question mark"], "correct": False}]))
    with pytest.raises(DatasetError, match=r"q.json\[0\]: lines\[0\]"):
        import_original("GuessCity-v0", g)
    with pytest.raises(ValueError, match="no importer"):
        import_original("Nope-v0", g)


def test_hf_round_trip_and_cli(tmp_path):
    f = write_jsonl(tmp_path / "train_data.jsonl", [{
        "sequence": [["Wordle:\n", 0.0], ["c r a n e\n", 1.0], ["g g g g g\n", 0.0]],
        "reward": [0.0, 0.0], "done": True}] * 3)
    episodes = import_original("Wordle-v0", f)
    export_hf(episodes, tmp_path / "export")
    assert (tmp_path / "export" / "episodes.parquet").exists()
    for src in (tmp_path / "export", tmp_path / "export" / "episodes.parquet"):
        back = import_hf(src)
        assert [e.to_json() for e in back] == [e.to_json() for e in episodes]
    from lmrlgym.cli import main

    main(["data", "import", str(f), "--format", "original", "--task", "Wordle-v0",
          "--out", str(tmp_path / "ds")])
    main(["data", "export", str(tmp_path / "ds"), "--out", str(tmp_path / "ex2")])
    main(["data", "import", str(tmp_path / "ex2"), "--out", str(tmp_path / "ds2")])
    eps, _ = read_episodes(tmp_path / "ds2")
    assert [e.to_json() for e in eps] == [e.to_json() for e in episodes]
    manifest = json.loads((tmp_path / "ds2" / "manifest.json").read_text())
    assert manifest["episodes"] == 3 and manifest["success_rate"] == 1.0
