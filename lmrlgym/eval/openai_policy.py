"""``OpenAIPolicy``: a model behind an OpenAI-compatible HTTP endpoint as a text policy.

Any server that speaks the OpenAI API (vLLM, SGLang, llama.cpp, TGI, a hosted API, or
``lmrlgym serve RUN_DIR``) can then be evaluated on every task with the in-process code path::

    policy = policy_from_spec("openai:http://127.0.0.1:8000/v1/my-model", temperature=0.0)
    evaluate(policy, "Maze-FO-v0", n_episodes=32, seed=0, out_dir="evals/maze")

``act(observations)`` sends one request per observation (the observation text is the prompt,
so the served model sees exactly what an in-process ``LMPolicy.act`` would tokenize), runs them
concurrently on at most ``max_concurrency`` threads over one pooled connection, and asks the
server to stop at the first newline: an action is one line (docs/algorithms.md §4.1). The action is
the reply's first line plus ``"\\n"``, whether the server stopped there, hit ``max_tokens``
(the in-process policy then appends a newline too) or ignored ``stop``.

Failures: every request has a timeout and bounded retries with exponential backoff (shared with
the dialogue partners, :mod:`lmrlgym.openai_api`); when one request exhausts them, the
observations not yet sent are cancelled and :class:`~lmrlgym.openai_api.EndpointError` names
the URL, the attempts and the last failure. ``evaluate`` writes each finished episode before
that error propagates, so an endpoint that dies mid-run loses only the unfinished episodes.

``mode="chat"`` sends the observation as the single user message to ``/chat/completions`` (for
servers that only expose chat, or instruction-tuned models behind a chat template);
``mode="completions"`` (the default) sends it as the raw prompt to ``/completions``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Literal

from lmrlgym.openai_api import (
    HTTPX,
    EndpointError,
    auth_headers,
    check_base_url,
    check_retry_settings,
    parse_openai_spec,
    post_with_retries,
)
from lmrlgym.registry import require

Mode = Literal["completions", "chat"]
MODES = ("completions", "chat")
POLICY_SPEC = "openai:<base_url>/<model>"


@dataclasses.dataclass
class RequestStats:
    """Counters over the policy's lifetime, for throughput benchmarks (``bench_served``)."""

    requests: int = 0  # successful requests (one per action)
    attempts: int = 0  # HTTP attempts, retries included
    seconds_in_act: float = 0.0  # wall time spent inside act()
    latencies: list[float] = dataclasses.field(default_factory=list)  # per successful request


class OpenAIPolicy:
    """A served model as a policy (the ``lmrlgym.core.Policy`` protocol).

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the request's ``model`` field (the served model's name).
        api_key_env: environment variable holding the key; unset -> no ``Authorization`` header.
        mode: ``"completions"`` (raw prompt) or ``"chat"`` (observation as one user message).
        max_concurrency: requests in flight at once (and pooled connections).
        timeout: seconds per HTTP attempt.
        max_retries: retries after the first attempt (connection errors, timeouts, 429/5xx,
            malformed bodies); other HTTP errors fail at once.
        temperature: sent as is; 0 asks for greedy decoding (vLLM and ``lmrlgym serve``).
        max_tokens: per-action token cap; ``None`` leaves it to the server (``lmrlgym serve``
            then uses the run's ``max_new_tokens``; other servers have their own defaults,
            e.g. 16 for vLLM's completions, so set it for them).
        top_p: sent when given.
        backoff: seconds before the first retry, doubled for each further one.
        name: the policy name recorded with evaluations (default ``openai:<model>``).
    """

    deterministic = False  # remote decoding is not bit-exact across servers, even when greedy

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        mode: Mode = "completions",
        max_concurrency: int = 8,
        timeout: float = 30.0,
        max_retries: int = 3,
        temperature: float = 1.0,
        max_tokens: int | None = None,
        top_p: float | None = None,
        backoff: float = 0.5,
        name: str | None = None,
    ):
        require(f"the served-model policy openai:{base_url}/{model}", HTTPX)
        import httpx

        check_base_url(base_url)
        check_retry_settings(timeout, max_retries, backoff)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be positive, got {max_concurrency}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.mode: Mode = mode
        self.url = f"{self.base_url}/{'chat/completions' if mode == 'chat' else 'completions'}"
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.top_p = top_p
        self.backoff = float(backoff)
        self.name = name or f"openai:{model}"
        self.stats = RequestStats()
        self._lock = threading.Lock()
        limits = httpx.Limits(max_connections=self.max_concurrency,
                              max_keepalive_connections=self.max_concurrency)
        self._client = httpx.Client(limits=limits)
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="openai-policy")

    @property
    def decoding(self) -> dict[str, object]:
        """The decoding settings, recorded with every evaluation."""
        return {"endpoint": self.url, "model": self.model, "mode": self.mode,
                "greedy": self.temperature == 0.0, "temperature": self.temperature,
                "top_p": self.top_p, "max_new_tokens": self.max_tokens}

    def request_body(self, observation: str) -> dict[str, Any]:
        """The JSON body sent for one observation."""
        body: dict[str, Any] = {"model": self.model, "temperature": self.temperature,
                                "stop": ["\n"], "n": 1}
        if self.mode == "chat":
            body["messages"] = [{"role": "user", "content": observation}]
        else:
            body["prompt"] = observation
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.top_p is not None:
            body["top_p"] = self.top_p
        return body

    def act(self, observations: list[str]) -> list[str]:
        """One action per observation, each a single line ending in ``"\\n"``.

        Raises :class:`EndpointError` (naming the URL) when a request exhausts its retries.
        """
        if not observations:
            return []
        for i, obs in enumerate(observations):
            if not isinstance(obs, str):
                raise TypeError(f"observations[{i}] must be str, got {type(obs).__name__}")
        start = time.perf_counter()
        futures = [self._pool.submit(self._one, obs) for obs in observations]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        with self._lock:
            self.stats.seconds_in_act += time.perf_counter() - start
        for i, f in enumerate(futures):
            if f in done and f.exception() is not None:
                for p in pending:
                    p.cancel()  # requests not yet sent; those in flight end by their timeout
                raise EndpointError(
                    f"{f.exception()} (observation {i} of a batch of {len(observations)})"
                ) from f.exception()
        return [f.result() for f in futures]

    def _one(self, observation: str) -> str:
        start = time.perf_counter()
        text, attempts = post_with_retries(
            self.url, self.request_body(observation), self._parse,
            headers=auth_headers(self.api_key_env), timeout=self.timeout,
            max_retries=self.max_retries, backoff=self.backoff, client=self._client,
        )
        with self._lock:
            self.stats.requests += 1
            self.stats.attempts += attempts
            self.stats.latencies.append(time.perf_counter() - start)
        return text.split("\n", 1)[0] + "\n"

    def _parse(self, payload: Any) -> str:
        choice = payload["choices"][0]
        text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
        if not isinstance(text, str):
            raise TypeError(f"the reply text is {type(text).__name__}, not str")
        return text

    def reset_stats(self) -> None:
        """Zero the request counters (e.g. after a warm-up)."""
        with self._lock:
            self.stats = RequestStats()

    def close(self) -> None:
        """Stop the worker threads and close the pooled connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> OpenAIPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_openai_spec(spec: str) -> bool:
    """Whether a ``--policy`` value names a served model (``openai:...``)."""
    return spec.startswith("openai:")


def policy_from_spec(spec: str, **kwargs: Any) -> OpenAIPolicy:
    """``"openai:<base_url>/<model>"`` -> :class:`OpenAIPolicy`; ``kwargs`` go to its constructor.

    E.g. ``openai:http://127.0.0.1:8000/v1/maze-bc`` -> base URL ``http://127.0.0.1:8000/v1``,
    model ``maze-bc``. Raises ``ValueError`` naming the expected form for anything else.
    """
    base_url, model = parse_openai_spec(spec, "policy spec")
    return OpenAIPolicy(base_url, model, **kwargs)
