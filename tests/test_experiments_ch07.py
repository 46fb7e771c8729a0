"""Chapter 07's experiment layer: configs, the accumulated SimCSE training, helpers and the gloo check."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kexue.accumulation import (
    contrastive_backward,
    grad_vector,
    rank_streams_reference_backward,
    simcse_loss,
)
from kexue.experiments.ch07_accumulation import (
    CONFIGS,
    AccumulationConfig,
    activation_peak,
    build_check_model,
    misscaled_gradient_updates,
    pair_rows,
    run,
    run_distributed_check,
    spawn_gloo,
    sts_score,
)
from kexue.experiments.records import RunResult
from kexue.experiments.simcse_training import train_simcse
from kexue.nn import MaskedLM, TransformerConfig
from kexue.tokenizer import CharTokenizer

SENTENCES = [f"第{i}句话说的是{'天地人和山水'[i % 6]}" for i in range(24)]
TINY = dict(dim=16, depth=1, heads=2, ffn_dim=32, max_len=16, dropout=0.2, attention_dropout=0.2)


def tiny_model(tok: CharTokenizer, seed: int = 0, **overrides) -> MaskedLM:
    torch.manual_seed(seed)
    return MaskedLM(TransformerConfig(**{**TINY, "vocab_size": tok.vocab_size, **overrides}))


def test_config_validation_and_profiles():
    assert AccumulationConfig(large_batch=20, micro_batch=8).micro_batch == 8  # micro-batches 8, 8, 4
    with pytest.raises(ValueError, match="micro_batch"):
        AccumulationConfig(micro_batch=0)
    with pytest.raises(ValueError, match="steps"):
        AccumulationConfig(steps=0)
    with pytest.raises(ValueError, match="memory_micro_batch"):
        AccumulationConfig(memory_batches=(4, 6), memory_micro_batch=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIGS["smoke"].steps = 2  # type: ignore[misc]
    for cfg in CONFIGS.values():
        assert cfg.large_batch > cfg.small_batch and cfg.large_batch % cfg.micro_batch == 0


@pytest.mark.parametrize("name", ["smoke", "book", "full"])
def test_each_profile_takes_one_training_step(name):
    """An encoder of the profile's shape, its recipe (AdamW, lr, tau, micro-batches), one step on a tiny batch."""
    cfg = CONFIGS[name]
    tok = CharTokenizer.build(SENTENCES, min_count=1)
    torch.manual_seed(0)
    model = MaskedLM(TransformerConfig(**cfg.encoder_config(tok.vocab_size)))
    before = [p.detach().clone() for p in model.encoder.parameters()]
    res = train_simcse(model, tok, SENTENCES, pooling="last-avg", batch_size=4, steps=1, lr=cfg.lr,
                       temperature=cfg.temperature, max_len=min(cfg.max_chars, 12), optimizer="adamw",
                       micro_batch_size=2)
    assert len(res.losses) == 1 and torch.isfinite(torch.tensor(res.losses)).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))


def test_accumulated_training_follows_the_full_batch_run():
    """Same seed, same batches: the two-pass step computes the full batch's loss and gradient.

    Dropout is off: one call over the whole batch and four calls over its micro-batches draw
    their dropout masks in a different order, so only a deterministic encoder matches bit for bit.
    """
    tok = CharTokenizer.build(SENTENCES, min_count=1)
    runs = {}
    for micro in (None, 2, 3):  # 3 does not divide 8: micro-batches of 3, 3 and 2 sentences
        model = tiny_model(tok, dropout=0.0, attention_dropout=0.0)
        res = train_simcse(model, tok, SENTENCES, pooling="last-avg", batch_size=8, steps=3, lr=1e-3,
                           max_len=12, optimizer="adamw", micro_batch_size=micro, seed=4)
        runs[micro] = (res.losses, [p.detach().clone() for p in model.encoder.parameters()])
    assert len(set(runs[None][0])) == 3  # the loss moves from step to step
    for micro in (2, 3):
        torch.testing.assert_close(torch.tensor(runs[micro][0]), torch.tensor(runs[None][0]), rtol=1e-5, atol=0)
        drift = max(float((a - b).abs().max()) for a, b in zip(runs[micro][1], runs[None][1]))
        assert drift < 1e-4  # rounding only: an Adam step here moves a weight by about lr = 1e-3


def test_helpers_pair_score_and_measure():
    tok = CharTokenizer.build(SENTENCES, min_count=1)
    ids = pair_rows(tok, SENTENCES[:3], 12)
    assert torch.equal(ids[0], ids[1]) and torch.equal(ids[4], ids[5]) and not torch.equal(ids[0], ids[2])
    model = tiny_model(tok).train()
    pairs = [(SENTENCES[i], SENTENCES[i + 1], float(i % 5)) for i in range(6)]
    rho = sts_score(model, tok, pairs, 12)
    assert -1.0 <= rho <= 1.0 and model.training  # the mode is restored after scoring
    from kexue.accumulation import SentenceEncoder

    enc = SentenceEncoder(model.encoder)
    peak = activation_peak(contrastive_backward, enc, pair_rows(tok, SENTENCES[:8], 12), simcse_loss, 4)
    assert peak > 0 and all(p.grad is None for p in enc.parameters())


def test_misscaled_gradient_hurts_sgd_and_clipping_not_adam():
    rows = {(r["optimizer"], r["clip"]): r for r in misscaled_gradient_updates(3.0)}
    adam, sgd, sgd_clip = rows["Adam", False], rows["SGD", False], rows["SGD", True]
    assert abs(adam["scale_update"] - 1) < 1e-6 and adam["others_update"] == 1
    assert abs(sgd["scale_update"] - 3) < 1e-12 and sgd["others_update"] == 1
    assert sgd_clip["others_update"] < 0.95  # clipping passes the harm to the other parameters
    assert all(r["logged_norm"] > 1.05 for r in rows.values())
    # k = 1 changes nothing: the ratios above measure the factor, not the replay
    assert all(abs(v - 1) < 1e-12 for r in misscaled_gradient_updates(1.0)
               for v in (r["scale_update"], r["others_update"], r["logged_norm"]))
    # a large eps removes Adam's scale invariance, so the Adam check can fail
    import unittest.mock

    real_adam = torch.optim.Adam
    adam_eps = lambda params, lr: real_adam(params, lr=lr, eps=10.0)  # noqa: E731
    with unittest.mock.patch.object(torch.optim, "Adam", adam_eps):
        broken = misscaled_gradient_updates(3.0)[0]
    assert abs(broken["scale_update"] - 1) > 0.5


def test_distributed_check_refuses_bad_specs():
    with pytest.raises(ValueError, match="missing"):
        run_distributed_check({"ids": torch.zeros(4, 3)})
    spec = dict(encoder_config={}, ids=torch.zeros(6, 3), micro_batch_size=1, seed=0, temperature=0.1)
    with pytest.raises(ValueError, match="evenly"):
        run_distributed_check(spec, world_size=4)
    with pytest.raises(ValueError, match="world_size"):
        spawn_gloo(print, world_size=0)


@pytest.mark.slow
def test_two_process_gloo_equals_one_process():
    vocab = 30
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (4, 6), generator=g)
    ids[:, 4:][torch.rand(4, 2, generator=g) < 0.5] = 0
    ids = ids.repeat_interleave(2, dim=0)
    spec = dict(encoder_config={**TINY, "vocab_size": vocab, "max_len": 8}, ids=ids, micro_batch_size=2, seed=3,
                temperature=0.1)
    results = run_distributed_check(spec, world_size=2)
    enc, scale = build_check_model(spec)
    enc.train()
    rows = spec["ids"].shape[0] // 2
    shards = [spec["ids"][r * rows : (r + 1) * rows] for r in range(2)]
    loss = rank_streams_reference_backward(
        enc, shards, lambda h: simcse_loss(h, scale.temperature()), 2, [spec["seed"] + 1 + r for r in range(2)]
    )
    assert grad_vector(enc).abs().max() > 0
    for out in results:
        torch.testing.assert_close(out["loss"], loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["log_scale_grad"], scale.log_scale.grad, rtol=1e-10, atol=1e-14)
        for name, p in enc.named_parameters():
            torch.testing.assert_close(out[f"two_pass.{name}"], p.grad, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(out[f"gather.{name}"], p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_run_on_a_tiny_profile():
    cfg = dataclasses.replace(CONFIGS["smoke"], steps=2, small_batch=2, large_batch=4, micro_batch=2, eval_pairs=12)
    result = run(cfg, seed=0)
    assert isinstance(result, RunResult)
    spearman = {"spearman_before", "spearman_small", "spearman_large"}
    memory = {f"memory_{k}_{b}" for k in ("full", "twopass") for b in cfg.memory_batches}
    assert set(result.metrics) == spearman | memory
    assert all(-1 <= result.metrics[k] <= 1 for k in spearman)
    # the full batch's saved activations grow with the batch; the two-pass method's stay near one micro-batch
    small, big = min(cfg.memory_batches), max(cfg.memory_batches)
    assert result.metrics[f"memory_full_{big}"] > 0.7 * big / small * result.metrics[f"memory_full_{small}"]
    assert result.metrics[f"memory_twopass_{big}"] < 1.2 * result.metrics[f"memory_twopass_{small}"]
    assert [len(v) for v in result.artifacts["losses"].values()] == [2, 2]
    assert result.data["sts_b_test"]["size"] == 12
