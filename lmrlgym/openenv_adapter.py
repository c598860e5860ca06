"""lmrlgym tasks through OpenEnv (``pip install "lmrlgym[openenv]"``, the ``openenv-core`` package).

OpenEnv is the environment protocol that TRL and other trainers read: an ``Environment``
(``reset``/``step``/``state`` returning pydantic ``Observation`` objects) served by OpenEnv's own
FastAPI app, and an ``EnvClient`` that keeps one server-side session per WebSocket connection.
This module fills in OpenEnv's classes for our tasks; the serving and the protocol are OpenEnv's.

- :class:`LmrlgymEnvironment`: the served tasks. The task is chosen at reset, so one server
  serves them all: ``reset(task_id=..., seed=..., options=..., env_kwargs=...)`` (the task and
  kwargs of the previous episode are kept when omitted; a server of one task needs none).
- :class:`LmrlgymAction` (``text``) and :class:`LmrlgymObservation`: ``text`` (the policy's
  window, as from ``lmrlgym.make``), ``reward``, ``done``, ``terminated``, ``truncated``,
  ``info`` (the JSON part, :func:`lmrlgym.envserver.json_info`) and ``action_set``.
- :func:`create_openenv_app`: OpenEnv's app, with ``max_sessions`` concurrent sessions and an
  idle timeout (``lmrlgym env-server --openenv`` runs it).
- :class:`LmrlgymEnvClient`: OpenEnv's client for it::

      with LmrlgymEnvClient(base_url="http://127.0.0.1:8100").sync() as client:
          result = client.reset(task_id="Wordle-v0", seed=0)
          result = client.step(LmrlgymAction(text="crane"))
          result.observation.text, result.reward, result.done
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from openenv.core import EnvClient
from openenv.core.client_types import StepResult
from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import (
    Action,
    ConcurrencyConfig,
    EnvironmentMetadata,
    Observation,
    State,
)
from pydantic import Field

from lmrlgym.core import TextEnv
from lmrlgym.envjson import action_set_of, json_info, served_tasks
from lmrlgym.registry import registry, unknown_id_message


class LmrlgymAction(Action):
    """One agent utterance (any string; the env normalises it to one line)."""

    text: str = Field(..., description="The agent's action text")


class LmrlgymObservation(Observation):
    """What the policy sees after a reset or step (``reward`` and ``done`` are OpenEnv's)."""

    task_id: str = Field(default="", description="Registered lmrlgym task id")
    text: str = Field(default="", description="The policy's observation window")
    terminated: bool = Field(default=False, description="The episode reached a terminal state")
    truncated: bool = Field(default=False, description="The episode hit its turn limit")
    info: dict[str, Any] = Field(default_factory=dict, description="JSON part of the env's info")
    action_set: list[str] | None = Field(default=None, description="Valid actions, if few")


class LmrlgymState(State):
    """OpenEnv's state (episode id, step count) plus the task and the episode seed."""

    task_id: str | None = Field(default=None, description="Registered lmrlgym task id")
    seed: int | None = Field(default=None, description="The episode's seed")


class LmrlgymEnvironment(Environment[LmrlgymAction, LmrlgymObservation, LmrlgymState]):
    """A registered lmrlgym task as an OpenEnv ``Environment`` (one per server session)."""

    # Each instance owns its own TextEnv (and engine process): sessions share nothing.
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, tasks: Sequence[str] = (), **env_kwargs: Any):
        super().__init__()
        self._tasks = served_tasks(tasks)
        task_id = self._tasks[0] if len(self._tasks) == 1 else None
        self._task_id = task_id
        self._env_kwargs = env_kwargs
        self._env: TextEnv | None = None
        self._built: tuple[str, dict[str, Any]] | None = None
        self._state = LmrlgymState(task_id=task_id)

    def reset(self, seed: int | None = None, episode_id: str | None = None,
              task_id: str | None = None, options: dict[str, Any] | None = None,
              env_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> LmrlgymObservation:
        if kwargs:
            raise ValueError(f"unknown reset arguments {sorted(kwargs)}; expected seed, "
                             "episode_id, task_id, options, env_kwargs")
        if task_id is not None and task_id not in self._tasks:
            hint = unknown_id_message(task_id) if task_id not in registry else (
                f"task {task_id!r} is not served here.")
            raise ValueError(f"{hint} Served: {', '.join(self._tasks)}")
        self._task_id = task_id or self._task_id
        if self._task_id is None:
            raise ValueError("no task: pass task_id to reset (e.g. task_id='Wordle-v0')")
        self._env_kwargs = self._env_kwargs if env_kwargs is None else env_kwargs
        wanted = (self._task_id, self._env_kwargs)
        if self._env is None or self._built != wanted:
            self.close()
            self._env = registry[self._task_id].make(**self._env_kwargs)
            self._built = wanted
        text, info = self._env.reset(seed=seed, options=options)
        self._state = LmrlgymState(episode_id=episode_id or uuid.uuid4().hex, step_count=0,
                                   task_id=self._task_id, seed=info["seed"])
        return self._observation(text, None, False, False, info)

    def step(self, action: LmrlgymAction, timeout_s: float | None = None,
             **kwargs: Any) -> LmrlgymObservation:
        if self._env is None:
            raise RuntimeError("step() before reset(): reset with a task_id first")
        text, reward, terminated, truncated, info = self._env.step(action.text)
        self._state.step_count += 1
        return self._observation(text, reward, terminated, truncated, info)

    def _observation(self, text: str, reward: float | None, terminated: bool, truncated: bool,
                     info: dict[str, Any]) -> LmrlgymObservation:
        assert self._env is not None and self._task_id is not None
        return LmrlgymObservation(
            task_id=self._task_id, text=text, reward=reward, done=terminated or truncated,
            terminated=terminated, truncated=truncated, info=json_info(info),
            action_set=action_set_of(self._env))

    @property
    def state(self) -> LmrlgymState:
        return self._state

    def get_metadata(self) -> EnvironmentMetadata:
        from lmrlgym import __version__

        described = registry[self._task_id].description if self._task_id else (
            "any registered lmrlgym task, chosen by reset(task_id=...)")
        return EnvironmentMetadata(name=f"lmrlgym/{self._task_id or 'any'}",
                                   description=described, version=__version__)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def create_openenv_app(tasks: Sequence[str] = (), max_sessions: int = 64,
                       idle_timeout: float | None = 600.0, **env_kwargs: Any) -> Any:
    """OpenEnv's FastAPI app serving ``tasks`` (default: every installed task; see
    :func:`lmrlgym.envserver.served_tasks`). Env calls run on OpenEnv's per-session threads."""
    tasks = served_tasks(tasks)  # bad ids fail here, before the server starts

    def factory() -> LmrlgymEnvironment:
        return LmrlgymEnvironment(tasks, **env_kwargs)

    return create_app(factory, LmrlgymAction, LmrlgymObservation, env_name="lmrlgym",
                      concurrency_config=ConcurrencyConfig(max_concurrent_envs=max_sessions,
                                                           session_timeout=idle_timeout))


class LmrlgymEnvClient(EnvClient[LmrlgymAction, LmrlgymObservation, LmrlgymState]):
    """OpenEnv's WebSocket client for :func:`create_openenv_app` (``.sync()`` for blocking use)."""

    def _step_payload(self, action: LmrlgymAction) -> dict[str, Any]:
        return {"text": action.text}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[LmrlgymObservation]:
        observation = LmrlgymObservation(**payload.get("observation", {}),
                                         reward=payload.get("reward"),
                                         done=payload.get("done", False))
        return StepResult(observation=observation, reward=observation.reward,
                          done=observation.done)

    def _parse_state(self, payload: dict[str, Any]) -> LmrlgymState:
        return LmrlgymState(**payload)
