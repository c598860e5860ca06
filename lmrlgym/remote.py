"""The client of ``lmrlgym env-server``: a task on another process or machine as a Gymnasium env.

::

    env = lmrlgym.remote.make("http://127.0.0.1:8100", "Wordle-v0")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("crane")
    env.close()                                   # frees the server's session

The env keeps the API of ``lmrlgym.make``: text observations and actions, ``reset(seed=,
options=)``, ``info["turns"]`` as :class:`~lmrlgym.core.Turn` tuples, ``turns``, ``done``,
``deterministic``, ``spec_id`` and ``action_set()``. ``info`` holds the JSON part of the env's
info (:func:`lmrlgym.envserver.json_info`). Every failure the server reports or the network
causes raises :class:`RemoteEnvError` with the server's message or what went wrong (an
unreachable or killed server names its URL and how to start one).
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym

from lmrlgym.core import _SAMPLE_CHARSET, AnyText, EpisodeView, Turn


class RemoteEnvError(RuntimeError):
    """The env server refused a call, failed it, or could not be reached."""


class RemoteEnv(EpisodeView, gym.Env[str, str]):
    """One server session of ``task_id`` (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, url: str, task_id: str, timeout: float = 300.0, **env_kwargs: Any):
        try:
            import httpx
        except ImportError:
            raise ImportError('lmrlgym.remote needs httpx: pip install "lmrlgym[serve]"') from None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"env server url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10))
        self._session: str | None = None
        self.observation_space = AnyText(max_length=1_000_000, charset=_SAMPLE_CHARSET)
        self.action_space = AnyText(max_length=64, charset=_SAMPLE_CHARSET)
        self._turns: list[Turn] = []
        self._done = True
        self._action_set: tuple[str, ...] | None = None
        created = self._call("POST", "/sessions", {"task_id": task_id, "env_kwargs": env_kwargs})
        self._session = created["session_id"]
        self.spec_id = task_id
        self.deterministic = bool(created["deterministic"])
        low, high = created["return_range"]
        self.return_range = (-float("inf") if low is None else low,
                             float("inf") if high is None else high)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            # json.dumps escapes lone surrogates; httpx's own encoder would fail on them.
            response = self._client.request(
                method, path, content=None if body is None else json.dumps(body),
                headers={"content-type": "application/json"})
        except httpx.TransportError as e:
            raise RemoteEnvError(
                f"lost the lmrlgym env server at {self.url} ({type(e).__name__}: {e}); is "
                "`lmrlgym env-server` running there? The session is gone if it restarted"
            ) from None
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text[:500]}
        if response.status_code >= 400:
            message = payload.get("error", payload) if isinstance(payload, dict) else payload
            raise RemoteEnvError(f"env server {self.url}: HTTP {response.status_code}: {message}")
        return payload

    def _info(self, payload: dict[str, Any]) -> dict[str, Any]:
        info = payload["info"]
        info["turns"] = [Turn(text, bool(is_action), float(reward))
                         for text, is_action, reward in info["turns"]]
        self._turns = info["turns"]
        actions = payload.get("action_set")
        self._action_set = None if actions is None else tuple(actions)
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:  # the same seed stream as a local env: reseeded, or drawn
            seed = int(self.np_random.integers(2**31))
        payload = self._call("POST", f"/sessions/{self._session}/reset",
                             {"seed": seed, "options": options or {}})
        self._done = False
        return payload["observation"], self._info(payload)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        p = self._call("POST", f"/sessions/{self._session}/step", {"action": action})
        self._done = bool(p["terminated"] or p["truncated"])
        return (p["observation"], float(p["reward"]), bool(p["terminated"]), bool(p["truncated"]),
                self._info(p))

    def action_set(self) -> tuple[str, ...] | None:
        """The valid actions the server sent with the last answer (None: no small set)."""
        return self._action_set

    def close(self) -> None:
        """Close the server's session (idempotent; a server already gone is not an error)."""
        if self._session is not None:
            session, self._session = self._session, None
            try:
                self._call("DELETE", f"/sessions/{session}")
            except RemoteEnvError:
                pass  # expired, or the server is down: either way nothing is held any more
        self._client.close()


def make(url: str, task_id: str, **kwargs: Any) -> RemoteEnv:
    """Open a session of ``task_id`` on the env server at ``url``; ``kwargs`` are env keyword
    arguments as for ``lmrlgym.make`` (plus ``timeout``, seconds per call)."""
    return RemoteEnv(url, task_id, **kwargs)
