"""lmrlgym tasks through the real openenv-core package: its server app and its client."""

import json

import pytest
from websockets.sync.client import connect

import lmrlgym
from lmrlgym.envjson import json_info
from lmrlgym.envserver import serve_in_thread


@pytest.fixture(scope="module")
def oe():
    """The adapter module. Imported here, not at collection: openenv pulls in gradio (~6 s),
    which every xdist worker would otherwise pay before running any test."""
    pytest.importorskip("openenv", reason='needs openenv-core: pip install "lmrlgym[openenv]"')
    from lmrlgym import openenv_adapter

    return openenv_adapter


ACTIONS = {"Maze-FO-v0": ["move up", "move left", "</script>\"'", "move down"] * 3,
           "Wordle-v0": ["crane", "sloth", "bad", "pious", "dwarf", "fjord"],
           "CarDealer-v0": ["Hello! What are you looking for?", "This sedan is $20000.",
                            "I can do $18000."]}


@pytest.fixture(scope="module")
def url(oe):
    with serve_in_thread(oe.create_openenv_app(tuple(ACTIONS), max_sessions=2)) as base:
        yield base


@pytest.mark.parametrize("task", list(ACTIONS))
def test_openenv_client_matches_local_env(oe, url, task):
    local = lmrlgym.make(task)
    with oe.LmrlgymEnvClient(base_url=url).sync() as client:
        result = client.reset(task_id=task, seed=4)
        text, info = local.reset(seed=4)
        assert (result.observation.text, result.done) == (text, False)
        assert result.observation.info == json.loads(json.dumps(json_info(info)))
        for action in ACTIONS[task]:
            result = client.step(oe.LmrlgymAction(text=action))
            text, reward, terminated, truncated, info = local.step(action)
            obs = result.observation
            assert (obs.text, result.reward, obs.terminated, obs.truncated, result.done) == (
                text, reward, terminated, truncated, terminated or truncated)
            assert obs.info == json.loads(json.dumps(json_info(info)))
            if result.done:
                break
        state = client.state()
        assert (state.task_id, state.seed, state.step_count) == (task, 4, len(local.turns) // 2)


def test_sessions_are_bounded_and_unknown_tasks_refused(oe, url):
    with oe.LmrlgymEnvClient(base_url=url).sync() as a, oe.LmrlgymEnvClient(base_url=url).sync() as b:
        a.reset(task_id="Wordle-v0", seed=0)
        b.reset(task_id="Maze-FO-v0", seed=0)
        # A third connection is told why before OpenEnv closes it (its client only sees the close).
        with connect(url.replace("http", "ws") + "/ws") as ws:
            refused = json.loads(ws.recv(timeout=60))
        assert refused["type"] == "error" and refused["data"]["code"] == "CAPACITY_REACHED"
        with pytest.raises(RuntimeError, match="not served here"):
            a.reset(task_id="Chess-v0")
        with pytest.raises(RuntimeError, match="Did you mean 'Wordle-v0'"):
            a.reset(task_id="Wordle-v1")


def test_environment_directly(oe):
    env = oe.LmrlgymEnvironment(("Wordle-v0",))  # one task: reset needs no task_id
    obs = env.reset(seed=1)
    assert obs.task_id == "Wordle-v0" and not obs.done and obs.reward is None
    local = lmrlgym.make("Wordle-v0")
    local.reset(seed=1)
    step = env.step(oe.LmrlgymAction(text="crane"))
    assert (step.text, step.reward) == local.step("crane")[:2]
    with pytest.raises(ValueError, match="unknown reset arguments"):
        env.reset(colour="red")
    env.close()
