"""The env server and its client: identical transcripts, isolation, bounds and clear errors."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import lmrlgym
from lmrlgym import remote
from lmrlgym.checker import PROBE_ACTIONS
from lmrlgym.core import TextEnv
from lmrlgym.data.policies import default_policy, make_policy
from lmrlgym.envjson import MAX_ACTION_SET, action_set_of, json_info
from lmrlgym.envserver import ServerConfig, create_app, serve_in_thread
from lmrlgym.registry import register, registry
from tests.conftest import skip_if_missing

SPECS = [lmrlgym.spec(t) for t in lmrlgym.envs.TASK_IDS]
# One-node Stockfish opponents: deterministic and the fastest.
KWARGS = {"Chess-v0": {"opponent": "stockfish-nodes:1"},
          "Endgames-v0": {"opponent": "stockfish-nodes:1"}}
HOSTILE = "</script><img src=x onerror=alert(1)> \"'\ud800 é\n"

RELEASE, ENTERED = threading.Event(), threading.Event()


class BlockingEnv(TextEnv):
    """A toy env whose step waits until the test releases it: a stand-in for a slow engine."""

    def _reset(self, rng, options):
        return "ready\n", {}

    def _step(self, action):
        ENTERED.set()
        RELEASE.wait(timeout=120)
        return "released\n", 1.0, True, False, {}


if "BlockingToy-v0" not in registry:
    register("BlockingToy-v0", f"{__name__}:BlockingEnv")  # this module, as pytest imported it


@pytest.fixture(scope="module")
def url():
    with serve_in_thread(create_app(ServerConfig(max_sessions=16))) as base:
        yield base


def expected(local_out):
    """What the client should return for a local ``reset``/``step`` result."""
    *head, info = local_out
    sent = json.loads(json.dumps(json_info(info)))
    return (*head, {**sent, "turns": info["turns"]})


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_transcript_matches_local(url, spec):
    """Same seed and actions (the behaviour policy's, mixed with probe and hostile strings)
    give the same observations, rewards, flags and info locally and through the server."""
    skip_if_missing(spec)
    kwargs = KWARGS.get(spec.id, {})
    local, env = lmrlgym.make(spec.id, **kwargs), remote.make(url, spec.id, **kwargs)
    bot = make_policy(default_policy(spec.id), spec.id)
    rng = np.random.default_rng(3)
    try:
        assert env.deterministic == local.deterministic and env.spec_id == spec.id
        for seed in (5, 6):
            options = bot.reset_options(local, rng)
            got = env.reset(seed=seed, options=options)
            assert got == expected(local.reset(seed=seed, options=options))
            for t in range(500):  # every task truncates well before this
                obs, info = got[0], got[-1]
                action = (HOSTILE if t == 1 else PROBE_ACTIONS[t % len(PROBE_ACTIONS)]
                          if t % 4 == 3 else bot.act(local, obs, info, rng))
                want = local.step(action)
                got = env.step(action)
                assert got == expected(want)
                assert env.action_set() == (None if action_set_of(local) is None
                                            else tuple(action_set_of(local)))
                if want[2] or want[3]:
                    break
            assert env.done and env.turns == local.turns
        # Nothing the envs put in info is lost except values JSON cannot carry.
        assert set(want[-1]) - set(got[-1]) == set()
        with pytest.raises(remote.RemoteEnvError, match="HTTP 409.*reset"):
            env.step("after the end")
    finally:
        bot.close()
        local.close()
        env.close()


def test_reset_without_seed_follows_the_local_seed_stream(url):
    local, env = lmrlgym.make("Wordle-v0"), remote.make(url, "Wordle-v0")
    try:
        assert env.reset(seed=9)[1]["seed"] == local.reset(seed=9)[1]["seed"] == 9
        assert env.reset()[1]["seed"] == local.reset()[1]["seed"]
    finally:
        env.close()


def test_json_info_keeps_plain_values_and_drops_the_rest():
    info = {"turns": [], "n": np.int64(3), "x": np.float32(0.5), "nan": float("nan"),
            "obj": object(), "pos": (1, 2), "nested": {"a": [1, object()]}, "s": "é"}
    assert json_info(info) == {"turns": [], "n": 3, "x": 0.5, "pos": [1, 2], "s": "é"}


def test_action_set_sent_only_when_small():
    class Small:
        def action_set(self):
            return ("a\n", "b\n")

    class Big:
        def action_set(self):
            return tuple(str(i) for i in range(MAX_ACTION_SET + 1))

    assert action_set_of(Small()) == ["a\n", "b\n"]
    assert action_set_of(Big()) is None and action_set_of(object()) is None


def test_concurrent_sessions_are_isolated(url):
    """Eight sessions stepped from eight threads at once each match their own local replay."""
    actions = ["move up", "move left", "move down", "move right"] * 5

    def episode(make, seed):
        env = make("Maze-FO-v0")
        try:
            out = [env.reset(seed=seed)[0]]
            for a in actions:
                obs, reward, terminated, truncated, _ = env.step(a)
                out.append((obs, reward))
                if terminated or truncated:
                    break
            return out
        finally:
            env.close()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda s: episode(lambda t: remote.make(url, t), s), range(8)))
    assert got == [episode(lmrlgym.make, s) for s in range(8)]
    assert httpx.get(f"{url}/health").json()["sessions"] == 0


def test_a_slow_session_does_not_block_others(url):
    """While one session is stuck inside its env's step, another runs a whole episode."""
    RELEASE.clear()
    ENTERED.clear()
    slow, fast = remote.make(url, "BlockingToy-v0"), remote.make(url, "Maze-FO-v0")
    try:
        slow.reset(seed=0)
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(slow.step, "go")
            assert ENTERED.wait(timeout=60)
            fast.reset(seed=1)
            for _ in range(5):
                fast.step("move up")
            assert not stuck.done()  # the fast episode finished while the slow step still waits
            RELEASE.set()
            assert stuck.result(timeout=60)[1] == 1.0
    finally:
        RELEASE.set()
        slow.close()
        fast.close()


def test_session_bound():
    with serve_in_thread(create_app(ServerConfig(tasks=("Wordle-v0",), max_sessions=2))) as base:
        a, b = remote.make(base, "Wordle-v0"), remote.make(base, "Wordle-v0")
        with pytest.raises(remote.RemoteEnvError, match="HTTP 503.*2 sessions"):
            remote.make(base, "Wordle-v0")
        b.close()
        c = remote.make(base, "Wordle-v0")  # the freed slot is usable again
        with pytest.raises(remote.RemoteEnvError, match="not served here"):
            remote.make(base, "Maze-FO-v0")
        a.close()
        c.close()


def test_idle_sessions_expire():
    with serve_in_thread(create_app(ServerConfig(tasks=("Wordle-v0",), idle_timeout=0.05))) as base:
        env = remote.make(base, "Wordle-v0")
        time.sleep(0.5)  # ten idle timeouts
        with pytest.raises(remote.RemoteEnvError, match="HTTP 404.*expired after 0.05 s"):
            env.reset(seed=0)
        env.close()


def test_bad_requests_get_clear_errors(url):
    with pytest.raises(remote.RemoteEnvError, match="HTTP 400.*Did you mean 'Maze-FO-v0'"):
        remote.make(url, "Maze-F0-v0")
    with pytest.raises(remote.RemoteEnvError, match="HTTP 400.*cannot build Wordle-v0"):
        remote.make(url, "Wordle-v0", no_such_kwarg=1)
    env = remote.make(url, "Wordle-v0")
    try:
        r = httpx.post(f"{url}/sessions/{env._session}/reset", json={"seed": "zero"})
        assert r.status_code == 400 and "'seed' must be of type int" in r.json()["error"]
        r = httpx.post(f"{url}/sessions/{env._session}/step", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    finally:
        env.close()
    with pytest.raises(remote.RemoteEnvError, match="HTTP 404.*unknown or already closed"):
        env._client = httpx.Client(base_url=url)
        env._session = "nope"
        env.reset(seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_server_gives_a_clear_error(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(remote.RemoteEnvError, match=f"lost the lmrlgym env server at {base}"):
        remote.make(base, "Maze-FO-v0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmrlgym.cli", "env-server", "--port", str(port),
         "--tasks", "Maze-FO-v0"],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # up to a minute for the interpreter and imports
            try:
                httpx.get(f"{base}/health")
                break
            except httpx.TransportError:
                assert proc.poll() is None, "env-server exited"
                time.sleep(0.1)
        env = remote.make(base, "Maze-FO-v0")
        env.reset(seed=0)
        proc.kill()
        proc.wait(timeout=30)
        with pytest.raises(remote.RemoteEnvError, match="lost the lmrlgym env server.*running"):
            env.step("move up")
        env.close()  # closing against a dead server is not an error
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_cli_rejects_unknown_task():
    from lmrlgym.cli import main

    with pytest.raises(SystemExit) as e:
        main(["env-server", "--tasks", "Maze-F0-v0"])
    assert e.value.code == 2
