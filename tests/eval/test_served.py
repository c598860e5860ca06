"""Served-model evaluation: a BC run served by ``lmrlgym serve`` and evaluated through
``OpenAIPolicy`` gives the in-process results; the wire format; dead endpoints.

One module-scoped BC run (~15 s on a loaded 2-core CPU): a 1-layer GPT-2 cloned from the optimal
policy on a 3x3 room (a custom Maze-FO grid) so that greedy episodes are short and end at the
goal, and the returns differ per start cell.
"""

import re

import httpx
import pytest
import torch

from lmrlgym.algos import bc, load_policy
from lmrlgym.data.generate import generate_dataset
from lmrlgym.data.io import read_episodes
from lmrlgym.eval.evaluate import EPISODES_FILE, PARTIAL_FILE, SUMMARY_FILE, evaluate
from lmrlgym.eval.openai_policy import OpenAIPolicy, is_openai_spec, policy_from_spec
from lmrlgym.openai_api import EndpointError
from lmrlgym.serve import build_app, find_stop, serve_main
from tests.algos.helpers import run_policy
from tests.serving import Server as _Server
from tests.serving import free_port as _free_port

TASK = "Maze-FO-v0"
ROOM = {"grid": [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1],
                 [1, 1, 1, 1, 1]], "goal": [2, 2]}
N_EPISODES = 8  # one per start cell of the room
MODEL = "room-bc"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("served")
    generate_dataset(TASK, root / "data", 64, policy_spec="maze-optimal", env_kwargs=ROOM)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                               bos_token_id=0, eos_token_id=1)
                    ).save_pretrained(root / "init")
    return bc.train(bc.BCConfig(
        task=TASK, data=str(root / "data"), out=str(root / "run"), model=str(root / "init"),
        vocab_size=300, max_context_tokens=48, max_new_tokens=8, max_steps=60, batch_size=16,
        lr=1e-2, val_fraction=0.0, tensorboard=False, log_every=20, save_every=1000))


@pytest.fixture(scope="module")
def server(run_dir):
    # The run's own decoding (sampling at temperature 1); requests ask for greedy explicitly.
    srv = _Server(build_app(load_policy(run_dir), MODEL))
    yield srv
    srv.stop()


def _transcript(ep):
    return [(t.text, t.is_action, t.reward) for t in ep.turns]


def test_served_evaluation_equals_in_process_greedy(run_dir, server, tmp_path):
    local = evaluate(run_policy(run_dir, greedy=True), TASK, N_EPISODES, env_kwargs=ROOM)
    with policy_from_spec(f"openai:{server.base_url}/{MODEL}", temperature=0.0,
                          max_concurrency=4) as policy:
        served = evaluate(policy, TASK, N_EPISODES, env_kwargs=ROOM, out_dir=tmp_path)
        assert policy.stats.requests == sum(ep.n_actions for ep in served.episodes)
    assert [ep.ret for ep in served.episodes] == [ep.ret for ep in local.episodes]
    assert [_transcript(ep) for ep in served.episodes] == [_transcript(ep) for ep in local.episodes]
    # The run learned the room: every start reaches the goal, so the returns differ by start.
    assert all(ep.success for ep in local.episodes)
    assert {ep.ret for ep in local.episodes} == {0.0, -1.0}
    assert served.summary["policy"] == f"openai:{MODEL}"
    assert served.summary["decoding"]["greedy"] is True
    assert (tmp_path / EPISODES_FILE).exists() and (tmp_path / SUMMARY_FILE).exists()
    assert not (tmp_path / PARTIAL_FILE).exists()


# Prompts off the training distribution (the double-T maze, longer than the 48-token budget, no
# trailing newline): the served text must still be exactly the in-process action.
PROMPTS = [
    "The goal is at position 8, 6. Your current position is at position 1, 1 1. "
    "There are walls to your right, above you.\n",
    "The goal is at position 2, 2. Your current position is at position 3, 3. "
    "There are walls to your right, below you.\n" * 3,
    "move",
]


@pytest.mark.parametrize("mode", ["completions", "chat"])
def test_served_actions_equal_policy_act(run_dir, server, mode):
    expected = run_policy(run_dir, greedy=True).act(PROMPTS)
    with OpenAIPolicy(server.base_url, MODEL, mode=mode, temperature=0.0) as policy:
        assert policy.act(PROMPTS) == expected
    assert all(a.endswith("\n") and a.count("\n") == 1 for a in expected)


def test_completions_wire_format(run_dir, server):
    url = f"{server.base_url}/completions"
    body = {"model": MODEL, "prompt": PROMPTS[:2], "temperature": 0, "stop": ["\n"], "n": 2}
    r = httpx.post(url, json=body, timeout=30).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert r["choices"][0]["text"] == r["choices"][1]["text"]  # greedy copies agree
    assert all(c["finish_reason"] == "stop" and "\n" not in c["text"] for c in r["choices"])
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
    # Without a newline stop the completion is still one line, its newline kept.
    r = httpx.post(url, json={"model": MODEL, "prompt": PROMPTS[0], "temperature": 0,
                              "max_tokens": 12}, timeout=30).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == run_policy(run_dir, greedy=True).act(PROMPTS[:1])[0]
    # A stop string inside the line cuts there and is not returned.
    r = httpx.post(url, json={"model": MODEL, "prompt": PROMPTS[0], "temperature": 0,
                              "stop": "ve"}, timeout=30).json()
    assert r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["text"] == "mo"
    models = httpx.get(f"{server.base_url}/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [MODEL]


@pytest.mark.parametrize("path, body, status, message", [
    ("completions", {"model": "gpt-4", "prompt": "x"}, 404, "'gpt-4' is not served here"),
    ("completions", {"model": MODEL, "prompt": "x", "stream": True}, 400, "stream"),
    ("completions", {"model": MODEL, "prompt": "x", "max_tokens": 999}, 400, r"max_tokens must be in 1\.\.16"),
    ("completions", {"model": MODEL, "prompt": 3}, 400, "prompt"),
    ("completions", {"model": MODEL, "prompt": []}, 400, "prompt is an empty list"),
    ("completions", {"model": MODEL, "prompt": "x", "temperature": -1}, 400, r"temperature must be 0 \(greedy\) or in \[0.01, 100\], got -1"),
    ("completions", {"model": MODEL, "prompt": "x", "n": 0}, 400, "n must be >= 1"),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "system", "content": "x"}]}, 400,
     "need a user message"),
    ("chat/completions", {"model": MODEL}, 400, "messages"),
])
def test_bad_requests_are_clear_errors(server, path, body, status, message):
    r = httpx.post(f"{server.base_url}/{path}", json=body, timeout=30)
    assert r.status_code == status
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert re.search(message, r.json()["error"]["message"])


def test_dead_endpoint_bounded_retries_then_clear_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    with OpenAIPolicy(url, "m", timeout=0.5, max_retries=2, backoff=0.01) as policy:
        with pytest.raises(EndpointError, match=rf"{url}/completions failed after 3 attempts: "
                                                r"connection failed.*observation [01] of a batch of 2"):
            policy.act(["a\n", "b\n"])
        assert policy.stats.requests == 0


def test_endpoint_dying_mid_evaluation_keeps_finished_episodes(run_dir, tmp_path):
    dying = _Server(build_app(load_policy(run_dir), MODEL))

    class DiesAfterFirstBatch(OpenAIPolicy):
        def act(self, observations):
            actions = super().act(observations)
            dying.stop()  # the endpoint goes away after answering one batch
            return actions

    local = evaluate(run_policy(run_dir, greedy=True), TASK, N_EPISODES, env_kwargs=ROOM)
    policy = DiesAfterFirstBatch(dying.base_url, MODEL, temperature=0.0, timeout=1.0,
                                 max_retries=1, backoff=0.01)
    try:
        with pytest.raises(EndpointError, match=f"{dying.base_url}/completions failed after 2"):
            evaluate(policy, TASK, N_EPISODES, env_kwargs=ROOM, out_dir=tmp_path)
    finally:
        policy.close()
    kept, _ = read_episodes(tmp_path / PARTIAL_FILE)
    # The starts next to the goal finished on the first action; the others were cut off.
    assert 0 < len(kept) < N_EPISODES
    by_seed = {ep.seed: ep for ep in local.episodes}
    assert all(_transcript(ep) == _transcript(by_seed[ep.seed]) for ep in kept)
    assert all(ep.policy == f"openai:{MODEL}" for ep in kept)
    assert not (tmp_path / EPISODES_FILE).exists() and not (tmp_path / SUMMARY_FILE).exists()


def test_policy_specs_and_settings():
    p = policy_from_spec("openai:http://127.0.0.1:8000/v1/maze-bc", mode="chat", max_tokens=8)
    assert (p.base_url, p.model, p.url) == ("http://127.0.0.1:8000/v1", "maze-bc",
                                           "http://127.0.0.1:8000/v1/chat/completions")
    assert p.request_body("obs\n") == {"model": "maze-bc", "temperature": 1.0, "stop": ["\n"],
                                       "n": 1, "messages": [{"role": "user", "content": "obs\n"}],
                                       "max_tokens": 8}
    p.close()
    assert is_openai_spec("openai:http://h/v1/m") and not is_openai_spec("maze-optimal")
    for bad in ("openai:no-model", "openai:http://h:8000/", "vllm:http://h/v1/m"):
        with pytest.raises(ValueError, match="expected openai:<base_url>/<model>"):
            policy_from_spec(bad)
    with pytest.raises(ValueError, match="mode must be one of"):
        OpenAIPolicy("http://h/v1", "m", mode="responses")
    with pytest.raises(ValueError, match="max_concurrency must be positive"):
        OpenAIPolicy("http://h/v1", "m", max_concurrency=0)


def test_find_stop():
    assert find_stop("move up\nmove", ["\n"]) == 7
    assert find_stop("move up", ["up", "ve"]) == 2
    assert find_stop("move up", ["", "x"]) == -1


def test_serve_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory .*nope.* does not exist"):
        serve_main(str(tmp_path / "nope"))


def test_bench_served_counts_every_action(server):
    from lmrlgym.bench.served_speed import bench_served, format_rows

    rows = bench_served(f"openai:{server.base_url}/{MODEL}", TASK, concurrency_levels=(1, 3),
                        episodes=4, env_kwargs=ROOM)
    assert [r["concurrency"] for r in rows] == [1, 3]
    for r in rows:
        assert r["requests"] == r["attempts"] == r["actions"] > 0
        assert r["requests_per_s"] > 0 and r["actions_per_s"] > 0
    assert rows[0]["mean_return"] == rows[1]["mean_return"]  # greedy: same episodes
    assert format_rows(rows).splitlines()[0].split()[:2] == ["concurrency", "requests/s"]
    with pytest.raises(ValueError, match=r"episodes \(2\) must be at least the largest"):
        bench_served(f"openai:{server.base_url}/{MODEL}", TASK, (1, 3), episodes=2)


def test_generation_failure_is_a_retried_500(run_dir):
    policy = load_policy(run_dir)

    def broken(prompts):
        raise RuntimeError("CUDA out of memory")

    policy.generate = broken
    srv = _Server(build_app(policy, MODEL))
    try:
        with OpenAIPolicy(srv.base_url, MODEL, max_retries=1, backoff=0.01) as client:
            with pytest.raises(EndpointError, match=r"failed after 2 attempts: HTTP 500.*"
                                                    r"generation failed: RuntimeError: CUDA out"):
                client.act(["x\n"])
    finally:
        srv.stop()
