"""The data cache (lmrlgym/data/cache.py): a second prepare_data on the same dataset and settings
trains no tokenizer, renders no row and returns bit-identical rows; any change of data or
settings is a miss."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmrlgym.algos import bc, dataset, filtered_bc
from lmrlgym.data import cache as data_cache
from lmrlgym.models import tokenizer as tokenizer_module
from tests.algos.helpers import maze_dataset, micro_model


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return {"model": micro_model(root / "micro"),
            "data": maze_dataset(root / "maze", 30, "maze-mixture(p_solver=0.5)")}


@pytest.fixture
def data_dir(assets, tmp_path):
    """A private copy of the dataset (no cache yet)."""
    return shutil.copytree(assets["data"], tmp_path / "data")


@pytest.fixture
def builds(monkeypatch):
    """How many times a tokenizer was trained and rows were rendered (one ``TokenCache`` per
    rendering of a dataset)."""
    count = {"tokenizer": 0, "rows": 0}

    def spy(module, name, kind):
        real = getattr(module, name)

        def counted(*args, **kw):
            count[kind] += 1
            return real(*args, **kw)

        monkeypatch.setattr(module, name, counted)

    spy(tokenizer_module, "train_tokenizer", "tokenizer")
    spy(dataset, "TokenCache", "rows")
    return count


def cfg(data, module=bc, **kw):
    return module.preset("Maze-FO-v0", **{"data": str(data), "vocab_size": 300, **kw})


def prepare(config, tmp_path, name, **kw):
    run_dir = tmp_path / name
    run_dir.mkdir()
    return dataset.prepare_data(config, run_dir, **kw)


def assert_same(a, b):
    assert a.tokenizer.backend_tokenizer.to_str() == b.tokenizer.backend_tokenizer.to_str()
    assert a.metrics == b.metrics
    for rows_a, rows_b in ((a.train_rows, b.train_rows), (a.val_rows, b.val_rows)):
        assert len(rows_a) == len(rows_b) > 0
        for x, y in zip(rows_a, rows_b, strict=True):
            for f in dataclasses.fields(x):
                u, v = getattr(x, f.name), getattr(y, f.name)
                if isinstance(u, torch.Tensor):
                    assert u.dtype == v.dtype and torch.equal(u, v), f.name
                else:
                    assert type(u) is type(v) and u == v, f.name


def test_cached_rows_equal_uncached_ones_and_skip_the_work(data_dir, tmp_path, builds,
                                                           monkeypatch):
    config = cfg(data_dir)
    monkeypatch.setenv(data_cache.ENV_VAR, "0")
    plain = prepare(config, tmp_path, "off")
    assert builds == {"tokenizer": 1, "rows": 1}
    assert not (data_dir / data_cache.CACHE_DIR).exists()
    monkeypatch.delenv(data_cache.ENV_VAR)
    cold = prepare(config, tmp_path, "cold")
    warm = prepare(config, tmp_path, "warm")
    assert builds == {"tokenizer": 2, "rows": 2}  # the warm run built nothing
    assert_same(plain, cold)
    assert_same(plain, warm)
    entries = sorted(p.suffix for p in (data_dir / data_cache.CACHE_DIR).iterdir())
    assert entries == [".json", ".safetensors"]  # plain data only: nothing is unpickled
    # the run keeps its own copy of the cached tokenizer, as before
    assert (tmp_path / "warm" / "tokenizer" / "tokenizer.json").exists()


@pytest.mark.parametrize("change", [
    dict(max_context_tokens=64), dict(vocab_size=280), dict(val_fraction=0.2), dict(seed=3),
    dict(gamma=0.5), dict(discount_mode="token"), dict(truncation_is_terminal=True),
])
def test_any_setting_change_is_a_miss(change, data_dir, tmp_path, builds):
    render_kw = {k: change.pop(k) for k in ("gamma", "discount_mode", "truncation_is_terminal")
                 if k in change}
    prepare(cfg(data_dir), tmp_path, "first")
    changed = prepare(cfg(data_dir, **change), tmp_path, "changed", **render_kw)
    assert builds["rows"] == 2
    again = prepare(cfg(data_dir, **change), tmp_path, "again", **render_kw)
    assert builds["rows"] == 2
    assert_same(changed, again)


def test_new_data_is_a_miss_and_prunes_the_old_entries(data_dir, tmp_path, builds):
    prepare(cfg(data_dir), tmp_path, "first")
    old = sorted((data_dir / data_cache.CACHE_DIR).iterdir())
    shard = sorted(data_dir.glob("*.jsonl"))[0]
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[1:]))  # one episode fewer
    fresh = prepare(cfg(data_dir), tmp_path, "second")
    assert builds["rows"] == 2 and fresh.metrics["data/episodes"] == 29
    now = sorted((data_dir / data_cache.CACHE_DIR).iterdir())
    assert len(now) == 2 and not set(old) & set(now)


def test_a_damaged_entry_is_rebuilt(data_dir, tmp_path, builds):
    first = prepare(cfg(data_dir), tmp_path, "first")
    for entry in (data_dir / data_cache.CACHE_DIR).iterdir():
        entry.write_bytes(entry.read_bytes()[:100])
    rebuilt = prepare(cfg(data_dir), tmp_path, "rebuilt")
    assert builds == {"tokenizer": 2, "rows": 2}
    assert_same(first, rebuilt)
    assert len(load_file(next((data_dir / data_cache.CACHE_DIR).glob("*.safetensors")))) > 0


@pytest.mark.parametrize("field, value", [("input_ids", 10**6), ("input_ids", -1),
                                          ("rewards", None)])
def test_a_planted_entry_with_bad_values_is_rebuilt(field, value, data_dir, tmp_path, builds):
    # A dataset from elsewhere may come with a cache that fits the key but not the tokenizer.
    from safetensors import safe_open
    from safetensors.torch import save_file

    first = prepare(cfg(data_dir), tmp_path, "first")
    path = next((data_dir / data_cache.CACHE_DIR).glob("rows-*.safetensors"))
    with safe_open(path, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = f"train.{field}"
    if value is None:
        tensors[name] = tensors[name].double()
    else:
        tensors[name][3] = value
    save_file(tensors, str(path), metadata=meta)
    rebuilt = prepare(cfg(data_dir), tmp_path, "rebuilt")
    assert builds == {"tokenizer": 1, "rows": 2}
    assert_same(first, rebuilt)


def test_an_entry_under_another_key_is_not_used(data_dir, tmp_path, builds):
    prepare(cfg(data_dir), tmp_path, "first")
    tok = next((data_dir / data_cache.CACHE_DIR).glob("tokenizer-*.json"))
    entry = json.loads(tok.read_text())
    entry["key"] = entry["key"].replace('"vocab_size": 300', '"vocab_size": 301')
    tok.write_text(json.dumps(entry))
    prepare(cfg(data_dir), tmp_path, "second")
    assert builds == {"tokenizer": 2, "rows": 1}  # the same tokenizer again: its rows are found


def test_unwritable_dataset_dir_uses_the_home_cache(data_dir, tmp_path, builds, monkeypatch):
    (data_dir / data_cache.CACHE_DIR).write_text("not a directory")  # mkdir fails here
    monkeypatch.setenv("LMRLGYM_CACHE", str(tmp_path / "home"))
    prepare(cfg(data_dir), tmp_path, "first")
    prepare(cfg(data_dir), tmp_path, "second")
    assert builds == {"tokenizer": 1, "rows": 1}
    assert len(list((tmp_path / "home" / "data").glob("*/rows-*.safetensors"))) == 1


def test_filtered_bc_selections_are_keyed_and_closures_are_not_cached(data_dir, tmp_path, builds):
    config = cfg(data_dir, filtered_bc, keep="top_fraction", top_fraction=0.5)
    top = filtered_bc.Selection(config.data, config.keep, config.top_fraction, config.seed)
    success = dataclasses.replace(top, keep="success")
    a = prepare(config, tmp_path, "a", select=top)
    b = prepare(config, tmp_path, "b", select=success)
    assert builds["rows"] == 2 and a.metrics != b.metrics
    assert_same(a, prepare(config, tmp_path, "a2", select=top))
    assert builds["rows"] == 2
    prepare(config, tmp_path, "c", select=lambda eps: (eps[:3], {}))
    prepare(config, tmp_path, "d", select=lambda eps: (eps[:3], {}))
    assert builds["rows"] == 4


def test_training_is_bit_identical_with_and_without_the_cache(assets, data_dir, tmp_path,
                                                              monkeypatch):
    def run(name):
        config = cfg(data_dir, out=str(tmp_path / name), model=assets["model"], batch_size=8,
                     max_steps=3, tensorboard=False)
        return load_file(str(bc.train(config) / "model" / "model.safetensors"))

    monkeypatch.setenv(data_cache.ENV_VAR, "0")
    plain = run("off")
    monkeypatch.delenv(data_cache.ENV_VAR)
    run("cold")
    warm = run("warm")
    assert plain.keys() == warm.keys()
    assert all(torch.equal(plain[k], warm[k]) for k in plain)


def test_render_progress_is_reported_only_when_not_cached(data_dir, tmp_path):
    phases = []

    def progress(done, total, metrics, phase="train"):
        phases.append((phase, done, total))

    prepare(cfg(data_dir), tmp_path, "cold", progress=progress)
    assert phases[0][0] == "tokenizer" and phases[-1] == ("render", 30, 30)
    phases.clear()
    prepare(cfg(data_dir), tmp_path, "warm", progress=progress)
    assert [p for p, _, _ in phases] == ["tokenizer"]
