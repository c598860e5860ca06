"""``lmrlgym serve`` against hostile or careless clients: the event loop stays free while a
prompt is processed, per-request limits, the API key, and slow or idle connections.

The policy is a tiny forced model (tests/serving.py) whose every next token is known, so no
training is needed."""

from __future__ import annotations

import dataclasses
import socket
import threading

import httpx
import pytest

from lmrlgym.models.decoding import Decoding
from lmrlgym.serve import CompletionRequest, RequestError, ServeLimits, build_app, request_settings
from tests.serving import Server, forced_policy

MODEL = "forced"


def _post(srv: Server, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/completions", json=body, timeout=30, **kwargs)


@pytest.fixture
def serve(request):
    """``serve(**build_app kwargs, limits=...)`` -> a running Server, stopped after the test."""
    servers = []

    def start(policy=None, limits: ServeLimits | None = None, **kwargs) -> Server:
        limits = limits or ServeLimits()
        srv = Server(build_app(policy or forced_policy(), MODEL, limits=limits, **kwargs), limits)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop(wait=False)


def test_health_answers_while_a_huge_prompt_is_tokenized(serve):
    policy = forced_policy()
    entered, release = threading.Event(), threading.Event()
    tokenize = policy.prompt

    def slow_prompt(context):  # holds the tokenization until /health has answered
        entered.set()
        release.wait(30)
        return tokenize(context)

    policy.prompt = slow_prompt
    srv = serve(policy)
    answer: dict = {}
    huge = "x " * 50_000 + "\nQ:"
    client = threading.Thread(target=lambda: answer.update(r=_post(srv, {
        "model": MODEL, "prompt": huge, "temperature": 0, "max_tokens": 4}, )))
    client.start()
    try:
        assert entered.wait(30), "the prompt never reached the tokenizer"
        health = httpx.get(f"{srv.root}/health", timeout=10)
        assert health.status_code == 200
        assert "r" not in answer  # /health answered while the prompt was still being processed
    finally:
        release.set()
        client.join(60)
    assert answer["r"].status_code == 200
    assert answer["r"].json()["choices"][0]["text"] == "go left\n"


def test_a_request_sets_its_decoding_over_the_run_default():
    default = Decoding(temperature=0.7, top_p=0.9, max_new_tokens=8, seed=3)

    def settings(**fields):
        return request_settings(CompletionRequest(model=MODEL, prompt="Q:", **fields), MODEL,
                                default, max_tokens_limit=40)

    assert settings() == (default, 8, ())
    greedy = dataclasses.replace(default, greedy=True, top_p=None)  # the run's top-p dropped
    assert settings(temperature=0) == (greedy, 8, ())
    hotter = dataclasses.replace(default, temperature=2.0, top_k=4, top_p=0.5)
    assert settings(temperature=2.0, top_k=4, top_p=0.5, max_tokens=3, stop="x") == (
        hotter, 3, ("x",))
    assert settings(top_k=-1)[0] == default  # -1: no top-k (vLLM)
    for fields, field in (({"temperature": 0.001}, "temperature"), ({"top_p": 0}, "top_p"),
                          ({"max_tokens": 41}, "max_tokens"), ({"model": "other"}, "model")):
        with pytest.raises(RequestError) as err:
            request_settings(CompletionRequest(**{"model": MODEL, "prompt": "Q:", **fields}),
                             MODEL, default, 40)
        assert err.value.param == field


def test_a_reranking_run_is_served_by_free_generation(serve):
    """A served prompt has no legal actions: a run that reranks them at evaluation generates
    freely, where top-p applies (rerank alone refuses it)."""
    srv = serve(forced_policy(Decoding(greedy=True, max_new_tokens=8, decode="rerank")))
    r = _post(srv, {"model": MODEL, "prompt": "Q:", "temperature": 1.0, "top_p": 0.5})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "go left\n"


def test_body_size_limit_is_413_naming_the_flag(serve):
    srv = serve(limits=ServeLimits(max_body_bytes=2000))
    assert _post(srv, {"model": MODEL, "prompt": "Q:"}).status_code == 200
    r = _post(srv, {"model": MODEL, "prompt": "x " * 2000})
    assert r.status_code == 413
    assert "2000 bytes (--max-body-bytes)" in r.json()["error"]["message"]
    # A chunked body has no Content-Length: it is counted as it arrives.
    chunks = iter([b'{"model": "forced", "prompt": "'] + [b"x " * 500] * 4 + [b'"}'])
    r = httpx.post(f"{srv.base_url}/completions", content=chunks, timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]


def test_prompts_times_n_limit_is_400_naming_the_flag(serve):
    srv = serve(limits=ServeLimits(max_rows=4))
    assert _post(srv, {"model": MODEL, "prompt": ["Q:", "ok"], "n": 2}).status_code == 200
    r = _post(srv, {"model": MODEL, "prompt": ["Q:", "ok", "x"], "n": 2})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ("3 prompts x n=2 completions exceed the server's "
                                            "limit of 4 per request (--max-rows)")


def test_api_key_is_required_on_v1_only(serve):
    srv = serve(api_key="s3cret")
    body = {"model": MODEL, "prompt": "Q:", "temperature": 0}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = _post(srv, body, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{srv.base_url}/models", timeout=30).status_code == 401
    r = _post(srv, body, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "go left\n"
    assert httpx.get(f"{srv.root}/health", timeout=30).status_code == 200


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_slow_body_is_408(serve):
    srv = serve(limits=ServeLimits(body_timeout=0.5, keep_alive_timeout=1))
    with _raw(srv.port) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 100\r\n\r\n{\"model\"")  # and then nothing more
        reply = _read_until_closed(s)
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"(--body-timeout)" in reply


def test_idle_keep_alive_connection_is_closed(serve):
    srv = serve(limits=ServeLimits(keep_alive_timeout=1))
    with _raw(srv.port) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = _read_until_closed(s)  # returns only once the server closes the connection
    assert reply.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in reply


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="--max-rows must be positive, got 0"):
        ServeLimits(max_rows=0)


@pytest.fixture
def server_errors():
    """The records uvicorn logs at ERROR (an unhandled exception's traceback lands there)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.parametrize("field, value, raw", [
    ("temperature", "1e-300", None), ("temperature", "1e308", None),
    ("temperature", "NaN", None), ("temperature", "Infinity", None),
    ("temperature", "-Infinity", None), ("temperature", "1e400", None),
    ("top_p", "NaN", None),
    ("prompt", '"a\\ud800b"', "lone surrogate U+D800 at index 1"),
    ("prompt[1]", '["Q:", "\\udfff"]', "lone surrogate U+DFFF at index 0"),
    ("stop", '"\\ud800"', "lone surrogate"),
    ("messages[0].content", None, "lone surrogate"),
])
def test_bad_numbers_and_lone_surrogates_are_400_naming_the_field(serve, server_errors, field,
                                                                  value, raw):
    srv = serve()
    if field.startswith("messages"):
        path, body = "chat/completions", ('{"model": "forced", "messages": [{"role": "user", '
                                          '"content": "Q:\\ud800"}]}')
    else:
        key = field.split("[")[0]
        path = "completions"
        body = '{"model": "forced", ' + ("" if key == "prompt" else '"prompt": "Q:", ') + \
               f'"{key}": {value}' + "}"
    r = httpx.post(f"{srv.base_url}/{path}", content=body.encode(), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["message"].startswith(field)
    if raw:
        assert raw in err["message"]
    assert server_errors == []  # refused cleanly: no traceback in the server's log
    ok = _post(srv, {"model": MODEL, "prompt": "Q:", "temperature": 0.5})
    assert ok.status_code == 200  # and the server still answers


# --- one line per completion, OpenAI stop strings, context truncation ------------------------
# The forced model writes "go left\n" after "Q:", and after "ok" an endless line without a
# newline ("x yzrightdownat 1,1 1,2stopx y...").
@pytest.mark.parametrize("stop, text, finish", [
    (None, "go left\n", "stop"),  # the first newline ends the completion, and is kept
    ("\n", "go left", "stop"),
    (["\n"], "go left", "stop"),
    (["zzz"], "go left\n", "stop"),
    ("eft", "go l", "stop"),
    ([" left", "go"], "", "stop"),  # the earliest stop string wins
    (["ok"], "go left\n", "stop"),  # the next line is never generated, so never matched
])
def test_completion_is_one_line_and_stop_works_as_in_openai(serve, stop, text, finish):
    srv = serve()
    body = {"model": MODEL, "prompt": "Q:", "max_tokens": 8, **({"stop": stop} if stop else {})}
    r = _post(srv, body).json()
    assert (r["choices"][0]["text"], r["choices"][0]["finish_reason"]) == (text, finish)
    assert r["usage"]["completion_tokens"] == 3 and "warnings" not in r
    chat = httpx.post(f"{srv.base_url}/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Q:"}], "max_tokens": 8,
        **({"stop": stop} if stop else {})}).json()
    assert chat["choices"][0]["message"]["content"] == text


def test_a_line_without_newline_ends_at_max_tokens(serve):
    srv = serve()
    r = _post(srv, {"model": MODEL, "prompt": ["ok", "Q:"], "max_tokens": 5}).json()
    assert [(c["text"], c["finish_reason"]) for c in r["choices"]] == [
        ("x yzrightdown", "length"), ("go left\n", "stop")]
    assert r["usage"]["completion_tokens"] == 5 + 3
    r = _post(srv, {"model": MODEL, "prompt": "ok", "max_tokens": 8, "stop": "z"}).json()
    assert (r["choices"][0]["text"], r["choices"][0]["finish_reason"]) == ("x y", "stop")


LONG = "ok\n" * 20 + "Q:"  # 41 tokens; the forced policy's context budget is 16 (BOS + 15)


def test_long_prompt_is_truncated_with_a_warning(serve):
    srv = serve()
    r = _post(srv, {"model": MODEL, "prompt": ["Q:", LONG], "n": 2}).json()
    assert [c["text"] for c in r["choices"]] == ["go left\n"] * 4
    assert r["warnings"] == ['prompt[1]: 41 tokens, more than the context budget of 15; kept its '
                             'last 15 (send "strict_context": true to refuse such prompts)']
    assert r["usage"]["prompt_tokens"] == 2 * 2 + 2 * 16
    chat = httpx.post(f"{srv.base_url}/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": LONG}]}).json()
    assert chat["warnings"][0].startswith("messages[0].content: 41 tokens")


def test_strict_context_refuses_a_long_prompt(serve):
    srv = serve()
    r = _post(srv, {"model": MODEL, "prompt": ["Q:", LONG], "strict_context": True})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt[1]"
    assert r.json()["error"]["message"].startswith(
        "prompt[1]: 41 tokens, more than the run's context budget of 15 (refused because "
        "strict_context is set")
    assert _post(srv, {"model": MODEL, "prompt": "Q:", "strict_context": True}).status_code == 200
    # --strict-context makes it the server's default; a request can still opt out.
    strict = serve(limits=ServeLimits(strict_context=True))
    assert _post(strict, {"model": MODEL, "prompt": LONG}).status_code == 400
    r = _post(strict, {"model": MODEL, "prompt": LONG, "strict_context": False})
    assert r.status_code == 200 and len(r.json()["warnings"]) == 1
