"""Tokenizer (newline token, save/load), model factory (presets, from_pretrained, vocab check)
and value heads (zero init, lm_head(h) == logits)."""

import pytest
import torch

from lmrlgym.models.factory import PRESETS, build_model, check_vocab, count_parameters
from lmrlgym.models.heads import LinearHead, MLPHead, make_head
from lmrlgym.models.tokenizer import load_tokenizer, newline_id, train_tokenizer

TEXTS = ["The wall is to your left.\n", "move up\n", "move down\n\n", "hello\n\nworld  \n",
         "Guess: crane\n", "b g y b b\n"] * 30


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def test_newline_is_always_its_own_token(tok):
    nl = newline_id(tok)
    for text in ["a\n\nb", "\n\n\n", "move up\n", " \n \n", "x\r\n", "word\n  next"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert text.count("\n") == ids.count(nl)
        for i in ids:
            piece = tok.decode([i])
            assert "\n" not in piece or i == nl, (text, piece)


def test_specials_and_no_automatic_bos(tok):
    assert tok.bos_token_id is not None and tok.pad_token_id is not None
    assert tok.encode("move up\n") == tok.encode("move up\n", add_special_tokens=False)
    spelled = tok.encode("say <|bos|> or <|pad|>\n", add_special_tokens=False)
    assert not set(spelled) & set(tok.all_special_ids)
    assert tok.decode(spelled) == "say <|bos|> or <|pad|>\n"
    assert len(tok) <= 300
    with pytest.raises(ValueError, match="at least 259"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_unicode_round_trip(tok):
    text = "Ünïcødé → 北京 🎲\n"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_save_load_round_trip_and_saved_model(tok, tmp_path):
    tok.save_pretrained(tmp_path / "run")
    tok2 = load_tokenizer(tmp_path / "run")
    for text in [*TEXTS[:6], "spelled <|pad|>\n"]:
        assert tok2.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert (tok2.bos_token_id, tok2.pad_token_id, len(tok2)) == (tok.bos_token_id, tok.pad_token_id, len(tok))
    torch.manual_seed(0)
    model = build_model("gpt2-tiny", tok, dropout=0.0).eval()
    model.save_pretrained(tmp_path / "run")
    loaded = build_model(str(tmp_path / "run"), tok2).eval()
    x = torch.tensor([[tok.bos_token_id, *tok.encode("move up\n")]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")


def test_presets_sizes_and_vocab(tok):
    big = train_tokenizer(TEXTS * 20 + [f"word{i} thing{i * 7}\n" for i in range(3000)], 512)
    sizes = {name: count_parameters(build_model(name, big)) for name in PRESETS}
    assert 0.7e6 < sizes["gpt2-tiny"] < 1.5e6
    assert 3e6 < sizes["gpt2-mini"] < 5e6
    model = build_model("gpt2-tiny", tok, dropout=0.25)
    assert model.config.vocab_size == len(tok) and model.config.attn_pdrop == 0.25
    assert model.config.bos_token_id == tok.bos_token_id


def test_vocab_mismatch_is_a_clear_error(tok, tmp_path):
    small = train_tokenizer(TEXTS, vocab_size=260)
    build_model("gpt2-tiny", small).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        build_model(str(tmp_path / "m"), tok)
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        build_model(str(tmp_path / "nope" / "deeper"), tok)


@pytest.mark.parametrize("cls", [MLPHead, LinearHead])
def test_heads_start_at_their_bias(cls):
    head = cls(16, 7, head_bias=-4.4)
    h = torch.randn(3, 5, 16)
    assert torch.equal(head(h), torch.full((3, 5, 7), -4.4))
    v = cls(16, 1, head_bias=0.5)
    assert v(h).shape == (3, 5) and torch.equal(v(h), torch.full((3, 5), 0.5))
    assert head(h.half()).dtype == torch.float32
    # Gradients reach the output layer, so the head can learn.
    head(h).sum().backward()
    last = head.net[-1] if cls is MLPHead else head.linear
    assert last.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mlp"):
        make_head("conv", 4, 1)


def test_lm_head_reads_last_hidden_state(tok):
    torch.manual_seed(0)
    model = build_model("gpt2-tiny", tok, dropout=0.0).eval()
    x = torch.tensor([[tok.bos_token_id, *tok.encode("move down\n")]])
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        h = out.hidden_states[-1]
        assert torch.allclose(model.lm_head(h), out.logits, atol=1e-5)
    check_vocab(model, tok)
