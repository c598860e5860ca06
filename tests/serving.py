"""Test helpers for ``lmrlgym serve``: a local uvicorn server in a thread, and a tiny policy
whose every next token is known (a forced successor chain over the toy tokenizer's words)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from lmrlgym.models.decoding import Decoding
from lmrlgym.serve import ServeLimits, uvicorn_config
from tests.models.toy import toy_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn on 127.0.0.1 in a daemon thread, with ``lmrlgym serve``'s connection settings."""

    def __init__(self, app, limits: ServeLimits | None = None):
        import uvicorn

        self.port = free_port()
        config = uvicorn_config(app, "127.0.0.1", self.port, limits or ServeLimits())
        config.log_level = "error"
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                pytest.fail("the local server did not start")
            time.sleep(0.02)
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"

    def stop(self, wait: bool = True):
        """Ask the server to exit; ``wait``: until it has (uvicorn notices within 0.1 s, then
        closes its connections: ~0.2 s per server, idle time a test's teardown need not spend,
        as each test's server has a port of its own)."""
        self.server.should_exit = True
        if wait:
            self.thread.join(timeout=10)


#: Each word's successor: after "Q:" the model writes "go left\n", then "ok x y z right down
#: at 1,1 1,2 stop" and "x ..." again, a cycle without a newline.
SUCCESSOR = {"Q:": "go", "go": " left", " left": "\n", "\n": "ok", "ok": "x", "x": " y",
             " y": "z", "z": "right", "right": "down", "down": "at", "at": " 1,1",
             " 1,1": " 1,2", " 1,2": "stop", "stop": "x"}


def forced_policy(decoding: Decoding = Decoding(greedy=True, max_new_tokens=8),
                  max_context_tokens: int = 16, **kwargs):
    """An ``LMPolicy`` over a 1-layer GPT-2 whose next token is ``SUCCESSOR[last token]``.

    The blocks are zeroed (the residual stream is the last token's one-hot embedding, no
    positions) and the untied LM head maps that one-hot to the successor with a margin of ~50
    logits, so greedy and sampled decoding agree."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmrlgym.models.policy import LMPolicy

    tok = toy_tokenizer()
    V = len(tok)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=1,
                                       n_head=2, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, tie_word_embeddings=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if "ln_" in name and name.endswith("weight") else 0.0)
        model.transformer.wte.weight[:, :V] = torch.eye(V)
        for word, nxt in SUCCESSOR.items():
            model.lm_head.weight[tok.convert_tokens_to_ids(nxt), tok.convert_tokens_to_ids(word)] = 10.0
    return LMPolicy(model, tok, decoding, max_context_tokens=max_context_tokens, **kwargs)
