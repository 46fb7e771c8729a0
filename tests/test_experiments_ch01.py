"""Chapter 01's experiment layer: the shared SimCSE training, the bag-of-characters control, the profiles."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kexue.experiments.ch01_simcse import (
    CONFIGS, SimCSEConfig, head_drift, orthogonal_start, run, tfidf_spearman,
)
from kexue.experiments import ch01_budget
from kexue.experiments.loop import step_cap
from kexue.experiments.records import RunResult
from kexue.experiments.simcse_training import PooledEncoder, pair_rows, train_simcse
from kexue.nn import MaskedLM, TransformerConfig
from kexue.simcse import POOLINGS, encode
from kexue.tokenizer import CharTokenizer

TEXTS = [f"第{i}句话说的是{'天地人和山水'[i % 6]}{'东南西北'[i % 4]}" for i in range(64)]


def tiny_model(tok: CharTokenizer, seed: int = 0) -> MaskedLM:
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=tok.vocab_size, dim=16, depth=1, heads=2, ffn_dim=32, max_len=24, dropout=0.3)
    return MaskedLM(cfg)


def test_train_simcse_lowers_the_loss_and_linear_variant_freezes_the_encoder():
    tok = CharTokenizer.build(TEXTS, min_count=1)
    model = tiny_model(tok)
    res = train_simcse(model, tok, TEXTS, batch_size=16, lr=3e-3, epochs=6, max_len=24, pooling="last-avg")
    assert len(res.losses) == 24 and not model.training and res.head is None
    assert sum(res.losses[-4:]) < sum(res.losses[:4])
    # a parameter the caller froze stays frozen after either mode
    model.encoder.token_embedding.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    lin = train_simcse(model, tok, TEXTS, batch_size=16, lr=1e-2, epochs=2, max_len=24, trainable="linear")
    assert lin.head is not None and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert lin.losses[-1] != lin.losses[0]  # the head did train
    emb = model.encoder.token_embedding.weight.detach().clone()
    train_simcse(model, tok, TEXTS, batch_size=16, lr=1e-2, steps=1, max_len=24)
    assert torch.equal(emb, model.encoder.token_embedding.weight)  # frozen by the caller: untouched
    assert [p.requires_grad for p in model.parameters()] == flags


def test_train_simcse_bad_arguments():
    tok = CharTokenizer.build(TEXTS, min_count=1)
    model = tiny_model(tok)
    with pytest.raises(ValueError, match="batch_size"):
        train_simcse(model, tok, TEXTS[:3], batch_size=16)
    with pytest.raises(ValueError, match="trainable"):
        train_simcse(model, tok, TEXTS, trainable="head")
    with pytest.raises(ValueError, match="pooling"):
        train_simcse(model, tok, TEXTS, pooling="max")
    with pytest.raises(ValueError, match="micro_batch_size"):
        train_simcse(model, tok, TEXTS, batch_size=16, micro_batch_size=0)
    with pytest.raises(TypeError, match="model"):
        train_simcse(torch.nn.Linear(2, 2), tok, TEXTS)


def test_pooled_encoder_matches_encode():
    """The training-time embedding (mask from the ids) is the evaluation-time one (mask from the tokenizer)."""
    tok = CharTokenizer.build(TEXTS, min_count=1)
    model = tiny_model(tok).eval()
    ids = pair_rows(tok, TEXTS[:5], 24)
    assert torch.equal(ids[0], ids[1]) and not torch.equal(ids[0], ids[2])
    for pooling in POOLINGS:
        with torch.no_grad():
            got = PooledEncoder(model.encoder, pooling, tok.pad_id)(ids[::2])
        torch.testing.assert_close(got, encode(model, tok, TEXTS[:5], pooling, max_len=24), atol=1e-5, rtol=1e-5)


def test_orthogonal_start_is_the_frozen_heads_initial_weight():
    """head_drift measures from orthogonal_start: it must be the draw train_simcse makes."""
    tok = CharTokenizer.build(TEXTS, min_count=1)
    model = tiny_model(tok)
    res = train_simcse(model, tok, TEXTS, batch_size=16, lr=1e-12, steps=1, max_len=24, trainable="linear", seed=5)
    assert res.head is not None
    start = orthogonal_start(model.config.dim, seed=5)
    torch.testing.assert_close(res.head.weight.detach(), start, atol=1e-9, rtol=0)
    torch.testing.assert_close(start @ start.T, torch.eye(model.config.dim), atol=1e-5, rtol=0)
    assert not torch.allclose(orthogonal_start(model.config.dim, seed=6), start)  # the check can fail
    drift = head_drift(res.head.weight, start)
    assert drift["moved"] < 1e-9 and abs(drift["sigma_min"] - 1) < 1e-5 and abs(drift["sigma_max"] - 1) < 1e-5


def test_head_drift_separates_rotations_from_rescalings():
    """A rotation moves the head but keeps every cosine (singular values 1); a rescaling of one
    direction does not, and a head that never moved reads zero."""
    start = orthogonal_start(8, seed=0)
    same = head_drift(start.clone(), start)
    assert same["moved"] == 0 and same["max_step"] == 0
    rotation = orthogonal_start(8, seed=1) @ start
    rotated = head_drift(rotation, start)
    assert rotated["moved"] > 0.1 and abs(rotated["sigma_min"] - 1) < 1e-5 and abs(rotated["sigma_max"] - 1) < 1e-5
    squash = start.clone()
    squash[0] *= 0.1  # shrink one output direction, as whitening shrinks the dominant one
    squashed = head_drift(squash, start)
    assert squashed["sigma_min"] == pytest.approx(0.1, rel=1e-5) and squashed["sigma_max"] == pytest.approx(1, rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        head_drift(start[:4], start)


def test_tfidf_control():
    pairs = [("猫在睡觉", "猫在睡觉", 5.0), ("猫在睡觉", "狗在跑", 1.0), ("今天下雨", "今天下大雨", 4.0),
             ("我爱北京", "他去上海", 0.0), ("天气很好", "天气不错", 3.0)]
    res = tfidf_spearman(pairs)
    assert set(res) == {"count", "tfidf"} and res["tfidf"] > 0.5


def test_config_is_frozen_and_validated():
    cfg = CONFIGS["smoke"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="sweep_pooling"):
        SimCSEConfig(sweep_pooling="max")
    with pytest.raises(ValueError, match="batch_size"):
        SimCSEConfig(sentences=10, batch_size=64)
    with pytest.raises(ValueError, match="frozen_lr_factors"):
        SimCSEConfig(frozen_lr_factors=(10.0,))
    with pytest.raises(ValueError, match="frozen_lr_factors"):
        SimCSEConfig(frozen_lr_factors=(1.0, -1.0))
    # every profile trains the same shipped encoder: they differ in data and learning rate only
    assert {(c.dropout, c.attention_dropout, c.max_len) for c in (CONFIGS[n] for n in ("smoke", "book", "full"))} == {
        (0.3, 0.0, 64)
    }
    assert CONFIGS["smoke"].sentences < CONFIGS["book"].sentences < CONFIGS["full"].sentences


@pytest.mark.parametrize("name", ["smoke", "book", "full"])
def test_each_profile_takes_one_training_step(name):
    """The profile's model (the shipped encoder with its dropout rates) and recipe, one step on one batch."""
    from kexue.data import load_sts_b
    from kexue.pretrained import load_zh_char_bert

    cfg = CONFIGS[name]
    model, tok = load_zh_char_bert(dropout=cfg.dropout, attention_dropout=cfg.attention_dropout)
    sentences = [a for a, _, _ in load_sts_b("train")[: cfg.batch_size]]
    before = [p.detach().clone() for p in model.encoder.parameters()]
    res = train_simcse(model, tok, sentences, pooling=cfg.sweep_pooling, batch_size=cfg.batch_size, lr=cfg.lr,
                       steps=1, temperature=cfg.temperature, max_len=cfg.max_len)
    assert len(res.losses) == 1 and torch.isfinite(torch.tensor(res.losses)).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))


@pytest.mark.slow
def test_run_returns_every_score():
    cfg = dataclasses.replace(
        CONFIGS["smoke"], sentences=64, batch_size=32, dropout_sweep=(0.1, 0.3), max_len=24,
        frozen_lr_factors=(1.0, 10.0),
    )
    result = run(cfg, seed=0)
    assert isinstance(result, RunResult)
    for p in POOLINGS:
        for key in (f"pretrained_raw_{p}", f"pretrained_whitening_{p}", f"random_whitening_{p}", f"simcse_{p}"):
            assert -1 <= result.metrics[key] <= 1
    assert set(result.artifacts["sweep"]) == {0.1, 0.3} and "frozen_linear" in result.metrics
    assert result.artifacts["sweep"][0.3] == result.metrics[f"simcse_{cfg.sweep_pooling}"]
    assert len(result.artifacts["losses"]["cls"]) == 2
    assert result.data["unlabelled"]["size"] == 64
    heads = result.artifacts["frozen_heads"]
    assert set(heads) == {cfg.lr, 10 * cfg.lr} and heads[cfg.lr]["spearman"] == result.metrics["frozen_linear"]
    assert all(h["steps"] == 2 and h["moved"] > 0 for h in heads.values())
    assert heads[10 * cfg.lr]["moved"] > heads[cfg.lr]["moved"]  # a larger lr moves the head further
    assert result.metrics["frozen_linear_moved"] == heads[cfg.lr]["moved"]


def _keeps_caller_flags(train) -> bool:
    """Whether ``train(model, tok)`` leaves every ``requires_grad`` flag as the caller set it,
    a frozen parameter's values untouched, and trains the rest."""
    tok = CharTokenizer.build(TEXTS, min_count=1)
    model = tiny_model(tok)
    model.encoder.token_embedding.weight.requires_grad_(False)
    for p in model.encoder.blocks[0].ffn.parameters():
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    frozen = [p.detach().clone() for p in model.parameters() if not p.requires_grad]
    train(model, tok)
    kept = [p.detach() for p in model.parameters() if not p.requires_grad]
    return [p.requires_grad for p in model.parameters()] == flags and len(kept) == len(frozen) and all(
        torch.equal(a, b) for a, b in zip(frozen, kept)
    )


@pytest.mark.parametrize("trainable", ["all", "linear"])
def test_train_simcse_restores_the_callers_flags_and_the_check_can_fail(trainable):
    def train(model, tok):
        train_simcse(model, tok, TEXTS, batch_size=16, lr=1e-2, steps=2, max_len=24, trainable=trainable)

    assert _keeps_caller_flags(train)

    def unfreezing(model, tok):  # the old bug: the flags come back all True after the linear variant
        train(model, tok)
        for p in model.parameters():
            p.requires_grad_(True)

    assert not _keeps_caller_flags(unfreezing)


@pytest.mark.slow
def test_budget_run_scores_a_random_encoder_with_one_simcse_step():
    """The budget curve's run (steps=0: the random-init control) with every training run capped at one step."""
    cfg = dataclasses.replace(ch01_budget.CONFIGS["smoke"], steps=0, sentences=128)
    with step_cap(1):
        result = ch01_budget.run(cfg, seed=0)
    keys = {"raw", "whitening", "tfidf", *(ch01_budget.lr_key(lr) for lr in cfg.lrs)}
    assert keys <= set(result.metrics)
    assert all(-1.0 <= result.metrics[k] <= 1.0 for k in keys)
    assert "mlm_accuracy" not in result.metrics  # a random encoder has no pretraining record


def test_budget_config_and_paths_are_checked():
    with pytest.raises(ValueError, match="steps must be at most"):
        ch01_budget.BudgetConfig(steps=4000)
    with pytest.raises(ValueError, match="lrs"):
        ch01_budget.BudgetConfig(lrs=())
    assert ch01_budget.budget_dir(250).name == "step250"
    assert ch01_budget.lr_key(1e-5) == "simcse_lr1e-05"
