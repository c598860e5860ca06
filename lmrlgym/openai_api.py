"""The client side of the OpenAI-compatible HTTP API, shared by every caller in the package.

Two callers talk to ``/v1/chat/completions`` or ``/v1/completions`` endpoints (vLLM, SGLang,
llama.cpp, TGI, hosted APIs, or our own ``lmrlgym serve``): the LM-backed dialogue partner
(:class:`lmrlgym.partners.OpenAICompatible`) and the served-model policy
(:class:`lmrlgym.eval.openai_policy.OpenAIPolicy`). They share what must behave the same:

- :func:`parse_openai_spec`: the ``openai:<base_url>/<model>`` spec string of the CLI flags.
- :func:`post_with_retries`: one POST with a timeout and bounded, exponentially backed-off
  retries on the failures that are worth retrying (connection errors, timeouts, HTTP 429 and
  5xx, malformed bodies); any other HTTP error fails at once, and the final error names the URL,
  the number of attempts and the last failure.
- :func:`auth_headers`: the bearer token from an environment variable, if it is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lmrlgym.registry import SERVE_EXTRA, Requirement

T = TypeVar("T")

#: The HTTP client every caller here needs.
HTTPX = Requirement("httpx", SERVE_EXTRA)

#: What a successful response body may fail with when it is not the expected JSON shape.
MALFORMED = (ValueError, KeyError, IndexError, TypeError)


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint did not produce a usable answer."""


def parse_openai_spec(spec: str, what: str = "spec") -> tuple[str, str]:
    """``"openai:http://host:8000/v1/my-model"`` -> ``("http://host:8000/v1", "my-model")``.

    The model is the last path component (model names with a ``/`` cannot be written this way;
    construct the client directly for those). ``what`` names the flag in the error message.
    """
    scheme, sep, rest = spec.partition(":")
    base_url, slash, model = rest.rstrip("/").rpartition("/")
    if scheme != "openai" or not sep or not slash or not model or "://" not in base_url:
        raise ValueError(f"bad {what} {spec!r}; expected openai:<base_url>/<model>, "
                         "e.g. openai:http://127.0.0.1:8000/v1/my-model")
    check_base_url(base_url)
    return base_url, model


def check_base_url(base_url: str) -> None:
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")


def check_retry_settings(timeout: float, max_retries: int, backoff: float = 0.0) -> None:
    if max_retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError("need max_retries >= 0, timeout > 0 and backoff >= 0, got "
                         f"max_retries={max_retries}, timeout={timeout}, backoff={backoff}")


def auth_headers(api_key_env: str) -> dict[str, str]:
    """``Authorization: Bearer $KEY`` when the variable is set; local servers usually need none."""
    key = os.environ.get(api_key_env, "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def post_with_retries(
    url: str,
    body: dict[str, Any],
    parse: Callable[[Any], T],
    *,
    headers: dict[str, str],
    timeout: float,
    max_retries: int,
    backoff: float,
    client: Any = None,
    error: type[Exception] = EndpointError,
) -> tuple[T, int]:
    """POST ``body`` as JSON to ``url`` and return ``(parse(response_json), attempts)``.

    Retries (after ``backoff * 2**k`` seconds) on connection errors, timeouts, HTTP 429/5xx and
    bodies that ``parse`` rejects with one of :data:`MALFORMED`; other 4xx answers raise at once.
    ``client`` is an ``httpx.Client`` to reuse connections (thread-safe); without it each call
    opens its own connection. Raises ``error`` with the URL, the attempts and the last failure.
    """
    import httpx

    post = client.post if client is not None else httpx.post
    last = ""
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            r = post(url, json=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            last = f"timed out after {timeout:g} s"
            continue
        except httpx.TransportError as e:
            last = f"connection failed ({type(e).__name__}: {e})"
            continue
        if r.status_code == 429 or r.status_code >= 500:
            last = f"HTTP {r.status_code}: {r.text[:200]!r}"
            continue
        if r.status_code >= 400:
            raise error(f"{url} answered HTTP {r.status_code}: {r.text[:300]!r}")
        try:
            return parse(r.json()), attempt + 1
        except MALFORMED as e:
            last = f"malformed response ({e}): {r.text[:200]!r}"
    raise error(f"endpoint {url} failed after {max_retries + 1} attempts: {last}")
