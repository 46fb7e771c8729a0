"""Tests for chapter 02's experiment (kexue.experiments.ch02_globalpointer)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kexue.data import NerExample
from kexue.experiments import ch02_globalpointer as ch02
from kexue.experiments.config import Profiles
from kexue.experiments.records import load_record
from kexue.metrics import entity_prf
from kexue.nn import TransformerConfig, TransformerEncoder
from kexue.tokenizer import CharTokenizer


def _mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n) < torch.tensor(lengths)[:, None]


def _tiny_encoder() -> TransformerEncoder:
    return TransformerEncoder(TransformerConfig(vocab_size=50, dim=32, depth=2, heads=2, ffn_dim=64, max_len=64))


def _tiny_data(lengths: list[int], spans: list[list[tuple[int, int, int]]], n: int, seed: int = 0) -> ch02.NerData:
    g = torch.Generator().manual_seed(seed)
    mask = _mask(lengths, n)
    ids = torch.randint(5, 50, (len(lengths), n), generator=g) * mask
    return ch02.NerData(ids, mask, spans, ("A", "B", "C"))


PROFILE_CASES = [*ch02.CONFIGS, "smoke-top"]


@pytest.mark.parametrize("name", PROFILE_CASES)
def test_each_profile_builds_every_head_and_takes_one_step(name: str) -> None:
    """Each profile's config builds the NER model of each head and takes one fit step on 2 tiny sentences."""
    cfg = ch02.CONFIGS[name.split("-")[0]]
    if name == "smoke-top":
        cfg = dataclasses.replace(cfg, train_top=True)
    one_step = dataclasses.replace(cfg, epochs=1, batch_size=2)
    enc = _tiny_encoder()
    data = _tiny_data([10, 7], [[(0, 1, 3), (1, 2, 2)], [(2, 4, 5)]], 10)
    for head in cfg.heads:
        torch.manual_seed(13)
        model = ch02.NerModel(enc, head, num_types=3, head_size=cfg.head_size, train_encoder=cfg.finetune,
                              train_top=cfg.train_top)
        feats = ch02.cache_features(model, data)
        before = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
        history = ch02.train_ner(model, feats, data.mask, data.spans, one_step, seed=0)
        assert history.steps == [1] and torch.isfinite(torch.tensor(history.losses)).all()
        after = dict(model.named_parameters())
        assert all(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("head."))
        pred = model.predict(*ch02._trim(torch.arange(2), feats, data.mask))
        assert len(pred) == 2 and all(0 < i <= j < int(data.mask[b].sum()) - 1 for b, p in enumerate(pred)
                                      for _, i, j in p)
    with pytest.raises(ValueError, match="head"):
        ch02.NerModel(enc, "softmax", num_types=3)


def test_configs_are_profiles_and_full_is_the_recorded_run() -> None:
    assert isinstance(ch02.CONFIGS, Profiles)
    smoke, book, full = (ch02.CONFIGS[p] for p in ("smoke", "book", "full"))
    assert not smoke.finetune and full.finetune and book.n_train > smoke.n_train
    assert book.epochs * book.n_train > smoke.epochs * smoke.n_train
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.epochs = 1  # type: ignore[misc]
    # the record of tools/ner_full.py was made with the full config (its epochs cut on CPU)
    recorded = load_record("ner_full")["config"]
    for key, value in dataclasses.asdict(full).items():
        if key not in ("epochs", "nested_heads"):
            assert recorded[key] == (list(value) if isinstance(value, tuple) else value), key


def test_optimizer_groups_keep_the_crf_multiplier_and_encoder_rate() -> None:
    cfg = ch02.CONFIGS["full"]
    model = ch02.NerModel(_tiny_encoder(), "crf", 3, train_encoder=True)
    groups = ch02.make_optimizer(model, cfg).param_groups
    assert [g["lr"] for g in groups] == [cfg.lr_head, cfg.lr_head * cfg.crf_lr_multiplier, cfg.lr_encoder]
    crf_params = {id(p) for p in model.head.crf.parameters()}
    assert {id(p) for p in groups[1]["params"]} == crf_params


def test_train_ner_is_the_plain_constant_rate_adamw_loop() -> None:
    """The port onto fit keeps the recipe: AdamW groups at constant rates over the same batches."""
    cfg = dataclasses.replace(ch02.CONFIGS["smoke"], epochs=3, batch_size=4, length_buckets=2)
    data = _tiny_data([9, 9, 7, 6, 5, 3, 8, 4, 9], [[(0, 1, 2)], [(1, 3, 5)], [(2, 2, 2)], [], [(0, 1, 3)], [],
                                                   [(1, 2, 4)], [(0, 1, 1)], [(2, 5, 7)]], 9)
    enc = _tiny_encoder()
    torch.manual_seed(0)
    a = ch02.NerModel(enc, "crf", 3)
    b = ch02.NerModel(enc, "crf", 3)
    b.load_state_dict(a.state_dict())
    feats = ch02.cache_features(a, data)
    history = ch02.train_ner(a, feats, data.mask, data.spans, cfg, seed=5)
    opt = ch02.make_optimizer(b, cfg)
    gen = torch.Generator().manual_seed(5)
    losses = []
    for _ in range(cfg.epochs):
        for idx in ch02._batches(data.mask, cfg.batch_size, gen, cfg.length_buckets):
            loss = b.loss(*ch02._trim(idx, feats, data.mask), [data.spans[i] for i in idx.tolist()])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert len(history.losses) == 9
    torch.testing.assert_close(torch.tensor(history.losses), torch.tensor(losses))
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=k)


def test_prepare_ner_token_coordinates() -> None:
    tok = CharTokenizer.build(["北京大学在北京", "张三"], min_count=1)
    exs = [NerExample("北京大学在北京", ((0, 1, "LOC"), (0, 3, "ORG"), (5, 6, "LOC"))),
           NerExample("张三", ((0, 1, "PER"),))]
    data = ch02.prepare_ner(exs, tok, max_len=7, types=("PER", "LOC", "ORG"))
    # [CLS] shifts characters by one; the span (5, 6) falls off the truncated text (5 chars kept)
    assert data.spans[0] == [(1, 1, 2), (2, 1, 4)] and data.spans[1] == [(0, 1, 2)]
    assert data.input_ids.shape == (2, 7) and data.mask.sum().item() == 7 + 4
    with pytest.raises(ValueError, match="types"):
        ch02.prepare_ner(exs, tok, max_len=7, types=("PER",))


@pytest.mark.parametrize("finetune", [True, False])
def test_fit_head_pipeline(finetune: bool) -> None:
    enc = _tiny_encoder()
    data = _tiny_data([9, 9, 7, 6, 5, 3], [[(0, 1, 2)], [(1, 3, 5)], [(2, 2, 2)], [], [(0, 1, 3)], []], 9, seed=15)
    cfg = dataclasses.replace(ch02.CONFIGS["full" if finetune else "smoke"], epochs=2, batch_size=4)
    probe = ch02.NerModel(enc, "gp", 3, train_encoder=cfg.finetune)
    feats = ch02.cache_features(probe, data)
    assert feats.dtype == (torch.long if finetune else torch.float32)
    if not finetune:  # length-sorted batching equals one plain pass on the real tokens
        ref = probe.features(data.input_ids, data.mask)
        torch.testing.assert_close(feats[data.mask], ref[data.mask], rtol=1e-5, atol=1e-5)
    for head in ("crf", "egp"):
        r = ch02.fit_head(enc, head, data, data, feats, feats, cfg, seed=1)
        assert len(r.losses) == 4 and len(r.f1_by_epoch) == 2 and len(r.pred) == 6
        assert r.f1_by_epoch[-1] == r.prf.f1 == entity_prf(r.pred, [set(s) for s in data.spans]).f1
        assert set(r.per_type) == {0, 1, 2} and r.params == sum(p.numel() for p in
                                                                 ch02.NerModel(enc, head, 3).head.parameters())


def test_epoch_batches_are_order_independent_and_cover_each_row_once() -> None:
    lengths = torch.randint(2, 30, (50,), generator=torch.Generator().manual_seed(3))
    mask = torch.arange(30) < lengths[:, None]
    a, b = ch02.epoch_batches(mask, 8, seed=4, bucket=2), ch02.epoch_batches(mask, 8, seed=4, bucket=2)
    late = b(20)  # epoch 2 asked for first
    assert torch.equal(a(20), late) and torch.equal(a(3), b(3))
    for epoch in range(3):
        rows = torch.cat([a(epoch * 7 + i) for i in range(7)])
        assert torch.equal(rows.sort().values, torch.arange(50))


def test_length_buckets_cover_every_row_once_and_cut_padding() -> None:
    torch.manual_seed(16)
    lengths = torch.randint(2, 60, (500,))
    mask = torch.arange(60) < lengths[:, None]
    plain = ch02._batches(mask, 16, torch.Generator().manual_seed(0))
    bucketed = ch02._batches(mask, 16, torch.Generator().manual_seed(0), bucket=10)
    for batches in (plain, bucketed):
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(500))
    padded = lambda bs: sum(len(b) * int(lengths[b].max()) for b in bs)  # noqa: E731
    assert padded(bucketed) < 0.75 * padded(plain)


def test_evaluate_ner_keeps_row_order() -> None:
    torch.manual_seed(17)
    enc = _tiny_encoder()
    ids = torch.randint(5, 50, (7, 12))
    mask = _mask([12, 4, 9, 12, 6, 3, 10], 12)
    model = ch02.NerModel(enc, "gp", 3, head_size=8, train_encoder=True)
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 2.0)  # many positive cells, so the comparison is not between empty sets
    batched = ch02.evaluate_ner(model, ids, mask, batch_size=3)
    model.eval()  # as evaluate_ner does: no dropout
    single = [model.predict(*ch02._trim(torch.tensor([i]), ids, mask))[0] for i in range(7)]
    assert batched == single and sum(map(len, single)) > 0


def test_nested_experiment_inner_spans_and_bio_ceiling() -> None:
    assert ch02.inner_spans({(2, 1, 5), (0, 1, 2), (1, 4, 4), (0, 7, 8)}) == {(0, 1, 2), (1, 4, 4)}
    data = _tiny_data([10, 8, 6], [[(2, 1, 5), (0, 1, 2)], [(1, 2, 3)], [(2, 1, 4), (1, 3, 4)]], 10)
    cfg = dataclasses.replace(ch02.CONFIGS["smoke"], epochs=1, batch_size=3, max_len=10)
    enc = _tiny_encoder()
    feats = ch02.cache_features(ch02.NerModel(enc, "gp", 3), data)
    nested = ch02.nested_experiment(enc, data, data, feats, feats, cfg)
    assert set(nested.runs) == set(cfg.nested_heads) == set(nested.inner_recall)
    assert nested.inner == [{(0, 1, 2)}, set(), {(1, 3, 4)}]
    # BIO keeps the outer span of each nest: 3 of 5 gold spans
    assert (nested.bio_bound.tp, nested.bio_bound.n_gold, nested.bio_bound.precision) == (3, 5, 1.0)


@pytest.mark.slow
def test_run_on_a_small_msra_subset() -> None:
    """The chapter's run end to end (shipped encoder, MSRA, silver nested set) on a few sentences."""
    cfg = dataclasses.replace(ch02.CONFIGS["smoke"], n_train=48, n_test=24, epochs=1, max_len=24)
    result = ch02.run(cfg, seed=0)
    heads = cfg.heads
    assert {f"{h}_f1" for h in heads} | {"rope_gain", "nested_gp_inner_recall"} <= set(result.metrics)
    assert set(result.artifacts["runs"]) == set(heads) and result.artifacts["sizes"]["test_sentences"] == 24
    assert result.data["msra_train"]["size"] == 48 and result.artifacts["nested"] is not None
    again = ch02.run(cfg, seed=0)
    assert again.metrics == result.metrics  # deterministic given the seed


def test_prepare_ner_refuses_malformed_spans() -> None:
    """A span with end < start (or outside its text) was kept before; now it names the example."""
    tok = CharTokenizer.build(["北京大学在北京"], min_count=1)
    for span in ((3, 1, "LOC"), (-1, 1, "LOC"), (5, 7, "LOC")):
        with pytest.raises(ValueError, match=r"examples\[1\].*start <= end"):
            ch02.prepare_ner([NerExample("北京", ()), NerExample("北京大学在北京", (span,))], tok, max_len=7,
                             types=("LOC",))


def test_check_rope_gap_fails_when_the_article_drop_is_reproduced() -> None:
    """The notebook's RoPE check, on the recorded gap and on broken variants of it."""
    full = load_record("ner_full")["runs"]
    recorded = 100 * (full["gp"]["prf"]["f1"] - full["gp_norope"]["prf"]["f1"])
    shortfall = ch02.check_rope_gap(recorded)
    assert shortfall == pytest.approx(ch02.ARTICLE_ROPE_GAP - recorded)
    assert ch02.ARTICLE_ROPE_GAP == pytest.approx(32.92)
    # a run that reproduces the article's drop (within the margin) fails the check
    for broken in (ch02.ARTICLE_ROPE_GAP, ch02.ARTICLE_ROPE_GAP - 9.9, 40.0):
        with pytest.raises(AssertionError, match="within 10 points"):
            ch02.check_rope_gap(broken)
    # and so does a run where RoPE does not help
    for broken in (0.0, -3.0):
        with pytest.raises(AssertionError, match="does not help"):
            ch02.check_rope_gap(broken)
    with pytest.raises(ValueError):
        ch02.check_rope_gap(5.0, margin=0.0)


def test_check_bio_loses_inner_spans_counts_and_fails_without_nesting() -> None:
    nested = [{(1, 1, 4), (0, 1, 2), (0, 3, 4)}, {(2, 0, 5)}, {(1, 0, 3), (1, 2, 3)}]
    assert ch02.bio_round_trip(sorted(nested[0]), 8) == {(1, 1, 4)}
    assert ch02.check_bio_loses_inner_spans(nested, 8) == 3
    # broken variants: gold without nesting, and a "round trip" that keeps nested spans
    with pytest.raises(AssertionError, match="lost no span"):
        ch02.check_bio_loses_inner_spans([{(0, 1, 2), (1, 4, 5)}], 8)
    with pytest.raises(AssertionError, match="lost no span"):
        ch02.check_bio_loses_inner_spans(nested, 8, round_trip=lambda g, n: set(g))
    # a round trip that drops an outer span instead of the inner one
    with pytest.raises(AssertionError, match="not the nested inner spans"):
        ch02.check_bio_loses_inner_spans(nested, 8, round_trip=lambda g, n: set(g) - {max(g)})
