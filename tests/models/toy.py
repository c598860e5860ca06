"""Shared test helpers: a word-level toy tokenizer (docs/algorithms.md §1.5), a toy append-only env
and a scripted text policy for it."""

from __future__ import annotations

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lmrlgym.core import TextEnv
from lmrlgym.models.tokenizer import BOS, EOS, PAD

TOY_WORDS = ["Q:", "\n", "go", " left", "ok", "stop", "at", " 1,1", " 1,2", "right", "down",
             "x", " y", "z"]


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """Words split as ``"go left\\n" -> ["go", " left", "\\n"]``; unknown words map to <unk>."""
    vocab = {w: i for i, w in enumerate([BOS, EOS, PAD, "<unk>", *TOY_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n| ?[^ \n]+"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


class EchoEnv(TextEnv):
    """Append-only toy: the env repeats the action; ``"stop"`` ends it with reward +1, any
    other action costs -1 (``"bad"`` is illegal and costs -2); truncated after ``max_steps``."""

    return_range = (-8.0, 1.0)

    def __init__(self, max_steps: int = 4, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.max_steps = max_steps
        self._n = 0

    def _reset(self, rng: np.random.Generator, options: dict) -> tuple[str, dict]:
        self._n = 0
        start = int(options.get("start", rng.integers(10)))
        return f"Say something {start}.\n", {}

    def _step(self, action: str):
        self._n += 1
        word = action.strip()
        if word == "stop":
            return "Bye.\n", 1.0, True, False, {"success": True}
        illegal = word == "bad"
        return (f"You said {word}.\n", -2.0 if illegal else -1.0, False, self._n >= self.max_steps,
                {"illegal": illegal})

    @classmethod
    def evaluation_resets(cls, n_episodes: int, **env_kwargs) -> list[tuple[int, dict]]:
        return [(i, {"start": i % 3}) for i in range(n_episodes)]


class ScriptedEcho:
    """A text ``Policy`` whose k-th action in an episode is ``script[k]`` (by counting turns)."""

    name = "scripted-echo"

    def __init__(self, script: list[str]):
        self.script = script

    def act(self, observations: list[str]) -> list[str]:
        return [self.script[min(obs.count("You said"), len(self.script) - 1)] for obs in observations]


class MenuEnv(EchoEnv):
    """``EchoEnv`` that knows its legal actions (``action_set``, for rerank/constrained decoding)."""

    MENU = ("hello there", "go left", "stop")

    def action_set(self) -> tuple[str, ...]:
        return self.MENU


def assert_rows_finish_like_one_by_one(model, tok, observations: list[str]) -> None:
    """Rows of one batch that stop at different steps (by a content-dependent rule on the
    hidden state the heads read) leave the batch and its KV cache mid-generation; the others go
    on exactly as if generated alone, or without a cache."""
    import torch

    from lmrlgym.models.decoding import Decoding
    from lmrlgym.models.policy import LMPolicy
    from lmrlgym.models.tokenizer import newline_id

    nl = newline_id(tok)

    def adjust(h, logits):
        stop = (h[:, :3].sum(-1) * 10).floor().remainder(3) == 0
        out = logits.clone()
        out[:, nl] = torch.where(stop, 1e9, -1e9)
        return out

    def run(**kw):
        pol = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=6), max_context_tokens=64,
                       logits_adjust=adjust, **kw)
        return pol.act(observations), pol.last.action_ids

    texts, ids = run(pad_budget=float("inf"))  # one left-padded batch
    assert len({len(a) for a in ids}) > 2  # rows really finished at different steps
    assert (texts, ids) == run(batch_size=1) == run(use_cache=False, pad_budget=float("inf"))

