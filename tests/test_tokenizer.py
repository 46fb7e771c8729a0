"""Tests for kexue.tokenizer.CharTokenizer."""

from __future__ import annotations

import string

import pytest
import torch

from kexue import data
from kexue.tokenizer import BASE_CHARACTERS, SPECIAL_TOKENS, CharTokenizer

TEXTS = ["今天天气很好。", "今天下雨了！", "天气预报说明天下雨", "Hello, World 123", "他说：“好。”"]


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.build(TEXTS, min_count=2)


@pytest.fixture(scope="module")
def corpus_tok() -> CharTokenizer:
    return CharTokenizer.from_corpus()


def test_vocabulary_layout(tok):
    assert tuple(tok.id_to_token[:5]) == SPECIAL_TOKENS
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    for ch in string.digits + string.ascii_lowercase + string.punctuation + " 。、《》“”":
        assert ch in tok.token_to_id, ch
    assert set(BASE_CHARACTERS) <= set(tok.id_to_token)
    # min_count: 天 (5 times) and 今 (2) are in, 晴-like singletons are not
    assert "天" in tok.token_to_id and "今" in tok.token_to_id
    assert "报" not in tok.token_to_id and "情" not in tok.token_to_id
    # more frequent characters get smaller ids
    assert tok.token_to_id["天"] < tok.token_to_id["今"]


def test_round_trip_on_corpus(corpus_tok):
    corpus = data.load_pretraining_corpus()
    checked = 0
    for text in corpus[::50]:
        ids = corpus_tok.encode(text)
        assert len(ids) == len(text)
        if corpus_tok.unk_id not in ids:
            assert corpus_tok.decode(ids) == text
            checked += 1
    assert checked > 0.99 * len(corpus[::50])
    # the vocabulary FINDINGS.md measured for a similar corpus: 4,815 characters
    assert 4_000 < corpus_tok.vocab_size < 6_000


def test_round_trip_raw_text_after_normalisation(corpus_tok):
    raw = "ＡＢＣ１２３，中国人民银行《年报》说：“增长！”  OK…"
    ids = corpus_tok.encode(raw)
    assert len(ids) == len(raw)  # one id per input character, spans stay aligned
    expected = "".join(" " if c.isspace() else data.normalize_char(c) for c in raw)
    assert corpus_tok.decode(ids) == expected


def test_spans_stay_aligned(corpus_tok):
    for ex in data.load_msra("test")[:200]:
        ids, mask = corpus_tok([ex.text], max_len=512)
        for s, e, _ in ex.spans:
            # token i+1 is character i
            assert corpus_tok.decode(ids[0, s + 1 : e + 2]) == data.normalize_text(ex.text[s : e + 1])


def test_unknown_characters(tok):
    assert tok.encode("晴") == [tok.unk_id]
    assert tok.encode("\t\n") == [tok.token_to_id[" "]] * 2


def test_batched_call(tok):
    ids, mask = tok(["今天", "天气很好今天", ""], max_len=6)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (3, 6)
    assert ids[:, 0].tolist() == [tok.cls_id] * 3
    assert ids[0].tolist() == [tok.cls_id, *tok.encode("今天"), tok.sep_id, 0, 0]
    assert ids[1].tolist() == [tok.cls_id, *tok.encode("天气很好"), tok.sep_id]  # truncated
    assert ids[2].tolist()[:2] == [tok.cls_id, tok.sep_id]
    assert mask.sum(1).tolist() == [4, 6, 2]
    assert (ids[~mask] == tok.pad_id).all()
    short, _ = tok(["今天"], max_len=10)
    assert short.shape == (1, 4)
    padded, _ = tok(["今天"], max_len=10, pad_to_max=True)
    assert padded.shape == (1, 10)


def test_decode_specials(tok):
    ids, _ = tok(["今天"], max_len=8)
    assert tok.decode(ids[0]) == "今天"
    assert tok.decode(ids[0], skip_special=False) == "[CLS]今天[SEP]"


def test_save_load_round_trip(tmp_path, corpus_tok):
    file = corpus_tok.save(tmp_path)
    assert file == tmp_path / "vocab.txt"
    lines = file.read_text(encoding="utf-8").split("\n")
    assert lines[:5] == list(SPECIAL_TOKENS) and "[SPACE]" in lines
    loaded = CharTokenizer.load(tmp_path)
    assert loaded == corpus_tok
    assert loaded.encode("你好 世界") == corpus_tok.encode("你好 世界")
    other = corpus_tok.save(tmp_path / "other.txt")
    assert CharTokenizer.load(other) == corpus_tok


def test_bad_input(tok, tmp_path):
    with pytest.raises(TypeError, match="text"):
        tok.encode(12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="texts"):
        tok("今天", max_len=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_len"):
        tok(["今天"], max_len=1)
    with pytest.raises(ValueError, match="ids"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="min_count"):
        CharTokenizer.build(TEXTS, min_count=0)
    with pytest.raises(ValueError, match="tokens must start"):
        CharTokenizer(["a", "b"])
    with pytest.raises(FileNotFoundError):
        CharTokenizer.load(tmp_path / "missing")
