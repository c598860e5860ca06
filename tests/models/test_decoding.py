"""``Decoding``: its checks, and the one value that a run's config and a bench profile build."""

import dataclasses

import pytest

from lmrlgym.algos import TrainConfig
from lmrlgym.bench.presets import get_profile
from lmrlgym.models.decoding import Decoding


@pytest.mark.parametrize("fields,match", [
    ({"max_new_tokens": 0}, "max_new_tokens must be positive, got 0"),
    ({"temperature": 0.0}, r"temperature must be positive \(or use greedy\), got 0.0"),
    ({"top_k": 0}, "top_k must be positive, got 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
    ({"decode": "beam"}, "decode must be one of sample, rerank, constrained, got 'beam'"),
    ({"decode": "rerank", "rerank_score": "q"}, "rerank_score must be one of logprob, value"),
    ({"rerank_score": "value"}, "only applies to decode='rerank'"),
    ({"decode": "rerank", "top_p": 0.9}, "top_k/top_p do not apply to decode='rerank'"),
])
def test_bad_settings_are_refused_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        Decoding(**fields)


def test_greedy_needs_no_temperature_and_the_value_is_frozen():
    d = Decoding(greedy=True, temperature=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.seed = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="temperature"):  # a change is checked too
        dataclasses.replace(d, greedy=False)


def test_a_run_config_gives_its_evaluation_decoding():
    config = TrainConfig(temperature=0.5, greedy=True, max_new_tokens=5, decode="rerank",
                         rerank_score="value")
    assert config.decoding == Decoding(temperature=0.5, greedy=True, max_new_tokens=5,
                                       decode="rerank", rerank_score="value")


def test_a_bench_profile_samples_the_run_at_temperature_one():
    run = Decoding(temperature=0.3, greedy=True, max_new_tokens=5, decode="rerank",
                   rerank_score="value")
    for name in ("smoke", "cpu", "full"):  # the run's decode mode and token cap stay
        assert get_profile(name).decoding("Maze-FO-v0", run) == Decoding(
            max_new_tokens=5, decode="rerank", rerank_score="value")
