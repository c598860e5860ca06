"""The project's tokenizer: a small byte-level BPE trained locally on a dataset's text.

Why our own and not GPT-2's: CPU-scale models need a small vocabulary (hundreds of tokens, not
50k), nothing may be downloaded, and generation must stop on a newline (docs/algorithms.md §4.1).
GPT-2's BPE merges ``"\\n\\n"`` and ``"\\n"`` with neighbouring spaces, so the original ran past
the stop string; here ``"\\n"`` is split off before BPE, so it is always exactly one token
(:data:`NEWLINE`) and never part of a merge. Byte-level, so any unicode text round-trips.

Save and load with the usual Hugging Face calls::

    tok = train_tokenizer(texts, vocab_size=512)
    tok.save_pretrained(run_dir / "tokenizer")
    tok = load_tokenizer(run_dir / "tokenizer")   # AutoTokenizer.from_pretrained, local only
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
NEWLINE = "\n"
#: 256 byte symbols + the special tokens: the smallest vocabulary that can encode any text.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (e.g. every turn of a dataset).

    The result has ``bos_token``/``eos_token``/``pad_token`` set, adds no special tokens by
    itself (``render`` places the one BOS), and encodes ``"\\n"`` as its own token, never merged.
    The vocabulary may come out smaller than ``vocab_size`` when the text has few merges left.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} "
            f"special tokens), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Isolate every newline first: BPE never merges across pre-token boundaries.
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    """The tokenizer whose ``backend_tokenizer.to_str()`` is ``text``, wrapped exactly as
    :func:`train_tokenizer` wraps a freshly trained one (the data cache stores this string)."""
    return _wrap(Tokenizer.from_str(text))


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        clean_up_tokenization_spaces=False,
        # Text never becomes a special id, even if it spells one ("<|pad|>" in an observation
        # or a sampled action): specials are placed by render() and the policy only.
        split_special_tokens=True,
    )
    check_tokenizer(fast)
    return fast


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with ``save_pretrained`` from a local directory (never the hub)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no tokenizer directory at {path}")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    check_tokenizer(tok)
    return tok


def newline_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of the token that encodes exactly ``"\\n"`` (raises if there is none)."""
    ids = tokenizer.encode(NEWLINE, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"tokenizer encodes '\\n' as {len(ids)} tokens {ids}; need exactly one")
    return ids[0]


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """What the rest of the code relies on: a BOS and a PAD token, and a single-token newline."""
    for name in ("bos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise ValueError(f"tokenizer has no {name.removesuffix('_id')}; set one before use")
    newline_id(tokenizer)
