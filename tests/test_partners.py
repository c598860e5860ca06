"""LM-backed partners: the HTTP path against a local server, retries, errors, a tiny local GPT-2."""

import asyncio
import socket
import threading
import time

import pytest
import torch

from lmrlgym.partners import (
    ChatPartner,
    HFCausalLM,
    OpenAICompatible,
    PartnerError,
    make_partner,
    plain_prompt,
)

MESSAGES = [
    {"role": "system", "content": "You are a buyer."},
    {"role": "user", "content": "hello there"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """A chat-completions server on 127.0.0.1 with a few behaviours, one per URL prefix."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI()
    state = {"flaky": 0, "bad": 0, "auth": None}

    def reply(text: str) -> dict:
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}

    @app.post("/ok/v1/chat/completions")
    async def ok(request: Request):
        body = await request.json()
        state["auth"] = request.headers.get("authorization")
        last = body["messages"][-1]["content"]
        # Depends on the whole request, so a partner that sends the wrong thing fails the test.
        return reply(
            f"  {body['model']}|{len(body['messages'])}|{last.upper()}|{body['temperature']}\n"
        )

    @app.post("/flaky/v1/chat/completions")
    async def flaky(request: Request):
        state["flaky"] += 1
        if state["flaky"] <= 2:
            return JSONResponse({"error": "overloaded"}, status_code=503)
        return reply(f"ok after {state['flaky']}")

    @app.post("/garbage/v1/chat/completions")
    async def garbage(request: Request):
        return PlainTextResponse("<html>not json</html>")

    @app.post("/bad/v1/chat/completions")
    async def bad(request: Request):
        state["bad"] += 1
        return JSONResponse({"error": "invalid key"}, status_code=401)

    @app.post("/buyer/v1/chat/completions")
    async def buyer(request: Request):
        body = await request.json()
        if "$20,000" in body["messages"][-1]["content"]:
            return reply("Fine. Output: Decision=Accept MSRP=$20,000 Buy Price=$20,000")
        return reply("How much is it?")

    @app.post("/slow/v1/chat/completions")
    async def slow(request: Request):
        await asyncio.sleep(2.0)
        return reply("too late")

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        if time.monotonic() > deadline:
            pytest.fail("local test server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", state
    srv.should_exit = True
    thread.join(timeout=5)


def test_openai_roundtrip(server, monkeypatch):
    url, state = server
    monkeypatch.setenv("TEST_PARTNER_KEY", "sk-test")
    p = OpenAICompatible(f"{url}/ok/v1", "buyer-7", api_key_env="TEST_PARTNER_KEY", temperature=0.5)
    assert isinstance(p, ChatPartner) and p.deterministic is False
    assert p.complete(MESSAGES) == "buyer-7|2|HELLO THERE|0.5"
    assert state["auth"] == "Bearer sk-test"
    monkeypatch.delenv("TEST_PARTNER_KEY")
    assert p.complete(MESSAGES[1:]) == "buyer-7|1|HELLO THERE|0.5"
    assert state["auth"] is None  # no key set -> no header


def test_make_partner_openai_spec(server):
    url, _ = server
    p = make_partner(f"openai:{url}/ok/v1/tiny-model", temperature=0.0)
    assert isinstance(p, OpenAICompatible)
    assert p.url == f"{url}/ok/v1/chat/completions"
    assert p.complete(MESSAGES) == "tiny-model|2|HELLO THERE|0.0"


def test_car_dealer_with_an_http_buyer(server):
    import lmrlgym

    url, _ = server
    env = lmrlgym.make("CarDealer-v0", buyer=f"openai:{url}/buyer/v1/buyer-model")
    obs, info = env.reset(seed=0, options={"persona": {"budget": 30000}})
    assert info["deterministic"] is False
    obs, r, term, _, _ = env.step("A lovely Honda.")
    assert (obs.endswith("A lovely Honda.\nHow much is it?\n"), r, term) == (True, 0.0, False)
    obs, r, term, _, info = env.step("It is $20,000.")
    assert obs.endswith("It is $20,000.\nFine.\n")
    assert (r, term, info["decision"]["buy_price"]) == (20000 / 30000, True, 20000)


def test_retries_then_succeeds(server):
    url, state = server
    p = OpenAICompatible(f"{url}/flaky/v1", "m", max_retries=3, backoff=0.01)
    assert p.complete(MESSAGES) == "ok after 3"
    assert state["flaky"] == 3


def test_retries_are_bounded(server):
    url, state = server
    state["flaky"] = -10  # would need 12 attempts
    p = OpenAICompatible(f"{url}/flaky/v1", "m", max_retries=2, backoff=0.01)
    with pytest.raises(
        PartnerError, match=r"flaky/v1/chat/completions failed after 3 attempts.*503"
    ):
        p.complete(MESSAGES)
    assert state["flaky"] == -7


def test_garbage_response_is_a_clear_error(server):
    url, _ = server
    p = OpenAICompatible(f"{url}/garbage/v1", "m", max_retries=1, backoff=0.01)
    with pytest.raises(PartnerError, match="malformed response"):
        p.complete(MESSAGES)


def test_client_error_is_not_retried(server):
    url, state = server
    p = OpenAICompatible(f"{url}/bad/v1", "m", max_retries=3, backoff=0.01)
    with pytest.raises(PartnerError, match="HTTP 401"):
        p.complete(MESSAGES)
    assert state["bad"] == 1


def test_slow_endpoint_times_out(server):
    url, _ = server
    p = OpenAICompatible(f"{url}/slow/v1", "m", timeout=0.2, max_retries=1, backoff=0.01)
    with pytest.raises(PartnerError, match="timed out after 0.2 s"):
        p.complete(MESSAGES)


def test_dead_endpoint_fails_quickly():
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    p = OpenAICompatible(url, "m", timeout=0.5, max_retries=2, backoff=0.01)
    with pytest.raises(
        PartnerError, match=rf"{url}/chat/completions failed after 3 attempts: connection failed"
    ):
        p.complete(MESSAGES)


def test_bad_specs_and_messages():
    with pytest.raises(ValueError, match="valid forms: openai:<base_url>/<model>, hf:<path>"):
        make_partner("gpt4")
    with pytest.raises(ValueError, match="expected openai:<base_url>/<model>"):
        make_partner("openai:no-model")
    with pytest.raises(ValueError, match="http:// or https://"):
        OpenAICompatible("127.0.0.1:8000/v1", "m")
    p = OpenAICompatible("http://127.0.0.1:9/v1", "m")
    with pytest.raises(ValueError, match=r"messages\[1\] needs a role"):
        p.complete([MESSAGES[0], {"role": "buyer", "content": "x"}])
    with pytest.raises(ValueError, match="messages is empty"):
        p.complete([])


# --- HFCausalLM on a tiny GPT-2 built from a config --------------------------------------------
VOCAB = "[UNK] <eos> User System Assistant : hello there yes no You are a buyer .".split()


def _tiny_lm(tmp_path, favour: str | None = None):
    """A 2-layer GPT-2 and a word-level tokenizer, saved to ``tmp_path`` and loaded back.

    ``favour`` makes greedy decoding emit that token at every step: with the final layer norm's
    weight zeroed, every position's hidden state is the norm's bias, and the tied output layer
    scores token j by ``wte_j . bias``, largest for the scaled-up favoured embedding.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=64,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
    )
    model = GPT2LMHeadModel(cfg)
    if favour is not None:
        j = VOCAB.index(favour)
        with torch.no_grad():
            model.transformer.wte.weight[j] *= 10
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[j])
    model.save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)
    return tmp_path


def test_plain_prompt_format():
    assert plain_prompt(MESSAGES) == "System: You are a buyer.\nUser: hello there\nAssistant:"


def test_hf_greedy_emits_the_favoured_token(tmp_path):
    p = make_partner(f"hf:{_tiny_lm(tmp_path, favour='yes')}", temperature=0.0, max_new_tokens=5)
    assert isinstance(p, HFCausalLM) and p.deterministic is True
    assert not p.uses_chat_template
    assert p.render(MESSAGES) == plain_prompt(MESSAGES)
    assert p.complete(MESSAGES) == "yes yes yes yes yes"


def test_hf_stops_at_eos_and_stop_strings(tmp_path):
    p = HFCausalLM(_tiny_lm(tmp_path / "eos", favour="<eos>"), temperature=0.0)
    assert p.complete(MESSAGES) == ""
    p = HFCausalLM(_tiny_lm(tmp_path / "user", favour="User"), temperature=0.0, stop=("User",))
    assert p.complete(MESSAGES) == ""
    # A chat model's end-of-turn token (in its generation config) also ends the reply.
    p = HFCausalLM(_tiny_lm(tmp_path / "yes", favour="yes"), temperature=0.0, max_new_tokens=3)
    assert p.complete(MESSAGES) == "yes yes yes"
    p.model.generation_config.eos_token_id = [VOCAB.index("<eos>"), VOCAB.index("yes")]
    assert p.complete(MESSAGES) == ""


def test_hf_sampling_is_seeded(tmp_path):
    path = _tiny_lm(tmp_path)
    a = HFCausalLM(path, temperature=1.0, seed=3, max_new_tokens=12)
    b = HFCausalLM(path, temperature=1.0, seed=3, max_new_tokens=12)
    assert a.deterministic is False
    outs_a = [a.complete(MESSAGES) for _ in range(3)]
    assert outs_a == [b.complete(MESSAGES) for _ in range(3)]
    assert len(set(outs_a)) > 1  # the generator advances between calls
    assert all(set(o.split()) <= set(VOCAB) for o in outs_a)


def test_hf_uses_the_chat_template(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _tiny_lm(tmp_path, favour="no")
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}Assistant :{% endif %}"
    )
    p = HFCausalLM(
        AutoModelForCausalLM.from_pretrained(path), tok, temperature=0.0, max_new_tokens=2
    )
    assert p.render(MESSAGES) == "system : You are a buyer. user : hello there Assistant :"
    assert p.complete(MESSAGES) == "no no"
    with pytest.raises(ValueError, match="needs its tokenizer"):
        HFCausalLM(p.model)
