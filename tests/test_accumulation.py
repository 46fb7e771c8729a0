"""Tests for kexue.accumulation (book chapter 07): exact gradient accumulation for contrastive losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kexue.accumulation import (
    LogitScale,
    SavedTensorMeter,
    SentenceEncoder,
    contrastive_backward,
    full_batch_backward,
    grad_vector,
    info_nce,
    info_nce_reference,
    naive_accumulation_backward,
    openclip_style_backward,
    relative_error,
    simcse_embedding_grad,
    simcse_loss,
    simcse_loss_reference,
    simcse_surrogate,
    symmetric_info_nce,
)
from kexue.nn import TransformerConfig, TransformerEncoder

VOCAB = 30
TINY = dict(
    vocab_size=VOCAB, dim=16, depth=1, heads=2, ffn_dim=32, max_len=8, dropout=0.2, attention_dropout=0.2
)


def tiny_encoder(dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> SentenceEncoder:
    torch.manual_seed(seed)
    encoder = SentenceEncoder(TransformerEncoder(TransformerConfig(**{**TINY, **overrides})))
    return encoder.to(dtype).train()


def pair_ids(sentences: int, seq: int = 6, seed: int = 1) -> torch.Tensor:
    """Adjacent-pair layout: rows 2k and 2k+1 are the same sentence; some trailing padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (sentences, seq), generator=g)
    lengths = torch.randint(2, seq + 1, (sentences,), generator=g)
    ids[torch.arange(seq)[None, :] >= lengths[:, None]] = 0
    return ids.repeat_interleave(2, dim=0)


class MLP(nn.Module):
    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        layers = [nn.Linear(12, 24), nn.Dropout(0.3), nn.Tanh()]
        if batchnorm:
            layers.insert(1, nn.BatchNorm1d(24))
        self.net = nn.Sequential(*layers, nn.Linear(24, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------
# losses vs formula-level references
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [True, False])
def test_info_nce_matches_reference_forward_and_gradient(normalize):
    torch.manual_seed(0)
    a = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    tau = 0.3 if normalize else 2.0
    fast = info_nce(a, b, tau, normalize=normalize)
    slow = info_nce_reference(a, b, tau, normalize=normalize)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    g_fast = torch.autograd.grad(fast, (a, b))
    g_slow = torch.autograd.grad(slow, (a, b))
    for x, y in zip(g_fast, g_slow):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_symmetric_info_nce_is_mean_of_both_directions():
    torch.manual_seed(0)
    a = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    fast = symmetric_info_nce(a, b, 0.5)
    slow = 0.5 * (info_nce_reference(a, b, 0.5) + info_nce_reference(b, a, 0.5))
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    for x, y in zip(torch.autograd.grad(fast, (a, b)), torch.autograd.grad(slow, (a, b))):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_simcse_loss_matches_reference_forward_and_gradient(normalize):
    torch.manual_seed(0)
    h = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    tau = 0.05 if normalize else 3.0
    fast = simcse_loss(h, tau, normalize=normalize)
    slow = simcse_loss_reference(h, tau, normalize=normalize)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(fast, h)[0], torch.autograd.grad(slow, h)[0], rtol=1e-10, atol=1e-12)


def test_simcse_loss_signature_and_layout():
    # Chapter 01 imports simcse_loss(h, temperature=0.05, *, normalize=True)
    torch.manual_seed(0)
    h = torch.randn(4, 3, dtype=torch.float64)
    assert simcse_loss(h) == simcse_loss(h, 0.05, normalize=True)
    with pytest.raises(TypeError):
        simcse_loss(h, 0.05, True)  # normalize is keyword-only
    # adjacent-pair layout: identical adjacent rows give a lower loss than mis-paired rows
    base = torch.randn(4, 16, dtype=torch.float64)
    paired = base.repeat_interleave(2, dim=0)
    shuffled = base.repeat(2, 1)  # rows 0..3 then 0..3 again: partners are not adjacent
    assert simcse_loss(paired) < simcse_loss(shuffled)


def test_su_closed_form_and_surrogate_gradients():
    torch.manual_seed(0)
    h = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    tau = 1.5
    loss = simcse_loss(h, tau, normalize=False)
    (g,) = torch.autograd.grad(loss, h)
    torch.testing.assert_close(simcse_embedding_grad(h.detach(), tau), g, rtol=1e-12, atol=1e-13)
    surrogate = simcse_surrogate(h, tau)
    (g_sur,) = torch.autograd.grad(surrogate, h)
    torch.testing.assert_close(g_sur, g, rtol=1e-12, atol=1e-13)
    assert abs(float((surrogate - loss).detach())) > 1e-3  # same gradient, different value


# ---------------------------------------------------------------------------
# the two-pass method
# ---------------------------------------------------------------------------
def _grads_two_pass_vs_full(dtype, micro, sentences=6, loss_temp=0.05):
    ids = pair_ids(sentences)
    enc = tiny_encoder(dtype)

    def loss_fn(h):
        return simcse_loss(h, loss_temp)

    torch.manual_seed(123)
    full_loss = full_batch_backward(enc, ids, loss_fn, micro)
    full = grad_vector(enc).clone()
    state_after_full = torch.get_rng_state()
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    loss = contrastive_backward(enc, ids, loss_fn, micro)
    ours = grad_vector(enc).clone()
    assert torch.equal(torch.get_rng_state(), state_after_full)
    return loss, full_loss, ours, full, enc, ids, loss_fn


@pytest.mark.parametrize("micro", [1, 2, 4, 12, 5, 7, 8, 11])  # 5, 7, 8, 11 do not divide 12 rows
def test_two_pass_equals_full_batch_float64_with_dropout(micro):
    loss, full_loss, ours, full, *_ = _grads_two_pass_vs_full(torch.float64, micro)
    assert full.abs().max() > 0
    torch.testing.assert_close(loss, full_loss, rtol=1e-12, atol=1e-12)
    assert relative_error(ours, full) <= 1e-10


def test_two_pass_equals_full_batch_float32():
    _, _, ours, full, *_ = _grads_two_pass_vs_full(torch.float32, 4)
    assert relative_error(ours, full) <= 1e-6


def test_dropout_is_active_and_replay_matters():
    _, _, ours, full, enc, ids, loss_fn = _grads_two_pass_vs_full(torch.float64, 4)
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    contrastive_backward(enc, ids, loss_fn, 4, replay_rng=False)
    assert relative_error(grad_vector(enc), full) > 1e-3
    # with dropout off, both agree even without replay
    enc.eval()
    enc.zero_grad(set_to_none=True)
    full_batch_backward(enc, ids, loss_fn, 4)
    ref = grad_vector(enc).clone()
    enc.zero_grad(set_to_none=True)
    contrastive_backward(enc, ids, loss_fn, 4, replay_rng=False)
    assert relative_error(grad_vector(enc), ref) <= 1e-10


@pytest.mark.parametrize("micro", [5, 8])  # smaller last micro-batch; 5 splits a SimCSE pair
def test_uneven_micro_batches_need_the_replay(micro):
    _, _, ours, full, enc, ids, loss_fn = _grads_two_pass_vs_full(torch.float64, micro)
    assert ids.shape[0] % micro != 0
    assert relative_error(ours, full) <= 1e-10
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    contrastive_backward(enc, ids, loss_fn, micro, replay_rng=False)
    assert relative_error(grad_vector(enc), full) > 1e-3


def test_gradients_accumulate_onto_existing_grad():
    _, _, ours, full, enc, ids, loss_fn = _grads_two_pass_vs_full(torch.float64, 4)
    torch.manual_seed(123)
    contrastive_backward(enc, ids, loss_fn, 4)  # .grad already holds `ours`
    assert relative_error(grad_vector(enc), 2 * full) <= 1e-10


def test_two_inputs_asymmetric_loss():
    torch.manual_seed(0)
    enc = tiny_encoder(torch.float64)
    q, d = pair_ids(4, seed=2)[::2], pair_ids(4, seed=3)[::2]

    def loss_fn(hq, hd):
        return info_nce(hq, hd, 0.1)

    torch.manual_seed(7)
    full_batch_backward(enc, (q, d), loss_fn, 2)
    full = grad_vector(enc).clone()
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    contrastive_backward(enc, (q, d), loss_fn, 2)
    assert relative_error(grad_vector(enc), full) <= 1e-10
    # a micro-batch of 3 does not divide the 4 rows of each input
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    full_batch_backward(enc, (q, d), loss_fn, 3)
    full = grad_vector(enc).clone()
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    contrastive_backward(enc, (q, d), loss_fn, 3)
    assert relative_error(grad_vector(enc), full) <= 1e-10


def test_naive_accumulation_differs_from_full_batch():
    ids = pair_ids(6)
    enc = tiny_encoder(torch.float64).eval()  # deterministic: the difference is the objective, not dropout
    full_batch_backward(enc, ids, simcse_loss)
    full = grad_vector(enc).clone()
    enc.zero_grad(set_to_none=True)
    naive_accumulation_backward(enc, ids, simcse_loss, 4)
    assert relative_error(grad_vector(enc), full) > 0.05
    enc.zero_grad(set_to_none=True)
    naive_accumulation_backward(enc, ids, simcse_loss, 12)  # one micro-batch == full batch
    assert relative_error(grad_vector(enc), full) <= 1e-10
    enc.zero_grad(set_to_none=True)
    loss = naive_accumulation_backward(enc, ids, simcse_loss, 8)  # micro-batches of 8 and 4 rows
    expected = (simcse_loss(enc(ids[:8])) + simcse_loss(enc(ids[8:]))) / 2
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="even"):  # an odd micro-batch would split a pair
        naive_accumulation_backward(enc, ids, simcse_loss, 5)


@pytest.mark.parametrize("micro", [4, 5], ids=["dividing", "uneven-5-5-2"])
def test_logit_scale_gradient_exact_and_openclip_factor(micro):
    """12 rows in micro-batches of 4 (three equal) or 5 (5, 5 and 2): three chunks either way."""
    ids = pair_ids(6)
    enc = tiny_encoder(torch.float64)
    scale = LogitScale(0.1, dtype=torch.float64)

    def loss_fn(h):
        return simcse_loss(h, scale.temperature())

    torch.manual_seed(5)
    full_batch_backward(enc, ids, loss_fn, micro)
    full_enc, full_scale = grad_vector(enc).clone(), scale.log_scale.grad.clone()
    assert full_scale.abs() > 0
    enc.zero_grad(set_to_none=True)
    scale.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    contrastive_backward(enc, ids, loss_fn, micro)
    assert relative_error(grad_vector(enc), full_enc) <= 1e-10
    torch.testing.assert_close(scale.log_scale.grad, full_scale, rtol=1e-12, atol=0)
    # open_clip's scheme: encoder exact (with replay), scale gradient times the number of chunks
    enc.zero_grad(set_to_none=True)
    scale.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    openclip_style_backward(enc, ids, loss_fn, micro, replay_rng=True)
    assert relative_error(grad_vector(enc), full_enc) <= 1e-10
    torch.testing.assert_close(scale.log_scale.grad, 3 * full_scale, rtol=1e-10, atol=0)
    # without the replay (open_clip as shipped) its encoder gradient is wrong under dropout
    enc.zero_grad(set_to_none=True)
    scale.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    openclip_style_backward(enc, ids, loss_fn, micro)
    assert relative_error(grad_vector(enc), full_enc) > 1e-3


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_batchnorm_raises():
    enc = MLP(batchnorm=True).double()
    x = torch.randn(8, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="BatchNorm"):
        contrastive_backward(enc, x, simcse_loss, 4)
    enc.eval()  # eval-mode BatchNorm is per-sample: allowed
    contrastive_backward(enc, x, simcse_loss, 4)


def test_mlp_two_pass_exact():
    torch.manual_seed(0)
    enc = MLP().double()
    x = torch.randn(16, 12, dtype=torch.float64).repeat_interleave(2, dim=0)
    torch.manual_seed(1)
    full_batch_backward(enc, x, simcse_loss, 8)
    full = grad_vector(enc).clone()
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    contrastive_backward(enc, x, simcse_loss, 8)
    assert relative_error(grad_vector(enc), full) <= 1e-10


@pytest.mark.parametrize(
    "inputs, micro, match",
    [
        (torch.randn(8, 12), -1, ">= 1"),
        (torch.randn(8, 12), 0, ">= 1"),
        (torch.randn(0, 12), 2, "empty"),
        ((), 2, "empty"),
        ((torch.randn(8, 12), torch.randn(6, 12)), 2, "same batch size"),
    ],
)
def test_bad_inputs_raise_value_error(inputs, micro, match):
    enc = MLP()
    with pytest.raises(ValueError, match=match):
        contrastive_backward(enc, inputs, lambda *h: simcse_loss(h[0]), micro)


def test_bad_types_and_losses():
    enc = MLP()
    x = torch.randn(8, 12)
    with pytest.raises(TypeError, match="micro_batch_size"):
        contrastive_backward(enc, x, simcse_loss, 2.0)
    with pytest.raises(TypeError, match="encoder"):
        contrastive_backward(lambda t: t, x, simcse_loss, 2)
    with pytest.raises(ValueError, match="scalar"):
        contrastive_backward(enc, x, lambda h: h.sum(0), 2)
    with pytest.raises(ValueError, match="temperature"):
        simcse_loss(torch.randn(4, 3), -1.0)
    with pytest.raises(ValueError, match="even"):
        simcse_loss(torch.randn(5, 3))
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3))


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------
def _saved_peak(enc, ids, method, micro):
    enc.zero_grad(set_to_none=True)
    with SavedTensorMeter(exclude=enc.parameters()) as meter:
        method(enc, ids, simcse_loss, micro)
    assert meter.live == 0
    return meter.peak


def _loss_graph_bytes(enc, ids):
    """Bytes the loss alone saves for backward, on detached embeddings of the whole batch."""
    with torch.no_grad():
        h = enc(ids)
    with SavedTensorMeter() as meter:
        simcse_loss(h.requires_grad_(True))
        peak = meter.peak
    return peak


def test_activation_memory_grows_with_micro_batch_not_batch():
    enc = tiny_encoder(torch.float32)
    small, large = pair_ids(8), pair_ids(32)
    two_small = _saved_peak(enc, small, contrastive_backward, 4)
    two_large = _saved_peak(enc, large, contrastive_backward, 4)
    full_small = _saved_peak(enc, small, full_batch_backward, 4)
    full_large = _saved_peak(enc, large, full_batch_backward, 4)
    assert two_small > 0
    assert full_large > 3 * full_small  # full batch: linear in the batch (4x the rows)
    # two-pass: one micro-batch of encoder activations, plus the loss's own saved tensors (the last
    # micro-batch keeps its graph while the loss is evaluated); the encoder part does not grow
    loss_bytes = _loss_graph_bytes(enc, large)
    assert two_large < 1.3 * two_small + loss_bytes
    assert two_large < 0.5 * full_large
    # the encoder part grows with the micro-batch (4x the rows)
    assert _saved_peak(enc, large, contrastive_backward, 16) - loss_bytes > 2.5 * (two_large - loss_bytes)


def test_distributed_needs_process_group():
    from kexue.accumulation import all_gather_with_grad, distributed_contrastive_backward

    with pytest.raises(ValueError, match="process group"):
        all_gather_with_grad(torch.randn(2, 3))
    with pytest.raises(ValueError, match="process group"):
        distributed_contrastive_backward(MLP(), torch.randn(4, 12), simcse_loss, 2)


def test_every_exported_name_exists_and_the_losses_are_shared():
    import kexue.accumulation as acc
    import kexue.losses as losses

    assert all(hasattr(acc, name) for name in acc.__all__)
    for name in ("info_nce", "symmetric_info_nce", "simcse_loss", "LogitScale", "simcse_embedding_grad"):
        assert name in acc.__all__ and getattr(acc, name) is getattr(losses, name)
