"""Language-model-backed dialogue partners (docs/tasks.md §1, "Partners").

Tasks with a second party (the 20Q oracle, the city oracle, the car buyer) default to scripted,
deterministic simulators. Any of them can instead be played by a language model behind the small
:class:`ChatPartner` protocol: a list of chat messages in (OpenAI format, roles ``system`` /
``user`` / ``assistant``), the reply text out. Two implementations ship:

- :class:`HFCausalLM`: any local Hugging Face causal LM (a directory or a loaded model).
- :class:`OpenAICompatible`: any OpenAI-compatible ``/chat/completions`` HTTP endpoint (vLLM,
  llama.cpp's server, TGI, hosted APIs), with a timeout and bounded retries.

:func:`make_partner` builds one from a spec string, which is what the CLI's ``--partner`` takes:
``"openai:<base_url>/<model>"`` or ``"hf:<path>"``. A sampling partner sets
``deterministic = False`` and the env reports it in ``info["deterministic"]``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from lmrlgym.openai_api import (
    HTTPX,
    auth_headers,
    check_base_url,
    check_retry_settings,
    parse_openai_spec,
    post_with_retries,
)
from lmrlgym.registry import require

Message = dict[str, str]
_ROLES = ("system", "user", "assistant")


class PartnerError(RuntimeError):
    """A partner could not produce a reply (endpoint down, garbage response, bad messages)."""


@runtime_checkable
class ChatPartner(Protocol):
    """The other party of a dialogue task, played by a language model."""

    #: False when replies are sampled (the env then reports ``info["deterministic"] = False``).
    deterministic: bool

    def complete(self, messages: list[Message]) -> str:
        """The reply to a chat transcript (OpenAI message format), as plain text."""
        ...


def check_messages(messages: Sequence[Message]) -> None:
    """Raise ``ValueError`` naming the first malformed message."""
    if not messages:
        raise ValueError("messages is empty; a partner needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise ValueError(f"messages[{i}] needs a role in {_ROLES}, got {m!r:.80}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] needs a str content, got {m!r:.80}")


def plain_prompt(messages: Sequence[Message]) -> str:
    """Role-prefixed rendering for tokenizers without a chat template.

    One ``Role: content`` line per message, then ``Assistant:`` for the model to continue.
    """
    lines = [f"{m['role'].capitalize()}: {m['content'].strip()}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


# In the plain format a base model that is not stopped writes the next turn itself.
_PLAIN_STOPS = ("\nUser:", "\nSystem:", "\nAssistant:")


class HFCausalLM:
    """A local Hugging Face causal LM as a chat partner.

    Args:
        model: a directory (or hub-cache name already on disk) for ``from_pretrained``, or a loaded
            ``PreTrainedModel``.
        tokenizer: required with a loaded model; loaded from ``model`` when that is a path.
        max_new_tokens: reply length cap.
        temperature: 0 decodes greedily (deterministic); above 0 samples from the softmax at
            that temperature (no top-k, as in the original's evaluation).
        seed: seeds this partner's own ``torch.Generator``; the global torch RNG is not touched,
            so a run of calls is reproducible from the partner's construction on.
        stop: extra strings that end a reply (the plain format adds its role prefixes).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] = (),
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)  # never a pickle
        elif tokenizer is None:
            raise ValueError("HFCausalLM with a loaded model needs its tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.deterministic = self.temperature == 0.0
        self.stop = tuple(stop)
        # transformers 5 renamed the KV-cache argument and output field `past_key_values` ->
        # `cache`; support both so older installs keep working.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._generator = torch.Generator(device="cpu").manual_seed(seed)

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text the model continues."""
        check_messages(messages)
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        return plain_prompt(messages)

    def complete(self, messages: list[Message]) -> str:
        import torch

        prompt = self.render(messages)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        # Keep the newest context when the transcript outgrows the model's positions.
        n_ctx = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", None
        )
        if n_ctx is not None:
            ids = ids[:, -max(1, n_ctx - self.max_new_tokens) :]
        device = next(self.model.parameters()).device
        ids = ids.to(device)
        eos = self._stop_ids()
        stops = self.stop + (() if self.uses_chat_template else _PLAIN_STOPS)
        new: list[int] = []
        past = None
        with torch.no_grad():
            for _ in range(self.max_new_tokens):
                out = self.model(input_ids=ids, **{self._cache_arg: past}, use_cache=True)
                past = out[self._cache_arg]
                logits = out.logits[0, -1].float().cpu()  # (V,)
                token = self._pick(logits)
                if token in eos:
                    break
                new.append(token)
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                if any(s in text for s in stops):
                    break
                ids = torch.tensor([[token]], device=device)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in stops:
            text = text.split(s, 1)[0]
        return text.strip()

    def _stop_ids(self) -> set[int]:
        """Token ids that end a reply: the tokenizer's EOS and the model's generation EOS ids
        (chat models end a turn with their own token, e.g. ``<|im_end|>``)."""
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for value in (self.tokenizer.eos_token_id, getattr(gen, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _pick(self, logits: Any) -> int:
        import torch

        if self.temperature == 0.0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))


class OpenAICompatible:
    """An OpenAI-compatible chat-completions endpoint as a chat partner.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``; requests go to ``{base_url}/chat/completions``.
        model: the ``model`` field of the request.
        api_key_env: name of the environment variable holding the key; when it is unset no
            ``Authorization`` header is sent (local servers usually need none).
        timeout: seconds per request.
        max_retries: retries after the first attempt on connection errors, timeouts, HTTP 429
            and 5xx, and malformed responses; other HTTP errors fail at once.
        temperature, max_tokens: sampling settings sent with every request.
        backoff: seconds before the first retry, doubled for each further one.
    """

    deterministic = False  # a remote sampler; even at temperature 0 servers are not bit-exact

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 3,
        temperature: float = 1.0,
        max_tokens: int = 128,
        backoff: float = 0.5,
    ):
        require("OpenAICompatible", HTTPX)
        check_base_url(base_url)
        check_retry_settings(timeout, max_retries, backoff)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.backoff = float(backoff)

    def complete(self, messages: list[Message]) -> str:
        check_messages(messages)
        body = {
            "model": self.model,
            "messages": list(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        text, _ = post_with_retries(
            self.url,
            body,
            _reply_text,
            headers=auth_headers(self.api_key_env),
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
            error=PartnerError,
        )
        return text


def _reply_text(payload: Any) -> str:
    content = payload["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}, not str: {json.dumps(content)[:80]}")
    return content.strip()


PARTNER_SPECS = ("openai:<base_url>/<model>", "hf:<path>")


def make_partner(spec: str, **kwargs: Any) -> ChatPartner:
    """A partner from a spec string; ``kwargs`` go to the partner's constructor.

    - ``"openai:http://127.0.0.1:8000/v1/my-model"``: :class:`OpenAICompatible` with base URL
      ``http://127.0.0.1:8000/v1`` and model ``my-model`` (the last path component).
    - ``"hf:/path/to/model"``: :class:`HFCausalLM` loaded from that directory.
    """
    scheme, sep, rest = spec.partition(":")
    if sep and scheme == "openai":
        base_url, model = parse_openai_spec(spec, "partner spec")
        return OpenAICompatible(base_url, model, **kwargs)
    if sep and scheme == "hf":
        if not rest:
            raise ValueError(f"bad partner spec {spec!r}; expected hf:<path>")
        return HFCausalLM(rest, **kwargs)
    raise ValueError(f"unknown partner spec {spec!r}; valid forms: {', '.join(PARTNER_SPECS)}")
