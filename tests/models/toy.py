"""Shared fixtures for model tests: a word-level toy tokenizer (ALGORITHMS.md §1.5) and a small
trained BPE tokenizer."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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
