"""Language-model side of lmrlgym (docs/algorithms.md §1-2, §4.1).

- ``tokenizer``: train/load the project's byte-level BPE (``"\\n"`` is always one token).
- ``factory``: GPT-2 presets (``gpt2-tiny``, ``gpt2-mini``) or any local/hub causal LM.
- ``heads``: zero-initialised MLP/linear value and Q heads.
- ``render``: episodes -> training rows (``render``, ``Segment``) -> padded ``Batch``.
- ``policy``: ``LMPolicy``, batched KV-cached generation that stops at the newline.
- ``action_sets``: decoding over known legal actions (rerank scores, constrained-decoding trie).

Submodules are imported explicitly (``from lmrlgym.models.render import render``) so that
``import lmrlgym`` does not pull in torch and transformers.
"""
