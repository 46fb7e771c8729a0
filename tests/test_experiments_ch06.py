"""The grow-then-train experiment of chapter 06: ``kexue.experiments.ch06_growth``."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from kexue.experiments.ch06_growth import (
    CONFIGS,
    GrowthConfig,
    TrainRecord,
    adam_twin_groups,
    copy_coefficients,
    flops_per_token,
    model_configs,
    prepare_data,
    run,
    train_mlm,
    unused_rope_rows,
)
from kexue.experiments.loop import fit
from kexue.experiments.records import RunResult
from kexue.growth import Expansion, growth_gains, symmetry_gap, widen
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
    assert result.metrics["max_unused_rope_row_grown"] == 0.0 < result.metrics["max_unused_rope_row_grown_noise"]
    assert result.artifacts["scratch_steps"] >= cfg.big_steps
    assert recs["scratch"].flops[-1] == pytest.approx(recs["grown"].flops[-1], rel=0.2)  # equal compute
    assert set(result.data) == {"sts_b_train_sentences", "sts_b_valid_sentences"}


# ----------------------------------------------------------------------------- checks of sections 6, 7 and 9
def _toy_cfg(**kw) -> TransformerConfig:
    base = dict(vocab_size=40, dim=16, depth=2, heads=2, ffn_dim=32, max_len=12, dropout=0.0,
                attention_dropout=0.0, position="rotary")
    base.update(kw)
    return TransformerConfig(**base)


def _toy_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(5, 40, (3, 10), generator=g), torch.ones(3, 10, dtype=torch.bool)


def _token_loss(model, batch):
    ids, mask = batch
    return torch.nn.functional.cross_entropy(model(ids, mask)[mask], ids[mask])


def _train(model, steps=8, optimizer=None, lr=1e-2, weight_decay=0.01):
    batch = _toy_batch()
    fit(model, lambda step: batch, _token_loss, steps=steps, lr=lr, weight_decay=weight_decay,
        optimizer=optimizer, schedule="constant", progress=False, seed=0)
    return model


def _moved(before, after):
    return max((after[n] - before[n]).abs().max().item() for n in after)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adamw+dropout"])
def test_empty_rope_pairs_stay_exactly_zero_without_noise(optimizer):
    """Eq. ch06-rope-saddle: q and k both zero at the empty pairs, so neither gets gradient."""
    torch.manual_seed(0)
    small = MaskedLM(_toy_cfg(dropout=0.1 if "dropout" in optimizer else 0.0)).double()
    grown = widen(small, 2)
    before = unused_rope_rows(grown, 2)
    assert all(r.numel() > 0 and torch.count_nonzero(r) == 0 for r in before.values())
    opt = torch.optim.SGD(grown.parameters(), lr=0.1) if optimizer == "sgd" else None
    _train(grown, optimizer=opt)
    after = unused_rope_rows(grown, 2)
    assert all(torch.count_nonzero(r) == 0 for r in after.values())
    if "dropout" in optimizer:  # dropout did move the model off the small model's image
        assert symmetry_gap(grown) > 1e-3


def test_noise_seeds_the_empty_rope_pairs_and_keeps_the_function():
    torch.manual_seed(0)
    small = MaskedLM(_toy_cfg()).double().eval()
    grown = widen(small, 2, noise=0.1, generator=torch.Generator().manual_seed(0))
    ids, mask = _toy_batch()
    with torch.no_grad():
        torch.testing.assert_close(grown(ids, mask), small(ids, mask), atol=1e-10, rtol=0)
    before = unused_rope_rows(grown, 2)
    after = unused_rope_rows(_train(grown), 2)
    assert min((after[n] - before[n]).abs().max().item() for n in after) > 1e-4  # query and key rows move


def test_the_empty_rows_check_fails_on_broken_variants(monkeypatch):
    """The 'stays exactly zero' check can fail: (a) a grown model whose empty query rows are
    non-zero (still the same function, since the key rows are zero) is no saddle, and its key
    rows move; (b) a row selector pointing at the used pairs reports rows that move."""
    torch.manual_seed(0)
    small = MaskedLM(_toy_cfg()).double()
    # (a) break the saddle on one side only
    broken = widen(small, 2)
    with torch.no_grad():
        for block in broken.encoder.blocks:
            empty = Expansion((1.0, 0.0), group=2).zero_mask(small.config.dim)
            block.attention.query.weight[empty] = 0.05 * torch.randn_like(block.attention.query.weight[empty])
    start = unused_rope_rows(broken, 2)
    assert torch.count_nonzero(unused_rope_rows(_train(broken), 2)["key"]) > 0
    assert _moved(start, unused_rope_rows(broken, 2)) > 1e-4
    # (b) a selector of the wrong rows
    original = Expansion.zero_mask
    monkeypatch.setattr(Expansion, "zero_mask", lambda self, n, device=None: ~original(self, n, device))
    grown = widen(small, 2)
    wrong_before = unused_rope_rows(grown, 2)
    assert _moved(wrong_before, unused_rope_rows(_train(grown), 2)) > 1e-4


def test_unused_rope_rows_validates():
    with pytest.raises(ValueError, match="rotary"):
        unused_rope_rows(MaskedLM(_toy_cfg(position="learned")), 2)
    with pytest.raises(ValueError, match="factor"):
        unused_rope_rows(MaskedLM(_toy_cfg()), 1)
    with pytest.raises(ValueError, match="MaskedLM"):
        unused_rope_rows(torch.nn.Linear(2, 2), 2)


@pytest.mark.parametrize("position,heads", [("learned", "size"), ("rotary", "size"), ("learned", "count")])
def test_copy_coefficients_give_the_gains(position, heads):
    small = MaskedLM(_toy_cfg(position=position))
    coeffs = copy_coefficients(small, 2, heads=heads)
    gains = growth_gains(small, 2, heads=heads)
    assert set(coeffs) == set(gains)
    for name, (c, m) in coeffs.items():
        assert m * c * c == pytest.approx(gains[name], rel=1e-6), name
    assert coeffs["encoder.blocks.0.attention.value.weight"] == (pytest.approx(0.5), 4)
    with pytest.raises(ValueError, match="noise"):
        copy_coefficients(small, 2, noise=0.1)


@pytest.mark.parametrize("position,heads", [("learned", "size"), ("rotary", "size"), ("rotary", "count")])
def test_adamw_on_the_grown_model_is_adamw_on_the_small_one_with_eq_ch06_adam(position, heads):
    torch.manual_seed(1)
    base = MaskedLM(_toy_cfg(position=position)).double()
    lr, eps, wd = 1e-2, 1e-8, 0.01

    def gap(groups_of):
        small = copy.deepcopy(base)
        grown = _train(widen(small, 2, heads=heads), steps=3, lr=lr, weight_decay=wd)
        _train(small, steps=3, optimizer=torch.optim.AdamW(groups_of(small)))
        regrown = dict(widen(small, 2, heads=heads).named_parameters())
        return max((p - regrown[n]).abs().max().item() for n, p in grown.named_parameters())

    def derived(m):
        return adam_twin_groups(m, 2, lr=lr, eps=eps, weight_decay=wd, heads=heads)

    assert gap(derived) < 1e-12
    # broken variants: the naive rate, and the derived rate with an unscaled eps
    assert gap(lambda m: [{"params": list(m.parameters()), "lr": lr, "eps": eps, "weight_decay": wd}]) > 1e-4
    assert gap(lambda m: [dict(g, eps=eps) for g in derived(m)]) > 1e-6


def test_growth_keeps_a_causal_decoder_lossless():
    torch.manual_seed(2)
    small = MaskedLM(_toy_cfg(norm="pre", position="learned", causal=True)).double().eval()
    big = widen(small, 2).eval()
    assert big.config.causal
    ids, mask = _toy_batch()
    with torch.no_grad():
        torch.testing.assert_close(big(ids, mask), small(ids, mask), atol=1e-10, rtol=0)
