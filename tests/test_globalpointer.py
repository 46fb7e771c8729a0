"""Tests for kexue.globalpointer and kexue.metrics (book chapter 02); the experiment is tested in test_experiments_ch02."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torchcrf import CRF

from kexue import globalpointer as gp
from kexue import spans as kspans
from kexue.metrics import entity_prf, per_type_prf, tensor_f1
from kexue.rope import apply_rope, rope_matrix

F64 = torch.float64


def _mask(lengths: list[int], n: int, left: bool = False) -> torch.Tensor:
    ar = torch.arange(n)
    lens = torch.tensor(lengths)[:, None]
    return ar >= n - lens if left else ar < lens


# --------------------------------------------------------------------------- heads vs references

@pytest.mark.parametrize("rope", [True, False])
def test_global_pointer_matches_reference_forward_and_grad(rope: bool) -> None:
    torch.manual_seed(0)
    head = gp.GlobalPointer(12, 3, head_size=8, rope=rope).to(F64)
    h = torch.randn(2, 7, 12, dtype=F64, requires_grad=True)
    mask = _mask([7, 4], 7)
    fast, ref = head(h, mask), gp.global_pointer_reference(h, mask, head)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(fast) * (fast > -1e10)  # ignore masked cells' constant value
    g1 = torch.autograd.grad((fast * w).sum(), [h, head.dense.weight])
    g2 = torch.autograd.grad((ref * w).sum(), [h, head.dense.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rope", [True, False])
def test_efficient_global_pointer_matches_e3_literal(rope: bool) -> None:
    torch.manual_seed(1)
    head = gp.EfficientGlobalPointer(10, 4, head_size=6, rope=rope).to(F64)
    h = torch.randn(2, 6, 10, dtype=F64, requires_grad=True)
    mask = _mask([6, 3], 6)
    fast, ref = head(h, mask), gp.efficient_global_pointer_reference(h, mask, head)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(fast) * (fast > -1e10)
    params = [h, head.p_dense.weight, head.q_dense.weight, head.q_dense.bias]
    for a, b in zip(torch.autograd.grad((fast * w).sum(), params), torch.autograd.grad((ref * w).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_rope_matrix_relativity_and_fast_rope() -> None:
    torch.manual_seed(2)
    d = 16
    pos = torch.arange(40, dtype=F64)
    r = rope_matrix(pos, d)  # the (n, d, d) batch the references use
    assert r.shape == (40, d, d) and getattr(gp, "rope_matrix", rope_matrix) is rope_matrix  # no private copy
    q, k = torch.randn(d, dtype=F64), torch.randn(d, dtype=F64)
    for i, j in [(0, 5), (3, 39), (17, 17)]:
        torch.testing.assert_close((r[i] @ q) @ (r[j] @ k), q @ r[j - i] @ k, rtol=1e-12, atol=1e-12)
    x = torch.randn(40, d, dtype=F64)
    torch.testing.assert_close(apply_rope(x, pos), torch.einsum("nde,ne->nd", r, x), rtol=1e-12, atol=1e-12)
    # the tiling bug (repeat instead of repeat_interleave) breaks the pairing
    theta = 10000 ** (-torch.arange(0, d, 2, dtype=F64) / d)
    ang = pos[:, None] * theta.repeat(2)
    rot = torch.stack([-x[:, 1::2], x[:, ::2]], -1).flatten(1)
    assert not torch.allclose(x * ang.cos() + rot * ang.sin(), apply_rope(x, pos))


def test_span_count_and_masking_rules() -> None:
    torch.manual_seed(3)
    head = gp.GlobalPointer(8, 2, head_size=4)
    n = 9
    mask = torch.stack([_mask([6], n)[0], _mask([5], n, left=True)[0]])
    s = head(torch.randn(2, n, 8), mask)
    valid = s > torch.finfo(s.dtype).min
    lengths = mask.sum(1)
    # number of candidate spans per type = L (L + 1) / 2, left or right padding
    torch.testing.assert_close(valid.sum((-1, -2))[:, 0], lengths * (lengths + 1) // 2)
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert not valid[..., ii > jj].any()


def test_left_and_right_padding_invariance() -> None:
    torch.manual_seed(4)
    head = gp.GlobalPointer(8, 2, head_size=4, rope=False).to(F64)
    egp = gp.EfficientGlobalPointer(8, 2, head_size=4, rope=False).to(F64)
    x = torch.randn(1, 5, 8, dtype=F64)
    pad = torch.randn(1, 3, 8, dtype=F64)
    for h in (head, egp):
        base = h(x, torch.ones(1, 5, dtype=torch.bool))
        right = h(torch.cat([x, pad], 1), _mask([5], 8))[..., :5, :5]
        left = h(torch.cat([pad, x], 1), _mask([5], 8, left=True))[..., 3:, 3:]
        torch.testing.assert_close(right, base)
        torch.testing.assert_close(left, base)  # no RoPE: positions do not matter
    rope = gp.GlobalPointer(8, 2, head_size=4).to(F64)
    base = rope(x, torch.ones(1, 5, dtype=torch.bool))
    torch.testing.assert_close(rope(torch.cat([x, pad], 1), _mask([5], 8))[..., :5, :5], base)
    # RoPE scores depend on j - i only, so a shift by left padding changes nothing either
    torch.testing.assert_close(rope(torch.cat([pad, x], 1), _mask([5], 8, left=True))[..., 3:, 3:], base)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_masking_no_overflow_or_nan(dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    head = gp.GlobalPointer(16, 3, head_size=8).to(dtype)
    h = torch.randn(2, 10, 16).to(dtype).requires_grad_()
    mask = _mask([10, 4], 10)
    s = head(h, mask)
    assert s.dtype == dtype and torch.isfinite(s).all()
    y = gp.span_targets([[(0, 1, 2)], [(2, 0, 3)]], 3, 10)
    loss = gp.global_pointer_loss(s, y)
    assert loss.dtype == dtype and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(head.dense.weight.grad).all()
    # -1e12 (bert4keras v0.10.6) does overflow in fp16: the reason for finfo.min
    assert torch.isinf(torch.tensor(-1e12, dtype=torch.float16))


# --------------------------------------------------------------------------- the loss

def test_loss_equals_literal_pairwise_sum_and_softmax_ce() -> None:
    torch.manual_seed(6)
    s = torch.randn(5, 11, dtype=F64) * 3
    y = (torch.rand(5, 11) < 0.3).to(F64)
    y[0] = 0  # no positive
    y[1] = 1  # no negative
    torch.testing.assert_close(gp.multilabel_categorical_crossentropy(s, y), gp.mcce_reference(s, y),
                               rtol=1e-12, atol=1e-12)
    # literal (M11): two separate sums with explicit loops
    for r in range(5):
        neg = sum(math.exp(float(v)) for v, t in zip(s[r], y[r]) if t == 0)
        pos = sum(math.exp(-float(v)) for v, t in zip(s[r], y[r]) if t == 1)
        assert math.isclose(float(gp.multilabel_categorical_crossentropy(s[r], y[r])),
                            math.log1p(neg) + math.log1p(pos), rel_tol=1e-12)
    # one positive and no threshold class: (M8) is softmax CE
    t = torch.tensor([3])
    pairs = torch.logsumexp(s[0] - s[0, t], -1)
    torch.testing.assert_close(pairs, torch.nn.functional.cross_entropy(s[:1], t), rtol=1e-12, atol=1e-12)


def test_loss_gradient_closed_form_and_finite_differences() -> None:
    torch.manual_seed(7)
    s = (torch.randn(3, 9, dtype=F64) * 2).requires_grad_()
    y = (torch.rand(3, 9) < 0.4).to(F64)
    assert torch.autograd.gradcheck(lambda x: gp.multilabel_categorical_crossentropy(x, y), (s,))
    (g,) = torch.autograd.grad(gp.multilabel_categorical_crossentropy(s, y).sum(), s)
    e = s.detach().exp()
    z_neg = 1 + (e * (1 - y)).sum(-1, keepdim=True)
    z_pos = 1 + (y / e).sum(-1, keepdim=True)
    closed = torch.where(y.bool(), -(1 / e) / z_pos, e / z_neg)
    torch.testing.assert_close(g, closed, rtol=1e-12, atol=1e-12)
    # the negatives' gradients sum to 1 - 1/Z_- < 1
    torch.testing.assert_close((g * (1 - y)).sum(-1), 1 - 1 / z_neg[:, 0], rtol=1e-12, atol=1e-12)


def test_masked_cells_contribute_nothing() -> None:
    s = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    y = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    for fill in (-math.inf, torch.finfo(F64).min):
        padded = torch.cat([s, torch.full((1, 4), fill, dtype=F64)], -1)
        yp = torch.cat([y, torch.zeros(1, 4, dtype=F64)], -1)
        torch.testing.assert_close(gp.multilabel_categorical_crossentropy(padded, yp),
                                   gp.multilabel_categorical_crossentropy(s, y))


def test_sparse_loss_matches_dense_including_empty_positive_sets() -> None:
    torch.manual_seed(8)
    s = (torch.randn(4, 20, dtype=F64) * 2).requires_grad_()
    pos = torch.tensor([[0, 5, -1], [19, -1, -1], [-1, -1, -1], [1, 2, 3]])
    y = torch.zeros(4, 20, dtype=F64)
    for r, row in enumerate(pos.tolist()):
        for c in row:
            if c >= 0:
                y[r, c] = 1
    dense, sparse = gp.multilabel_categorical_crossentropy(s, y), gp.sparse_multilabel_categorical_crossentropy(s, pos)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-10)
    g1, = torch.autograd.grad(dense.sum(), s)
    g2, = torch.autograd.grad(sparse.sum(), s)
    assert torch.isfinite(g2).all()
    torch.testing.assert_close(g2, g1, rtol=1e-8, atol=1e-10)


def test_global_pointer_loss_averages_rows() -> None:
    torch.manual_seed(9)
    s = torch.randn(2, 3, 4, 4, dtype=F64)
    y = (torch.rand(2, 3, 4, 4) < 0.2).to(F64)
    rows = [gp.mcce_reference(s[b, t].flatten(), y[b, t].flatten()) for b in range(2) for t in range(3)]
    torch.testing.assert_close(gp.global_pointer_loss(s, y), torch.stack(rows).mean())


def test_loss_bad_input() -> None:
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="targets"):
        gp.multilabel_categorical_crossentropy(s, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="0/1"):
        gp.multilabel_categorical_crossentropy(s, torch.full((2, 3), 0.5))
    with pytest.raises(TypeError, match="logits"):
        gp.multilabel_categorical_crossentropy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positives"):
        gp.sparse_multilabel_categorical_crossentropy(s, torch.tensor([[3], [0]]))
    with pytest.raises(TypeError, match="positives"):
        gp.sparse_multilabel_categorical_crossentropy(s, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="logits"):
        gp.global_pointer_loss(s, s)


# --------------------------------------------------------------------------- decoding

def test_decode_recovers_nested_gold_and_bio_loses_it() -> None:
    n = 8
    gold = [{(2, 0, 3), (1, 0, 1), (1, 5, 5)}, {(0, 2, 6), (0, 3, 4), (2, 2, 6)}, set()]
    y = gp.span_targets([sorted(g) for g in gold], 3, n, dtype=F64)
    logits = gp.mask_span_logits(torch.where(y.bool(), 5.0, -5.0), _mask([8, 7, 3], n))
    assert gp.decode_spans(logits) == gold
    assert gp.decode_spans_reference(logits) == gold
    # nested spans inside one type and across types are lost by BIO
    bio = [gp.bio_to_spans(gp.spans_to_bio(sorted(g), n)) for g in gold]
    assert bio[0] == {(2, 0, 3), (1, 5, 5)} and bio[1] in ({(0, 2, 6)}, {(2, 2, 6)})


def test_decode_matches_reference_on_random_logits_and_masks_cells() -> None:
    torch.manual_seed(10)
    logits = gp.mask_span_logits(torch.randn(3, 2, 6, 6) - 1.0, _mask([6, 2, 4], 6))
    got = gp.decode_spans(logits)
    assert got == gp.decode_spans_reference(logits)
    assert all(i <= j for g in got for _, i, j in g)
    assert gp.decode_spans(logits, threshold=100.0) == [set(), set(), set()]
    with pytest.raises(ValueError, match="logits"):
        gp.decode_spans(torch.zeros(3, 6, 6))


def test_bio_round_trip_of_flat_spans() -> None:
    # one implementation: the method module re-exports kexue.spans'
    assert gp.spans_to_bio is kspans.spans_to_bio and gp.bio_to_spans is kspans.bio_to_spans
    random.seed(0)
    for _ in range(50):
        n, spans, p = 12, set(), 0
        while p < 12:
            length = random.randint(1, 4)
            if random.random() < 0.5 and p + length <= n:
                spans.add((random.randrange(3), p, p + length - 1))
            p += length
        assert gp.bio_to_spans(gp.spans_to_bio(sorted(spans), n)) == spans


# --------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("m, gp_n, egp_n, crf_n", [(3, 295_296, 99_206, 5_432), (10, 984_320, 101_012, 16_590),
                                                    (9, 885_888, 100_754, 14_972), (100, 9_843_200, 124_232, 194_970)])
def test_parameter_counts(m: int, gp_n: int, egp_n: int, crf_n: int) -> None:
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(gp.GlobalPointer(768, m)) == gp.gp_param_count(768, m) == gp_n
    assert count(gp.EfficientGlobalPointer(768, m)) == gp.egp_param_count(768, m) == egp_n
    # bert4keras' CRF: Dense(2m+1) + (2m+1)² transitions (ours adds start/end vectors)
    assert gp.crf_param_count(768, m) == crf_n
    assert count(gp.CrfTagger(768, m)) == crf_n + 2 * (2 * m + 1)
    assert gp.gp_param_count(768, m, bias=False) == 2 * 768 * 64 * m
    assert gp.egp_param_count(768, m, bias=False) == 2 * 768 * 64 + 4 * 64 * m


def test_head_bad_input() -> None:
    head = gp.GlobalPointer(8, 2, head_size=4)
    with pytest.raises(ValueError, match="hidden"):
        head(torch.zeros(2, 5, 7), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        head(torch.zeros(2, 5, 8), torch.full((2, 5), 0.5))
    with pytest.raises(ValueError, match="mask"):
        head(torch.zeros(2, 5, 8), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="hidden"):
        head(torch.zeros(2, 5, 8, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="head_size"):
        gp.GlobalPointer(8, 2, head_size=5)
    with pytest.raises(ValueError, match="num_types"):
        gp.EfficientGlobalPointer(8, 0)


# --------------------------------------------------------------------------- CRF

def _torchcrf_copy(crf: gp.LinearChainCRF) -> CRF:
    ref = CRF(crf.num_tags, batch_first=True).to(F64)
    with torch.no_grad():
        ref.start_transitions.copy_(crf.start)
        ref.end_transitions.copy_(crf.end)
        ref.transitions.copy_(crf.trans)
    return ref


def test_crf_against_brute_force_and_pytorch_crf() -> None:
    torch.manual_seed(11)
    crf = gp.LinearChainCRF(3).to(F64)
    with torch.no_grad():
        crf.trans.normal_()
    em = torch.randn(3, 5, 3, dtype=F64)
    mask = _mask([5, 3, 1], 5)
    log_z = crf.log_partition(em, mask)
    paths = crf.decode(em, mask)
    for b, length in enumerate([5, 3, 1]):
        z, best = gp.crf_brute_force(crf, em[b, :length])
        torch.testing.assert_close(log_z[b], z, rtol=1e-12, atol=1e-12)
        assert paths[b] == best
    ref = _torchcrf_copy(crf)
    tags = torch.randint(0, 3, (3, 5))
    torch.testing.assert_close(-crf(em, tags, mask), ref(em, tags, mask, reduction="mean"), rtol=1e-12, atol=1e-12)
    assert paths == ref.decode(em, mask)
    # gradients of the log-likelihood agree with pytorch-crf's
    e1 = em.clone().requires_grad_()
    e2 = em.clone().requires_grad_()
    crf(e1, tags, mask).backward()
    (-ref(e2, tags, mask, reduction="mean")).backward()
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-10, atol=1e-12)


def test_crf_bad_input() -> None:
    crf = gp.LinearChainCRF(3)
    with pytest.raises(ValueError, match="emissions"):
        crf.log_partition(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="first timestep"):
        crf.decode(torch.zeros(1, 4, 3), _mask([3], 4, left=True))
    with pytest.raises(ValueError, match="num_tags"):
        gp.LinearChainCRF(0)


# --------------------------------------------------------------------------- metrics

def test_entity_prf_and_tensor_f1_agree() -> None:
    torch.manual_seed(12)
    y = (torch.rand(4, 2, 7, 7) < 0.1).to(torch.float32)
    logits = gp.mask_span_logits(torch.randn(4, 2, 7, 7) + 2.0 * y - 1.5, torch.ones(4, 7, dtype=torch.bool))
    y = y * (logits > torch.finfo(logits.dtype).min)
    pred = gp.decode_spans(logits)
    gold = [{tuple(x) for x in y[b].nonzero().tolist()} for b in range(4)]
    prf = entity_prf(pred, gold)
    assert math.isclose(float(tensor_f1(logits, y)), prf.f1, rel_tol=1e-12)
    tp = sum(len(p & g) for p, g in zip(pred, gold))
    assert prf.tp == tp and math.isclose(prf.precision, tp / sum(map(len, pred)))
    assert math.isclose(prf.recall, tp / sum(map(len, gold)))
    per = per_type_prf(pred, gold)
    assert sum(v.tp for v in per.values()) == tp


def test_metrics_edge_cases_and_bad_input() -> None:
    assert entity_prf([set()], [set()]).f1 == 0.0
    assert entity_prf([{(0, 1, 1)}], [{(0, 1, 1)}]).f1 == 1.0
    # the closed/half-open mix-up gives 0 F1 (a bug reported against bojone/GlobalPointer)
    assert entity_prf([{(0, 1, 2)}], [{(0, 1, 1)}]).f1 == 0.0
    with pytest.raises(ValueError, match="one entry per sample"):
        entity_prf([set()], [set(), set()])
    with pytest.raises(TypeError, match="sequences"):
        entity_prf({(0, 1, 1)}, {(0, 1, 1)})
    with pytest.raises(ValueError, match="shape"):
        tensor_f1(torch.zeros(2, 3), torch.zeros(3, 2))


# --------------------------------------------------------------------------- small end-to-end checks

def test_learning_signal_on_tiny_synthetic_task() -> None:
    """A GP head on fixed random features learns to emit the planted spans."""
    torch.manual_seed(14)
    n, b = 10, 16
    h = torch.randn(b, n, 16)
    spans = [[(0, 2, 4)] for _ in range(b)]
    h[:, 2] += 3.0
    h[:, 4] -= 3.0
    mask = torch.ones(b, n, dtype=torch.bool)
    head = gp.GlobalPointer(16, 1, head_size=8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-2)
    y = gp.span_targets(spans, 1, n)
    losses = []
    for _ in range(60):
        loss = gp.global_pointer_loss(head(h, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert entity_prf(gp.decode_spans(head(h, mask)), [set(s) for s in spans]).f1 > 0.9


@torch.no_grad()
def test_brute_force_helper_is_exhaustive() -> None:
    crf = gp.LinearChainCRF(2).to(F64)
    em = torch.zeros(3, 2, dtype=F64)
    z, _ = gp.crf_brute_force(crf, em)
    scores = [crf.score(em[None], torch.tensor([p])).item() for p in itertools.product(range(2), repeat=3)]
    assert math.isclose(float(z), math.log(sum(math.exp(v) for v in scores)), rel_tol=1e-12)


# --------------------------------------------------------------------------- the fused training loss

def _dense_mcce_rows(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The pairwise reference (ch02-loss, left side) per (sample, type) row; masked cells dropped first."""
    rows = []
    for r, t in zip(s.flatten(0, 1).flatten(1), y.flatten(0, 1).flatten(1)):
        keep = r > torch.finfo(r.dtype).min
        rows.append(gp.mcce_reference(r[keep], t[keep]))
    return torch.stack(rows)


@pytest.mark.parametrize("sparse", [False, True])
def test_fused_loss_matches_pairwise_reference_values_and_gradients(sparse: bool) -> None:
    torch.manual_seed(20)
    n, m = 7, 3
    mask = torch.stack([_mask([7], n)[0], _mask([4], n)[0], _mask([5], n, left=True)[0]])
    s = gp.mask_span_logits(torch.randn(3, m, n, n, dtype=F64) * 3, mask).requires_grad_()
    spans = [[(0, 1, 3), (1, 0, 0), (1, 2, 6), (2, 5, 6)], [(0, 0, 3)], []]
    targets = (gp.span_indices(spans, m, n, mask=mask) if sparse
               else gp.span_targets(spans, m, n, dtype=F64, mask=mask))
    y = gp.span_targets(spans, m, n, dtype=F64)
    loss = gp.global_pointer_loss(s, targets, mask)
    ref = _dense_mcce_rows(s, y).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(loss, s)
    (g_ref,) = torch.autograd.grad(gp.multilabel_categorical_crossentropy(s.flatten(2), y.flatten(2)).mean(), s)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    assert g[s.detach() == torch.finfo(F64).min].abs().max() < 1e-300  # masked cells: no gradient
    x = torch.randn(2, 2, 4, 4, dtype=F64, requires_grad=True)
    yy = (torch.rand(2, 2, 4, 4) < 0.3).to(F64)
    assert torch.autograd.gradcheck(lambda v: gp.global_pointer_loss(v, yy), (x,))


def test_fused_loss_is_exact_where_the_subtraction_form_cancels() -> None:
    """A positive far above every negative: (ch02-sparse)'s a + log(1 - e^{b-a}) loses the negatives in
    float32 (the broken variant below), the fused loss keeps them, in both of its shift branches."""
    for top in (30.0, 90.0):  # 90 takes the 'largest negative' shift, 30 the plain one
        x = torch.full((1, 1, 4, 4), -10.0, dtype=F64)
        x[0, 0, 0, 1] = top
        y = torch.zeros_like(x)
        y[0, 0, 0, 1] = 1
        exact = math.log1p(15 * math.exp(-10)) + math.log1p(math.exp(-top))
        got = gp.global_pointer_loss(x.float(), y.float())
        assert math.isclose(float(got), exact, rel_tol=1e-5), (top, float(got), exact)
        assert math.isclose(float(gp.global_pointer_loss(x, y)), exact, rel_tol=1e-12)
    # the broken variant: the subtraction form without the direct fallback, in float32
    s = x.float().flatten()
    a = torch.logaddexp(torch.tensor(0.0), torch.logsumexp(s, 0))
    b = s[1]
    broken = float(a + torch.log1p(-torch.exp(b - a).clamp(max=1 - 1.2e-7)))
    assert abs(broken - math.log1p(15 * math.exp(-10))) > 1.0
    sparse = gp.sparse_multilabel_categorical_crossentropy(x.float().flatten(2), torch.tensor([[[1]]]))
    assert math.isclose(float(sparse), exact, rel_tol=1e-3)


def test_fused_loss_gradient_in_float32_and_bf16_autocast() -> None:
    torch.manual_seed(21)
    head = gp.GlobalPointer(16, 3, head_size=8)
    h = torch.randn(4, 12, 16)
    mask = _mask([12, 9, 5, 1], 12)
    spans = [[(0, 1, 2), (2, 3, 8)], [(1, 0, 0)], [(2, 4, 4)], []]
    idx = gp.span_indices(spans, 3, 12, mask=mask)
    loss = gp.global_pointer_loss(head(h, mask), idx)
    g32 = torch.autograd.grad(loss, head.dense.weight)[0]
    ref = gp.global_pointer_loss(head.double()(h.double(), mask), idx)
    g64 = torch.autograd.grad(ref, head.dense.weight)[0]
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-6)
    head.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the optional bf16 path
        logits = head(h, mask)
        low = gp.global_pointer_loss(logits, idx)
    assert logits.dtype == torch.bfloat16 and low.dtype == torch.bfloat16
    g16 = torch.autograd.grad(low, head.dense.weight)[0]
    assert torch.isfinite(g16).all()
    torch.testing.assert_close(low.double(), ref, rtol=3e-2, atol=3e-2)
    assert F.cosine_similarity(g16.flatten().double(), g64.flatten(), 0) > 0.99


def test_positive_on_a_masked_cell_is_refused_everywhere() -> None:
    """Before: the padded positive made the float32 loss about 1e38 and the float16 one NaN."""
    torch.manual_seed(22)
    head = gp.GlobalPointer(8, 2, head_size=4)
    mask = _mask([5, 3], 6)
    with torch.no_grad():
        logits = head(torch.randn(2, 6, 8), mask)
    bad = [[(0, 1, 2)], [(1, 2, 4)]]  # sample 1 has 3 real tokens: the span ends on padding
    y = gp.span_targets(bad, 2, 6)
    assert float(-logits[1, 1, 2, 4]) > 1e38  # its positive term log(1 + e^{-s}) would exceed 1e38
    for call in (lambda: gp.global_pointer_loss(logits, y),
                 lambda: gp.global_pointer_loss(logits, gp.span_indices(bad, 2, 6)),
                 lambda: gp.multilabel_categorical_crossentropy(logits.flatten(2), y.flatten(2)),
                 lambda: gp.sparse_multilabel_categorical_crossentropy(
                     logits.flatten(2), gp.span_indices(bad, 2, 6)),
                 lambda: gp.global_pointer_loss(logits.half(), y)):
        with pytest.raises(ValueError, match="masked cell"):
            call()
    with pytest.raises(ValueError, match="masked token"):
        gp.span_targets(bad, 2, 6, mask=mask)
    # j < i is masked too, and the mask argument catches a positive the logits cannot show
    with pytest.raises(ValueError, match="start 3, end 1"):
        gp.global_pointer_loss(logits, torch.tensor([[[3 * 6 + 1], [-1]], [[-1], [-1]]]))
    unmasked = torch.randn(2, 2, 6, 6)
    with pytest.raises(ValueError, match="masked cell"):
        gp.global_pointer_loss(unmasked, gp.span_targets(bad, 2, 6), mask)


def test_span_targets_refuse_bad_spans_and_sparse_targets_agree() -> None:
    for spans, match in (([[(0, 3, 2)]], "start <= end"), ([[(-1, 1, 2)]], "type"), ([[(2, 1, 2)]], "type"),
                         ([[(0, 1, 6)]], "end < n"), ([[(0, -1, 2)]], "start <= end"),
                         ([[(0, 1.0, 2)]], "ints"), ([[(0, 1)]], "ints")):
        with pytest.raises(ValueError, match=match):
            gp.span_targets(spans, 2, 6)
        with pytest.raises(ValueError, match=match):
            gp.span_indices(spans, 2, 6)
    with pytest.raises(TypeError, match="spans"):
        gp.span_targets(torch.zeros(1, 1, 3, dtype=torch.long), 2, 6)
    with pytest.raises(ValueError, match="num_types"):
        gp.span_targets([[]], 0, 6)
    spans = [[(0, 1, 2), (1, 0, 4), (0, 1, 2), (0, 3, 3)], [], [(1, 5, 5)]]  # a duplicate
    idx = gp.span_indices(spans, 2, 6)
    assert idx.shape == (3, 2, 2) and idx[0, 0].tolist() == [1 * 6 + 2, 3 * 6 + 3]
    dense = gp.span_targets(spans, 2, 6)
    rebuilt = torch.zeros(3 * 2, 37).scatter_(1, idx.view(6, -1).masked_fill(idx.view(6, -1) < 0, 36), 1.0)
    torch.testing.assert_close(rebuilt[:, :36].view_as(dense), dense)
    s = torch.randn(3, 2, 6, 6, dtype=F64)
    torch.testing.assert_close(gp.global_pointer_loss(s, idx), gp.global_pointer_loss(s, dense))


def test_sparse_loss_refuses_duplicate_indices() -> None:
    """Duplicates counted a positive twice: 3.63 instead of the dense 3.43 in the reported case."""
    torch.manual_seed(23)
    s = torch.randn(1, 10, dtype=F64) * 2
    y = torch.zeros(1, 10, dtype=F64)
    y[0, [2, 7]] = 1
    dense = gp.multilabel_categorical_crossentropy(s, y)
    torch.testing.assert_close(gp.sparse_multilabel_categorical_crossentropy(s, torch.tensor([[2, 7, -1, -1]])), dense)
    with pytest.raises(ValueError, match="repeat"):
        gp.sparse_multilabel_categorical_crossentropy(s, torch.tensor([[2, 7, 7, -1]]))
    with pytest.raises(ValueError, match="repeat"):
        gp.global_pointer_loss(torch.zeros(1, 1, 3, 3), torch.tensor([[[1, 1]]]))


def test_masks_follow_the_token_mask_contract() -> None:
    torch.manual_seed(24)
    head = gp.GlobalPointer(8, 2, head_size=4)
    egp = gp.EfficientGlobalPointer(8, 2, head_size=4)
    h = torch.randn(2, 5, 8)
    bool_mask = _mask([5, 3], 5)
    for mod in (head, egp):
        ref = mod(h, bool_mask)
        torch.testing.assert_close(mod(h, bool_mask.long()), ref)  # a tokenizer's 0/1 attention mask
        torch.testing.assert_close(mod(h, None), mod(h, torch.ones(2, 5, dtype=torch.bool)))
        with pytest.raises(TypeError, match="mask == 0"):  # an additive mask, with the fix in the message
            mod(h, torch.zeros(2, 5).masked_fill(~bool_mask, -1e4))
        with pytest.raises(ValueError, match="mask"):
            mod(h, torch.full((2, 5), 2))
    torch.testing.assert_close(gp.mask_span_logits(ref, bool_mask.int()), gp.mask_span_logits(ref, bool_mask))
    crf = gp.LinearChainCRF(3)
    em = torch.randn(2, 5, 3)
    assert crf.decode(em, bool_mask.long()) == crf.decode(em, bool_mask)
    torch.testing.assert_close(crf.log_partition(em, bool_mask.float()), crf.log_partition(em, bool_mask))
    with pytest.raises(TypeError, match="mask == 0"):
        crf.log_partition(em, torch.zeros(2, 5).masked_fill(~bool_mask, float("-inf")))


def test_bad_shapes_empty_inputs_and_lists_name_the_argument() -> None:
    head = gp.GlobalPointer(8, 2, head_size=4)
    with pytest.raises(ValueError, match="hidden.*at least one"):
        head(torch.zeros(0, 5, 8))
    with pytest.raises(ValueError, match="hidden.*at least one"):
        head(torch.zeros(2, 0, 8))
    with pytest.raises(TypeError, match="hidden"):
        head([[[0.0] * 8]])
    with pytest.raises(TypeError, match="hidden"):
        head(torch.zeros(1, 3, 8, dtype=torch.float64))  # the head is float32
    with pytest.raises(TypeError, match="logits"):
        gp.global_pointer_loss([[[[0.0]]]], torch.zeros(1, 1, 1, 1))
    with pytest.raises(TypeError, match="targets"):
        gp.global_pointer_loss(torch.zeros(1, 1, 2, 2), [[[0]]])
    with pytest.raises(ValueError, match="at least one"):
        gp.global_pointer_loss(torch.zeros(0, 2, 3, 3), torch.zeros(0, 2, 3, 3))
    with pytest.raises(ValueError, match="logits"):
        gp.global_pointer_loss(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(TypeError, match="threshold"):
        gp.decode_spans(torch.zeros(1, 1, 2, 2), threshold="0")
    assert gp.decode_spans(torch.zeros(0, 1, 2, 2)) == []
    with pytest.raises(TypeError, match="tril"):
        gp.mask_span_logits(torch.zeros(1, 1, 2, 2), None, tril=1)
    with pytest.raises(TypeError, match="hidden"):
        gp.CrfTagger(8, 2)([[0.0] * 8])
    with pytest.raises(ValueError, match="hidden"):
        gp.CrfTagger(8, 2)(torch.zeros(1, 3, 7))


def test_crf_refuses_a_mask_with_a_hole_and_bad_tags() -> None:
    torch.manual_seed(25)
    crf = gp.LinearChainCRF(3).to(F64)
    em = torch.randn(1, 5, 3, dtype=F64)
    tags = torch.tensor([[0, 1, 2, 1, 0]])
    hole = torch.tensor([[True, True, False, True, False]])
    # the old check (first step on) let the hole through; the forward algorithm then skipped step 2
    # while the path score dropped the transitions into and out of it, so the two disagreed
    assert bool(hole[:, 0].all())
    for call in (lambda: crf.log_partition(em, hole), lambda: crf(em, tags, hole), lambda: crf.decode(em, hole),
                 lambda: crf.score(em, tags, hole)):
        with pytest.raises(ValueError, match="contiguous"):
            call()
    with pytest.raises(ValueError, match="tags"):
        crf(em, torch.tensor([[0, 1, 3, 1, 0]]))
    with pytest.raises(TypeError, match="tags"):
        crf(em, tags.double())
    with pytest.raises(ValueError, match="tags"):
        crf(em, tags[:, :4])
    with pytest.raises(ValueError, match="at least one"):
        crf.log_partition(em[:, :0])
    with pytest.raises(ValueError, match="real"):  # an empty sequence: a CRF over no tag
        crf.log_partition(em, torch.zeros(1, 5, dtype=torch.bool))
    # padded steps may hold any tag id (e.g. -100): they are ignored
    right = _mask([3], 5)
    padded = tags.masked_fill(~right, -100)
    torch.testing.assert_close(crf(em, padded, right), crf(em, tags, right))


@pytest.mark.parametrize("cls", [gp.GlobalPointer, gp.EfficientGlobalPointer])
def test_masked_cells_pass_no_gradient_to_the_head(cls) -> None:
    """Any upstream gradient on masked cells (here a random one everywhere) must stop at the mask."""
    torch.manual_seed(26)
    head = cls(12, 3, head_size=8).to(F64)
    h = torch.randn(2, 7, 12, dtype=F64, requires_grad=True)
    mask = _mask([7, 4], 7)
    fast = head(h, mask)
    w = torch.randn_like(fast)
    (g,) = torch.autograd.grad((fast * w).sum(), h, retain_graph=True)
    keep = fast.detach() > torch.finfo(F64).min
    (g_ref,) = torch.autograd.grad((fast * (w * keep)).sum(), h)  # the masked cells' weights removed
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
    # a broken variant that lets the gradient through the masked cells differs
    raw = head.dense(h) if cls is gp.GlobalPointer else None
    if raw is not None:
        q, k = raw.unflatten(-1, (3, 2, 8)).permute(0, 2, 3, 1, 4).unbind(2)
        q, k = apply_rope(q, torch.arange(7)), apply_rope(k, torch.arange(7))
        leaky = q @ k.transpose(-1, -2) / 8 ** 0.5
        (g_bad,) = torch.autograd.grad((leaky * w).sum(), h)
        assert not torch.allclose(g_bad, g)
