"""The grow-then-train experiment of chapter 06: ``kexue.experiments.ch06_growth``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kexue.experiments.ch06_growth import (
    CONFIGS,
    GrowthConfig,
    TrainRecord,
    flops_per_token,
    model_configs,
    prepare_data,
    run,
    train_mlm,
)
from kexue.experiments.records import RunResult
from kexue.growth import symmetry_gap, widen
from kexue.nn import MaskedLM, TransformerConfig

SENTENCES = ["今天天气很好", "我们去公园散步吧", "这本书非常有意思", "他在北京工作了三年", "明天会下雨吗",
             "请把窗户关上", "猫在沙发上睡觉", "我喜欢喝绿茶", "火车晚点了半个小时", "图书馆周末也开门"]


def test_flops_formula():
    c = TransformerConfig(vocab_size=40, dim=16, depth=2, heads=2, ffn_dim=32, max_len=12)
    f1, f2 = flops_per_token(c, 8), flops_per_token(dataclasses.replace(c, dim=32, ffn_dim=64), 8)
    assert 2 < f2 / f1 < 4.5  # the blocks' FLOPs grow about 4x, the head's 2x
    assert flops_per_token(c, 8, mlm_head=False) < f1


def test_profiles_are_frozen_and_ordered():
    assert set(CONFIGS) == {"smoke", "book", "full"}
    smoke, book, full = CONFIGS["smoke"], CONFIGS["book"], CONFIGS["full"]
    assert smoke.small_dim <= book.small_dim <= full.small_dim
    assert smoke.small_steps < book.small_steps <= full.small_steps
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="factor"):
        dataclasses.replace(smoke, factor=1)


@pytest.mark.parametrize("profile", ["smoke", "book", "full"])
def test_each_profile_builds_its_models_and_takes_one_step(profile):
    """Each profile's small model, its widened twin and the scratch model build; growth is
    lossless on the held-out loss, and one training step of the grown model moves it."""
    cfg = dataclasses.replace(CONFIGS[profile], eval_sentences=4, batch_size=4)
    data = prepare_data(cfg, SENTENCES, SENTENCES[:4], seed=0)
    small_cfg, big_cfg = model_configs(cfg, data.vocab_size)
    torch.manual_seed(0)
    small = MaskedLM(small_cfg)
    grown = widen(small, cfg.factor)
    assert grown.config.dim == big_cfg.dim == cfg.factor * cfg.small_dim
    assert MaskedLM(big_cfg).config.ffn_dim == grown.config.ffn_dim
    rec_small = train_mlm(small, data, cfg, steps=1, data_seed=0, record=TrainRecord("small"))
    before = [p.detach().clone() for p in grown.parameters()]
    rec = train_mlm(grown, data, cfg, steps=1, data_seed=0, record=TrainRecord("grown"),
                    gap=lambda m: symmetry_gap(m, cfg.factor))
    assert rec.steps == [0, 1] and rec_small.steps == [0, 1]
    assert rec.val_loss[0] == pytest.approx(rec_small.val_loss[0], abs=1e-4)  # lossless growth
    assert all(torch.isfinite(torch.tensor(rec.val_loss)))
    assert rec.flops[0] == 0.0 < rec.flops[1]
    assert rec.symmetry_gap[-1] < 1e-4  # no noise, no dropout: still in the small model's image
    assert any(not torch.equal(a, b) for a, b in zip(before, grown.parameters()))


def test_train_mlm_same_data_seed_same_run_and_offsets():
    cfg = GrowthConfig(small_dim=8, heads=2, depth=1, max_len=16, batch_size=4, eval_every=2, eval_sentences=4)
    data = prepare_data(cfg, SENTENCES, SENTENCES[:4], seed=0)
    small_cfg, _ = model_configs(cfg, data.vocab_size)
    records = []
    for _ in range(2):
        torch.manual_seed(0)
        records.append(train_mlm(MaskedLM(small_cfg), data, cfg, steps=5, data_seed=3, record=TrainRecord("a"),
                                 step_offset=10, flops_offset=1.0, eval_at_start=False))
    a, b = records
    assert a.steps == [12, 14, 15] and a.val_loss == b.val_loss and a.flops == b.flops
    assert a.flops[0] > 1.0 and a.flops == sorted(a.flops)


@pytest.mark.slow
def test_run_tiny_end_to_end():
    cfg = GrowthConfig(small_dim=8, depth=1, heads=2, max_len=16, batch_size=8, small_steps=6, big_steps=4,
                       eval_every=2, eval_sentences=32)
    result = run(cfg, seed=0)
    assert isinstance(result, RunResult)
    recs = result.artifacts["records"]
    assert set(recs) == {"small", "grown", "grown+noise", "net2net", "scratch"}
    assert recs["small"].steps[-1] == 10 and recs["grown"].steps[0] == 6
    assert result.metrics["start_gap_grown"] < 1e-4 and result.metrics["start_gap_grown_noise"] < 1e-4
    assert result.metrics["max_symmetry_gap_grown"] < 1e-4 < result.metrics["final_symmetry_gap_grown_noise"]
    assert result.artifacts["scratch_steps"] >= cfg.big_steps
    assert recs["scratch"].flops[-1] == pytest.approx(recs["grown"].flops[-1], rel=0.2)  # equal compute
    assert set(result.data) == {"sts_b_train_sentences", "sts_b_valid_sentences"}
