"""Tests for kexue.globalpointer and kexue.metrics (book chapter 02); the experiment is tested in test_experiments_ch02."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
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
        head(torch.zeros(2, 5, 8), torch.ones(2, 5))
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
