"""`lmrlgym bench run`: the grid runs, resumes without redoing finished cells, reruns corrupted
or half-finished ones with a warning, and rejects unknown profiles, tasks and methods."""

import dataclasses
import json

import pytest
import torch

from lmrlgym.algos.bc import BCConfig
from lmrlgym.algos.ilql import ILQLConfig
from lmrlgym.bench import presets, run
from lmrlgym.cli import main
from tests.algos.helpers import micro_model, plant_pickles

TASK = "Maze-FO-v0"


@pytest.fixture
def tiny_profile(tmp_path, monkeypatch):
    """A one-task, one-seed profile small enough to train BC and ILQL for a few steps; 25
    evaluation episodes are the 25 Maze starts, so the optimum scores exactly 100."""
    profile = presets.Profile(
        name="tiny", method_tasks=(TASK,), reference_tasks=(), seeds=(0,),
        model={TASK: micro_model(tmp_path / "model")}, data={TASK: 30}, eval={TASK: 25},
        offline_steps={"*": 2}, batch_size=4, lr_scale=1.0, online={},
        extra={"*": {"vocab_size": 512, "save_every": 1}},
    )
    monkeypatch.setitem(presets.PROFILES, "tiny", profile)
    return profile


def _cell_mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}


def test_grid_resumes_and_reruns_broken_cells(tmp_path, tiny_profile):
    out = tmp_path / "grid"
    played = []  # the dataset's generation is reported episode by episode
    results = run.run_grid("tiny", out, methods=["ilql"],  # pulls in BC, which ILQL starts from
                           data_progress=lambda *a: played.append(a))
    assert played == [(TASK, i, 30) for i in range(1, 31)]
    keys = sorted(c["method"] for c in results["cells"])
    assert keys == ["bc", "behaviour", "ilql", "optimal"]
    assert results["summary"][TASK]["optimal"]["normalized_score"] == pytest.approx(100.0)
    assert "ILQL" in (out / "results.md").read_text() and (out / "scores.png").exists()
    assert "Difference from BC, paired by seed" in (out / "results.md").read_text()

    # A rerun trains nothing: every cell file is left as it was.
    before = _cell_mtimes(out)
    run.run_grid("tiny", out, methods=["ilql"], data_progress=lambda *a: played.append(a))
    assert _cell_mtimes(out) == before and len(played) == 30  # the dataset was reused

    # A corrupted cell result and a run dir that died before its first checkpoint: both cells
    # are rerun with a warning; the others are kept.
    (out / "cells" / f"{TASK}__ilql__0.json").write_text('{"normalized_score": ')
    (out / "cells" / f"{TASK}__bc__0.json").unlink()
    for ckpt in (out / "runs" / f"{TASK}__bc__0" / "checkpoints").iterdir():
        if ckpt.is_dir():
            for f in ckpt.iterdir():
                f.unlink()
            ckpt.rmdir()
        else:
            ckpt.unlink()
    with pytest.warns(UserWarning, match="corrupted cell result"):
        again = run.run_grid("tiny", out, methods=["ilql"])
    after = _cell_mtimes(out)
    rerun = {k for k in after if after[k] != before.get(k)}
    assert rerun == {f"{TASK}__bc__0.json", f"{TASK}__ilql__0.json"}
    assert json.loads((out / "cells" / f"{TASK}__ilql__0.json").read_text())["config_hash"]
    assert len(again["cells"]) == 4


def test_changed_settings_rerun_the_cell(tmp_path, tiny_profile, monkeypatch):
    out = tmp_path / "grid"
    run.run_grid("tiny", out, methods=["bc"])
    run_dir = out / "runs" / f"{TASK}__bc__0"
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 2
    changed = presets.dataclasses.replace(tiny_profile, offline_steps={"*": 3})
    monkeypatch.setitem(presets.PROFILES, "tiny", changed)
    with pytest.warns(UserWarning, match="settings changed"), \
            pytest.warns(UserWarning, match="trained with other settings; moved to"):
        run.run_grid("tiny", out, methods=["bc"])
    # Trained anew with the new settings, not resumed from the old run's last checkpoint (which
    # would finish the old run); the old run is kept beside it.
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 3
    steps = [json.loads(x).get("step") for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 3
    old = run_dir.with_name(run_dir.name + ".replaced")
    assert json.loads((old / "config.json").read_text())["max_steps"] == 2


def test_a_cell_whose_run_holds_planted_pickles_is_refused_not_unpickled(tmp_path, tiny_profile,
                                                                          capsys):
    # Issue 13 item 1: bench run resumes a cell's run from its checkpoint; a state.pt replaced
    # by a malicious pickle fails that cell with a clear error (exit 2) and runs nothing.
    out = tmp_path / "grid"
    run.run_grid("tiny", out, methods=["bc"])
    (out / "cells" / f"{TASK}__bc__0.json").unlink()
    marker = tmp_path / "MARKER"
    plant_pickles(out / "runs" / f"{TASK}__bc__0", marker)
    with pytest.raises(SystemExit) as exit_info, pytest.warns(UserWarning, match="failed"):
        main(["bench", "run", "--profile", "tiny", "--out", str(out), "--methods", "bc"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "state.pt: refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_corrupted_results_json_is_rewritten(tmp_path, tiny_profile):
    out = tmp_path / "grid"
    out.mkdir()
    (out / "results.json").write_text("not json")
    results = run.run_grid("tiny", out, methods=["bc"])
    assert json.loads((out / "results.json").read_text())["cells"] == results["cells"]


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'huge'; valid: smoke, cpu, full"):
        run.run_grid("huge", tmp_path)
    with pytest.raises(ValueError, match=r"unknown task 'Mase-FO-v0' .*valid: Maze-FO-v0"):
        run.run_grid("smoke", tmp_path, tasks=["Mase-FO-v0"])
    with pytest.raises(ValueError, match="unknown method 'dqn'; valid: bc, filtered_bc"):
        run.run_grid("smoke", tmp_path, methods=["dqn"])
    with pytest.raises(ValueError, match="distinct non-negative"):
        run.run_grid("smoke", tmp_path, seeds=[3, 3])
    assert not (tmp_path / "cells").exists()


def test_seeds_replace_the_profiles():
    cells = run.plan(presets.get_profile("smoke"), [TASK], ["mc"], seeds=[5, 7])
    assert [c.key for c in cells] == [f"{TASK}__behaviour__0", f"{TASK}__optimal__0",
                                      f"{TASK}__bc__5", f"{TASK}__mc__5",
                                      f"{TASK}__bc__7", f"{TASK}__mc__7"]


def test_a_profile_can_train_fewer_methods_on_one_task():
    # cpu: the offline four on Maze-PO, every method on Maze-FO; smoke keeps its two tasks.
    cpu = presets.get_profile("cpu")
    methods = lambda task: {c.method for c in run.plan(cpu, [task], None, seeds=[0])}  # noqa: E731
    assert methods("Maze-PO-v0") == {"behaviour", "optimal", "bc", "filtered_bc", "mc", "ilql"}
    assert methods(TASK) == {"behaviour", "optimal", *presets.ALL_METHODS}
    assert presets.get_profile("smoke").methods("Maze-PO-v0") == ()


def test_machine_info_names_what_decides_cpu_kernels():
    import torch

    from lmrlgym.bench.run import machine_info

    info = machine_info()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["cpu_model"] and info["torch_threads"] == torch.get_num_threads()


def test_fields_added_later_leave_old_cells_done_at_their_defaults():
    # A cell hashed before `packing` existed has no such key; at the default the hash is the
    # same, so committed cells stay done, and turning the option on reruns the cell.
    config = dataclasses.asdict(BCConfig(task="Maze-FO-v0"))
    old = {k: v for k, v in config.items() if k not in run.LATER_FIELDS}
    assert run.config_hash(BCConfig(task="Maze-FO-v0")) == run.config_hash(old)
    assert run.config_hash(BCConfig(task="Maze-FO-v0", packing=True)) != run.config_hash(old)
    ilql = ILQLConfig(task="Maze-FO-v0")
    old = {k: v for k, v in dataclasses.asdict(ilql).items() if k not in run.LATER_FIELDS}
    assert run.config_hash(ilql) == run.config_hash(old)
    assert run.config_hash(dataclasses.replace(ilql, backup="turn")) != run.config_hash(old)
    aux = dataclasses.replace(ilql, value_model="separate", aux_lm_weight=0.1)
    assert run.config_hash(aux) != run.config_hash(dataclasses.replace(aux, aux_lm_weight=0.0))


def test_threads_apply_to_every_cell_and_are_recorded(tmp_path, tiny_profile, capsys):
    # --threads sets torch's intra-op threads before any cell runs; results.json records them.
    before = torch.get_num_threads()
    try:
        main(["bench", "run", "--profile", "tiny", "--out", str(tmp_path / "g"), "--methods", "bc",
              "--threads", "1"])
        assert json.loads((tmp_path / "g" / "results.json").read_text())["machine"]["torch_threads"] == 1
        with pytest.raises(SystemExit) as e:
            main(["bench", "run", "--profile", "tiny", "--threads", "0"])
        assert e.value.code == 2 and "--threads must be positive" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
