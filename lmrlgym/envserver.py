"""``lmrlgym env-server``: registered tasks as HTTP sessions, for trainers in other processes.

A trainer that is not written against this package (TRL, verl, OpenRLHF, a notebook on another
machine) reaches our tasks through this server and the client in :mod:`lmrlgym.remote`, which
gives back the Gymnasium API of ``lmrlgym.make``. Endpoints (JSON bodies, JSON answers):

- ``GET /health``: ``status``, open ``sessions``, ``max_sessions``.
- ``GET /tasks``: the served task ids with ``description``, ``max_turns``, ``deterministic``.
- ``POST /sessions`` ``{"task_id", "env_kwargs"}`` -> ``session_id`` and the env's facts.
- ``POST /sessions/{id}/reset`` ``{"seed", "options"}`` -> ``observation``, ``info``.
- ``POST /sessions/{id}/step`` ``{"action"}`` -> ``observation``, ``reward``, ``terminated``,
  ``truncated``, ``info``.
- ``DELETE /sessions/{id}`` closes the session (and its engine process, if any).

``info`` is the JSON part of the env's info (:func:`json_info`): ``turns`` as ``[text,
is_action, reward]`` lists, numpy scalars as numbers, and any value JSON cannot carry (an
object, a non-finite float) left out. Reset and step answers also carry ``action_set``: the
env's current set of valid actions when it has one of at most :data:`lmrlgym.envjson.MAX_ACTION_SET` items,
else ``null``.

Every env call (construction, reset, step, close) runs on a worker thread, one call at a time
per session, so a session waiting on Stockfish or TextWorld never holds up another session or
the event loop. Sessions are bounded in number (``max_sessions``; creating one more is refused
with HTTP 503) and in idle time (``idle_timeout`` seconds without a call closes a session; a
later call to it gets HTTP 404 saying that it expired). Bodies are parsed with the standard
``json`` module, so any Python string, lone surrogates included, travels escaped and intact.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from lmrlgym.core import TextEnv
from lmrlgym.envjson import action_set_of, json_info, served_tasks
from lmrlgym.registry import DependencyNotInstalled, registry, unknown_id_message

#: How many closed-by-expiry session ids are remembered for a clear 404.
_EXPIRED_MEMORY = 4096


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What the server serves and how much it holds at once."""

    tasks: tuple[str, ...] = ()  # empty: every registered task whose dependencies are installed
    max_sessions: int = 64
    idle_timeout: float = 600.0  # seconds without a call before a session is closed

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.idle_timeout <= 0:
            raise ValueError(f"need max_sessions >= 1 and idle_timeout > 0, got "
                             f"{self.max_sessions} and {self.idle_timeout}")


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Session:
    id: str
    task_id: str
    env: TextEnv
    last_used: float
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class Sessions:
    """The open sessions: creation within the bound, lookup, closing, idle expiry."""

    def __init__(self, config: ServerConfig, tasks: tuple[str, ...]):
        self.config = config
        self.tasks = tasks
        self.open: dict[str, Session] = {}
        self.pending = 0
        self.expired: collections.OrderedDict[str, None] = collections.OrderedDict()
        # One thread per possible session: a session runs one call at a time (its lock), so a
        # slow env never waits for a thread held by another.
        self.pool = ThreadPoolExecutor(config.max_sessions, thread_name_prefix="lmrlgym-env")

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def create(self, task_id: str, env_kwargs: dict[str, Any]) -> Session:
        if task_id not in self.tasks:
            hint = unknown_id_message(task_id) if task_id not in registry else (
                f"task {task_id!r} is not served here.")
            raise ApiError(400, f"{hint} Served: {', '.join(self.tasks)}")
        await self.reap()
        if len(self.open) + self.pending >= self.config.max_sessions:
            raise ApiError(503, f"the server already holds {self.config.max_sessions} sessions "
                           f"(its --max-sessions); close one, or wait for an idle one to expire "
                           f"after {self.config.idle_timeout:g} s")
        self.pending += 1  # counted while the (possibly slow) env is built, so the bound holds
        try:
            env = await self.call(lambda: registry[task_id].make(**env_kwargs))
        except (TypeError, ValueError, DependencyNotInstalled) as e:
            raise ApiError(400, f"cannot build {task_id} with env_kwargs {env_kwargs}: {e}") \
                from None
        finally:
            self.pending -= 1
        session = Session(uuid.uuid4().hex, task_id, env, time.monotonic())
        self.open[session.id] = session
        return session

    def get(self, sid: str) -> Session:
        session = self.open.get(sid)
        if session is None:
            why = (f"expired after {self.config.idle_timeout:g} s without a call"
                   if sid in self.expired else "unknown or already closed")
            raise ApiError(404, f"session {sid} {why}; create a new one")
        return session

    async def close(self, sid: str) -> None:
        session = self.get(sid)
        async with session.lock:
            if self.open.pop(sid, None) is not None:
                await self.call(session.env.close)

    async def reap(self) -> None:
        """Close sessions idle for longer than ``idle_timeout`` (never one mid-call)."""
        now = time.monotonic()
        for sid, s in list(self.open.items()):
            if not s.lock.locked() and now - s.last_used > self.config.idle_timeout:
                self.open.pop(sid, None)
                self.expired[sid] = None
                while len(self.expired) > _EXPIRED_MEMORY:
                    self.expired.popitem(last=False)
                await self.call(s.env.close)

    async def close_all(self) -> None:
        for sid in list(self.open):
            await self.call(self.open.pop(sid).env.close)
        self.pool.shutdown(wait=False)


def _field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """``body[name]`` checked to be a ``kind`` (JSON null or absent: ``default``)."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, f"field {name!r} must be of type {kind.__name__}, got {type(value).__name__}")
    return value


def create_app(config: ServerConfig | None = None) -> Any:
    """The FastAPI app (``uvicorn.run(create_app(...))`` or :func:`serve_in_thread`)."""
    config = config or ServerConfig()
    sessions = Sessions(config, served_tasks(config.tasks))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        async def reaper() -> None:
            while True:
                await asyncio.sleep(min(config.idle_timeout / 4, 30.0))
                await sessions.reap()

        task = asyncio.create_task(reaper())
        try:
            yield
        finally:
            task.cancel()
            await sessions.close_all()

    app = FastAPI(title="lmrlgym env-server", lifespan=lifespan)
    app.state.sessions = sessions

    def answer(payload: Any, status: int = 200) -> Response:
        # ensure_ascii: lone surrogates in env text travel as \\udXXX escapes, not invalid UTF-8.
        return Response(json.dumps(payload), status_code=status, media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return answer({"error": str(e)}, e.status)

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    async def run(session: Session, fn: Any, *args: Any) -> Any:
        async with session.lock:
            if sessions.open.get(session.id) is not session:  # closed while we waited
                sessions.get(session.id)
            try:
                return await sessions.call(fn, *args)
            except RuntimeError as e:  # e.g. step() after the episode ended
                raise ApiError(409, str(e)) from None
            except (TypeError, ValueError, KeyError) as e:  # bad reset options
                raise ApiError(400, f"{type(e).__name__}: {e}") from None
            except Exception as e:  # an env or engine failure: say what, not just "500"
                raise ApiError(500, f"{session.task_id} failed: {type(e).__name__}: {e}") from None
            finally:
                session.last_used = time.monotonic()

    @app.get("/health")
    async def health() -> Response:
        return answer({"status": "ok", "sessions": len(sessions.open),
                       "max_sessions": config.max_sessions})

    @app.get("/tasks")
    async def tasks() -> Response:
        return answer([{"id": t, "description": registry[t].description,
                        "max_turns": registry[t].max_turns,
                        "deterministic": not registry[t].nondeterministic}
                       for t in sessions.tasks])

    @app.post("/sessions")
    async def create(request: Request) -> Response:
        body = await body_of(request)
        task_id = _field(body, "task_id", str, None)
        if task_id is None:
            raise ApiError(400, "field 'task_id' is required")
        env_kwargs = _field(body, "env_kwargs", dict, {})
        s = await sessions.create(task_id, env_kwargs)
        low, high = s.env.return_range
        return answer({"session_id": s.id, "task_id": task_id, "deterministic": s.env.deterministic,
                       "return_range": [low if math.isfinite(low) else None,
                                        high if math.isfinite(high) else None],
                       "max_turns": registry[task_id].max_turns}, 201)

    @app.post("/sessions/{sid}/reset")
    async def reset(sid: str, request: Request) -> Response:
        body = await body_of(request)
        seed = _field(body, "seed", int, None)
        options = _field(body, "options", dict, None)
        s = sessions.get(sid)

        def do() -> dict[str, Any]:
            obs, info = s.env.reset(seed=seed, options=options)
            return {"observation": obs, "info": json_info(info), "action_set": action_set_of(s.env)}

        return answer(await run(s, do))

    @app.post("/sessions/{sid}/step")
    async def step(sid: str, request: Request) -> Response:
        body = await body_of(request)
        action = _field(body, "action", str, None)
        if action is None:
            raise ApiError(400, "field 'action' (a string) is required")
        s = sessions.get(sid)

        def do() -> dict[str, Any]:
            obs, reward, terminated, truncated, info = s.env.step(action)
            return {"observation": obs, "reward": reward, "terminated": terminated,
                    "truncated": truncated, "info": json_info(info),
                    "action_set": action_set_of(s.env)}

        return answer(await run(s, do))

    @app.delete("/sessions/{sid}")
    async def close(sid: str) -> Response:
        await sessions.close(sid)
        return answer({"closed": sid})

    return app


@contextlib.contextmanager
def serve_in_thread(app: Any = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` (default: ``create_app()``) on a background thread for the ``with`` block;
    yields its base URL. ``port=0`` picks a free port (tests, notebooks, a trainer that owns its
    envs)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app or create_app(), host=host, port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="lmrlgym-env-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"env server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def server_main(
    port: int = 8100,
    host: str = "127.0.0.1",
    tasks: tuple[str, ...] = (),
    max_sessions: int = 64,
    idle_timeout: float = 600.0,
    openenv: bool = False,
) -> None:
    """Serve registered tasks over HTTP sessions for trainers in other processes
    (client: `lmrlgym.remote.make(url, task_id)`).

    Args:
        port: TCP port.
        host: Interface to bind; 127.0.0.1 keeps it local, 0.0.0.0 exposes it.
        tasks: Task ids to serve (default: every task whose dependencies are installed).
        max_sessions: Most sessions open at once; creating one more is refused (HTTP 503).
        idle_timeout: Seconds without a call after which a session is closed.
        openenv: Speak OpenEnv's protocol instead (its WebSocket sessions, /reset, /step,
            /schema; client: lmrlgym.openenv_adapter.LmrlgymEnvClient); needs lmrlgym[openenv].
    """
    import uvicorn

    config = ServerConfig(tuple(tasks), max_sessions, idle_timeout)
    if openenv:
        try:
            from lmrlgym.openenv_adapter import create_openenv_app
        except ImportError as e:
            raise ImportError(f'--openenv needs openenv-core ({e}): pip install '
                              '"lmrlgym[openenv]"') from None
        app = create_openenv_app(config.tasks, max_sessions, idle_timeout)
    else:
        app = create_app(config)
    print(f"lmrlgym env-server ({'OpenEnv' if openenv else 'lmrlgym'} protocol) on "
          f"http://{host}:{port} serving {', '.join(served_tasks(config.tasks))}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
