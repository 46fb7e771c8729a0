"""GlobalPointer, Efficient GlobalPointer, their loss, decoding, and a CRF baseline.

Articles: Su Jianlin, "GlobalPointer：用统一的方式处理嵌套和非嵌套NER" (2021,
https://kexue.fm/archives/8373); "将'Softmax+交叉熵'推广到多标签分类问题" (2020,
https://kexue.fm/archives/7359); "Efficient GlobalPointer：少点参数，多点效果"
(2022, https://kexue.fm/archives/8877).

Conventions: spans are ``(type, start, end)`` with ``end`` INCLUSIVE; span
logits have shape ``(batch, num_types, seq, seq)`` with rows = start and
columns = end; RoPE uses the adjacent-pair layout of :mod:`kexue.rope`
(identical to bert4keras' interleaved sin/cos table).

See: book chapter 02 (``02_globalpointer``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from kexue.rope import apply_rope
from kexue.utils import profile

__all__ = [
    "GlobalPointer", "EfficientGlobalPointer", "mask_span_logits",
    "multilabel_categorical_crossentropy", "sparse_multilabel_categorical_crossentropy",
    "mcce_reference", "global_pointer_loss", "decode_spans", "global_pointer_reference",
    "efficient_global_pointer_reference", "rope_matrix", "gp_param_count", "egp_param_count",
    "crf_param_count", "LinearChainCRF", "crf_brute_force", "spans_to_bio", "bio_to_spans",
    "span_targets", "NerConfig", "configs", "config", "decode_spans_reference", "CrfTagger",
    "NerData", "prepare_ner", "NerModel", "make_optimizer", "train_ner", "evaluate_ner", "HEADS", "cache_features", "fit_and_score",
]


# ---------------------------------------------------------------------------
# masking
# ---------------------------------------------------------------------------

def _check_hidden_mask(hidden: torch.Tensor, mask: torch.Tensor, hidden_size: int) -> None:
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
        raise TypeError("hidden must be a floating-point tensor of shape (batch, seq, hidden_size)")
    if hidden.dim() != 3 or hidden.shape[-1] != hidden_size:
        raise ValueError(f"hidden must have shape (batch, seq, {hidden_size}), got {tuple(hidden.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor of shape (batch, seq), True on real tokens")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")


def mask_span_logits(logits: torch.Tensor, mask: torch.Tensor, tril: bool = True) -> torch.Tensor:
    """Set impossible cells of ``(batch, types, n, n)`` logits to ``finfo(dtype).min``.

    A cell ``(i, j)`` is kept iff both ``i`` and ``j`` are real tokens (row AND
    column axis, so left padding is handled too) and ``i <= j`` (when ``tril``).
    ``finfo.min`` rather than ``-1e12`` keeps fp16/bf16 finite (``-1e12``
    overflows to ``-inf`` in fp16).
    """
    n = logits.shape[-1]
    valid = mask[:, None, :, None] & mask[:, None, None, :]
    if tril:
        valid = valid & torch.ones(n, n, dtype=torch.bool, device=logits.device).triu()
    return logits.masked_fill(~valid, torch.finfo(logits.dtype).min)


# ---------------------------------------------------------------------------
# the two heads
# ---------------------------------------------------------------------------

class _SpanHead(nn.Module):
    """Shared arguments of the two span heads: checked sizes, RoPE switch and base."""

    def __init__(self, hidden_size: int, num_types: int, head_size: int, rope: bool, rope_base: float) -> None:
        super().__init__()
        for name, v in (("hidden_size", hidden_size), ("num_types", num_types), ("head_size", head_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if rope and head_size % 2:
            raise ValueError(f"head_size must be even when rope=True, got {head_size}")
        self.hidden_size, self.num_types, self.head_size = hidden_size, num_types, head_size
        self.rope, self.rope_base = bool(rope), rope_base


class GlobalPointer(_SpanHead):
    """Span scores ``s_α(i, j) = (R_i q_{i,α})ᵀ (R_j k_{j,α}) / √d``: eqs. (1)–(2) of chapter 02.

    One ``Linear(hidden_size, num_types * 2 * head_size)`` (bias included, as
    in bert4keras); each type's chunk is split into q (first half) and k
    (second half). Parameters: ``(D + 1) · 2 d m``.

    See: book chapter 02.
    """

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, rope: bool = True,
                 rope_base: float = 10000.0) -> None:
        super().__init__(hidden_size, num_types, head_size, rope, rope_base)
        self.dense = nn.Linear(hidden_size, num_types * head_size * 2)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden (B, n, D)``, bool ``mask (B, n)`` → masked logits ``(B, m, n, n)``."""
        _check_hidden_mask(hidden, mask, self.hidden_size)
        b, n, _ = hidden.shape
        qk = self.dense(hidden).view(b, n, self.num_types, 2, self.head_size).transpose(1, 2)
        q, k = qk[..., 0, :], qk[..., 1, :]  # (B, m, n, d)
        if self.rope:
            pos = torch.arange(n, device=hidden.device)
            q, k = apply_rope(q, pos, self.rope_base), apply_rope(k, pos, self.rope_base)
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        return mask_span_logits(logits, mask)


class EfficientGlobalPointer(_SpanHead):
    """Efficient GlobalPointer, eq. (E3) of chapter 02, in the bert4keras layout.

    ``p_dense: D → 2d`` (even channels q, odd channels k), shared bilinear
    ``(R_i q_i)ᵀ(R_j k_j)/√d``, plus per-type start/end biases from
    ``q_dense: 2d → 2m`` on the pre-RoPE ``[q_i; k_i]``, halved. Parameters:
    ``(D + 1) · 2d + (2d + 1) · 2m``.

    See: book chapter 02.
    """

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, rope: bool = True,
                 rope_base: float = 10000.0) -> None:
        super().__init__(hidden_size, num_types, head_size, rope, rope_base)
        self.p_dense = nn.Linear(hidden_size, 2 * head_size)
        self.q_dense = nn.Linear(2 * head_size, 2 * num_types)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden (B, n, D)``, bool ``mask (B, n)`` → masked logits ``(B, m, n, n)``."""
        _check_hidden_mask(hidden, mask, self.hidden_size)
        x = self.p_dense(hidden)  # (B, n, 2d)
        q, k = x[..., ::2], x[..., 1::2]
        if self.rope:
            pos = torch.arange(x.shape[1], device=x.device)
            q, k = apply_rope(q, pos, self.rope_base), apply_rope(k, pos, self.rope_base)
        shared = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)  # (B, n, n)
        bias = self.q_dense(x).transpose(1, 2) / 2  # (B, 2m, n)
        logits = shared[:, None] + bias[:, ::2, None, :] + bias[:, 1::2, :, None]
        return mask_span_logits(logits, mask)


# ---------------------------------------------------------------------------
# naive references (formula level)
# ---------------------------------------------------------------------------

def rope_matrix(position: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The block-diagonal RoPE matrices ``R_m`` (R11), shape ``(len(position), dim, dim)``."""
    position = torch.as_tensor(position)
    dtype = position.dtype if position.is_floating_point() else torch.float64
    theta = base ** (-torch.arange(0, dim, 2, dtype=dtype) / dim)
    ang = position.to(dtype)[:, None] * theta  # (n, dim/2)
    c, s = ang.cos(), ang.sin()
    r = torch.zeros(len(position), dim, dim, dtype=dtype)
    idx = torch.arange(0, dim, 2)
    r[:, idx, idx], r[:, idx, idx + 1] = c, -s
    r[:, idx + 1, idx], r[:, idx + 1, idx + 1] = s, c
    return r


def global_pointer_reference(hidden: torch.Tensor, mask: torch.Tensor, head: GlobalPointer) -> torch.Tensor:
    """Eq. (1)–(2) written out: explicit RoPE matrices, per-type affine maps, explicit masks."""
    b, n, _ = hidden.shape
    m, d = head.num_types, head.head_size
    w = head.dense.weight.view(m, 2, d, -1)
    bias = head.dense.bias.view(m, 2, d)
    q = torch.einsum("tdh,bnh->btnd", w[:, 0], hidden) + bias[None, :, 0, None, :]
    k = torch.einsum("tdh,bnh->btnd", w[:, 1], hidden) + bias[None, :, 1, None, :]
    if head.rope:
        r = rope_matrix(torch.arange(n, dtype=hidden.dtype), d, head.rope_base).to(hidden.dtype)
        q, k = torch.einsum("nde,btne->btnd", r, q), torch.einsum("nde,btne->btnd", r, k)
    s = torch.einsum("btid,btjd->btij", q, k) / d ** 0.5
    neg = torch.finfo(s.dtype).min
    for i, j in itertools.product(range(n), range(n)):  # reference only: explicit cell rule
        bad = ~(mask[:, i] & mask[:, j]) | torch.tensor(j < i)
        s[:, :, i, j] = torch.where(bad[:, None], torch.full_like(s[:, :, i, j], neg), s[:, :, i, j])
    return s


def efficient_global_pointer_reference(hidden: torch.Tensor, mask: torch.Tensor,
                                       head: EfficientGlobalPointer) -> torch.Tensor:
    """Eq. (E3) literally: ``q_iᵀk_j/√d + w_αᵀ[q_i; k_i; q_j; k_j] + b_α`` with ``w_α ∈ ℝ^{4d}``.

    ``[q; k]`` here is the pre-RoPE projection in natural (q first) order;
    ``w_α = ½[u_α; v_α]`` is rebuilt from the layer's ``q_dense`` weights.
    """
    d, m = head.head_size, head.num_types
    x = head.p_dense(hidden)
    q, k = x[..., ::2], x[..., 1::2]
    qk = torch.cat([q, k], -1)  # natural [q_i; k_i]
    # q_dense acts on interleaved x; permute its input columns to the [q; k] order
    perm = torch.cat([torch.arange(0, 2 * d, 2), torch.arange(1, 2 * d, 2)])
    wq, bq = head.q_dense.weight[:, perm], head.q_dense.bias
    u, v = wq[1::2], wq[::2]  # start (row) and end (column) weights, (m, 2d)
    w = 0.5 * torch.cat([u, v], -1)  # (m, 4d)
    b_alpha = 0.5 * (bq[1::2] + bq[::2])
    n = hidden.shape[1]
    if head.rope:
        r = rope_matrix(torch.arange(n, dtype=hidden.dtype), d, head.rope_base).to(hidden.dtype)
        qr, kr = torch.einsum("nde,bne->bnd", r, q), torch.einsum("nde,bne->bnd", r, k)
    else:
        qr, kr = q, k
    shared = torch.einsum("bid,bjd->bij", qr, kr) / d ** 0.5
    pair = torch.cat([qk[:, :, None, :].expand(-1, n, n, -1), qk[:, None, :, :].expand(-1, n, n, -1)], -1)
    s = shared[:, None] + torch.einsum("ta,bija->btij", w, pair) + b_alpha[None, :, None, None]
    return mask_span_logits(s, mask)


def gp_param_count(hidden_size: int, num_types: int, head_size: int = 64, bias: bool = True) -> int:
    """GlobalPointer head size: ``(D + 1)·2dm`` with bias, ``2Ddm`` without."""
    return (hidden_size + int(bias)) * 2 * head_size * num_types


def egp_param_count(hidden_size: int, num_types: int, head_size: int = 64, bias: bool = True) -> int:
    """Efficient GlobalPointer head size: ``(D + 1)·2d + (2d + 1)·2m`` (``2Dd + 4dm`` without bias)."""
    return (hidden_size + int(bias)) * 2 * head_size + (2 * head_size + int(bias)) * 2 * num_types


def crf_param_count(hidden_size: int, num_types: int, bias: bool = True) -> int:
    """BIO CRF head: ``Dense(2m + 1)`` plus the ``(2m + 1)²`` transition matrix (bert4keras' layout)."""
    k = 2 * num_types + 1
    return (hidden_size + int(bias)) * k + k * k


# ---------------------------------------------------------------------------
# the loss (article 7359)
# ---------------------------------------------------------------------------

def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _log1p_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + Σ_last e^x)``, stable; the threshold class ``e^0`` is the ``1``.

    Shifted exponents are clamped at -64 before ``exp``: a cell that far below
    the row maximum adds less than ``e^-64 ≈ 1.6e-28`` of the sum, below the
    float64 epsilon even over millions of cells, while ``exp`` of the masked
    cells' huge negative values (which underflow) runs on a slow path that
    made the loss several times slower on CPU.
    """
    m = x.detach().amax(-1, keepdim=True).clamp_min(0)
    total = torch.exp((x - m).clamp_min(-64.0)).sum(-1) + torch.exp(-m[..., 0])
    return m[..., 0] + torch.log(total)


def multilabel_categorical_crossentropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log(1 + Σ_neg e^{s}) + log(1 + Σ_pos e^{-s})`` over the last axis: eq. (M11)/(3) of chapter 02.

    ``logits (..., C)``; ``targets`` 0/1 of the same shape. Returns ``(...)`` in
    ``logits``' dtype; computed in at least float32. Masked cells (``finfo.min``
    or ``-inf``) must be negatives; they contribute exactly 0.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor of shape (..., C)")
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape:
        raise ValueError(f"targets must be a tensor of logits' shape {tuple(logits.shape)}, "
                         f"got {getattr(targets, 'shape', type(targets))}")
    if targets.dtype == torch.bool:
        pos = targets
    else:
        pos = targets != 0
        if not bool((pos == (targets == 1)).all()):
            raise ValueError("targets must be 0/1 (multi-hot)")
    s = logits.to(_loss_dtype(logits.dtype))
    # excluded cells get the most negative finite value (not -inf, whose
    # logsumexp over an empty set has a NaN gradient)
    low = torch.finfo(s.dtype).min
    neg_term = _log1p_sum_exp(s.masked_fill(pos, low))
    pos_term = _log1p_sum_exp((-s).masked_fill(~pos, low))
    return (neg_term + pos_term).to(logits.dtype)


def mcce_reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. (M10) with ``s_0 = 0``: the pairwise sum ``log(1 + Σ_{neg,pos} e^{s_i - s_j} + Σ_neg e^{s_i} + Σ_pos e^{-s_j})``.

    Literal double sum over (negative, positive) pairs; for checks only.
    """
    y = targets.to(torch.bool)
    e = logits.exp()
    neg = torch.where(y, torch.zeros_like(e), e)
    pos = torch.where(y, 1 / e, torch.zeros_like(e))
    pairs = (neg[..., :, None] * pos[..., None, :]).sum((-1, -2))
    return torch.log(1 + pairs + neg.sum(-1) + pos.sum(-1))


def sparse_multilabel_categorical_crossentropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The same loss from positive indices only (article 8888): ``a + log(1 - e^{b - a})``.

    ``logits (..., C)``; ``positives (..., K)`` int64 indices into the last
    axis, padded with ``-1``; indices must be distinct. ``a = log(1 + Σ_all e^s)``,
    ``b = log Σ_pos e^s``. Returns ``(...)``.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor of shape (..., C)")
    if not isinstance(positives, torch.Tensor) or positives.dtype not in (torch.int64, torch.int32):
        raise TypeError("positives must be an int64 tensor of indices (..., K), padded with -1")
    if positives.shape[:-1] != logits.shape[:-1]:
        raise ValueError(f"positives must have shape {tuple(logits.shape[:-1])} + (K,), got {tuple(positives.shape)}")
    if positives.numel() and (int(positives.max()) >= logits.shape[-1] or int(positives.min()) < -1):
        raise ValueError(f"positives must lie in [0, {logits.shape[-1]}) or be -1 (padding)")
    s = logits.to(_loss_dtype(logits.dtype))
    valid = positives >= 0
    sp = s.gather(-1, positives.clamp_min(0).long())
    pos_term = _log1p_sum_exp((-sp).masked_fill(~valid, torch.finfo(s.dtype).min))
    a = _log1p_sum_exp(s)
    # e^{b - a} = Σ_pos e^{s - a}, summed with a 0/1 mask (a logsumexp over an
    # empty positive set would give a NaN gradient)
    ratio = (torch.exp(sp - a[..., None]) * valid).sum(-1)
    neg_term = a + torch.log1p(-ratio.clamp(max=1 - torch.finfo(s.dtype).eps))
    return (neg_term + pos_term).to(logits.dtype)


def global_pointer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. (3) averaged over (sample, type) rows: flatten ``(B, m, n, n)`` to ``(B·m, n²)``."""
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (batch, types, n, n), got {tuple(logits.shape)}")
    return multilabel_categorical_crossentropy(logits.flatten(2), targets.flatten(2)).mean()


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------

def decode_spans(logits: torch.Tensor, threshold: float = 0.0) -> list[set[tuple[int, int, int]]]:
    """Every ``(type, start, end)`` (end inclusive) with score ``> threshold``, per sample.

    Section "Decoding" of chapter 02. Two vectorised stages, no recursion: the
    row maxima pick the (sample, type, start) rows that hold any positive cell,
    then only those rows are thresholded. Nested and overlapping spans are all
    kept. Impossible cells must already be masked (the heads do it).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 4:
        raise ValueError("logits must be a floating-point tensor of shape (batch, types, n, n)")
    rows = (logits.amax(-1) > threshold).nonzero()  # (R, 3): sample, type, start
    out: list[set[tuple[int, int, int]]] = [set() for _ in range(logits.shape[0])]
    if len(rows) == 0:
        return out
    sub = logits[rows[:, 0], rows[:, 1], rows[:, 2]]  # (R, n)
    r, end = (sub > threshold).nonzero().unbind(1)
    hits = torch.cat([rows[r], end[:, None]], 1).tolist()
    for b, t, i, j in hits:
        out[b].add((t, i, j))
    return out


def decode_spans_reference(logits: torch.Tensor, threshold: float = 0.0) -> list[set[tuple[int, int, int]]]:
    """Cell-by-cell loop over the grid (for checks): the definition of :func:`decode_spans`."""
    b, m, n, _ = logits.shape
    out: list[set[tuple[int, int, int]]] = [set() for _ in range(b)]
    for s, t, i, j in itertools.product(range(b), range(m), range(n), range(n)):
        if float(logits[s, t, i, j]) > threshold:
            out[s].add((t, i, j))
    return out


def span_targets(spans: Sequence[Sequence[tuple[int, int, int]]], num_types: int, n: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """Dense 0/1 targets ``(B, m, n, n)`` from per-sample ``(type, start, end)`` lists."""
    y = torch.zeros(len(spans), num_types, n, n, dtype=dtype, device=device)
    idx = [(b, t, i, j) for b, ss in enumerate(spans) for t, i, j in ss]
    if idx:
        bi = torch.tensor(idx, device=device).T
        y[bi[0], bi[1], bi[2], bi[3]] = 1
    return y


# ---------------------------------------------------------------------------
# the CRF baseline (BIO)
# ---------------------------------------------------------------------------

def spans_to_bio(spans: Sequence[tuple[int, int, int]], length: int) -> list[int]:
    """BIO tag ids (0 = O, 2t+1 = B-t, 2t+2 = I-t) from ``(type, start, end)``.

    Spans are placed outermost first (by start, then longest); a span that
    overlaps one already placed is DROPPED, so of nested entities only the
    outermost survives: BIO cannot represent nesting. Spans past ``length``
    are dropped too.
    """
    tags = [0] * length
    for t, i, j in sorted(spans, key=lambda s: (s[1], -s[2], s[0])):
        if j >= length or any(tags[i : j + 1]):
            continue
        tags[i] = 2 * t + 1
        tags[i + 1 : j + 1] = [2 * t + 2] * (j - i)
    return tags


def bio_to_spans(tags: Sequence[int]) -> set[tuple[int, int, int]]:
    """``(type, start, end)`` from BIO tag ids; a stray I-t starts a new entity."""
    out, start, cur = set(), None, None
    for p, tag in enumerate([*tags, 0]):
        t = (tag - 1) // 2 if tag else None
        if tag and tag % 2 == 0 and cur == t:  # continuation
            continue
        if cur is not None:
            out.add((cur, start, p - 1))
        start, cur = (p, t) if tag else (None, None)
    return out


class LinearChainCRF(nn.Module):
    """A linear-chain CRF with start/end/transition scores; batched forward algorithm and Viterbi.

    The recursion over time is inherently sequential: that is the point of the
    chapter's comparison. ``mask`` must be left-aligned (True first).

    See: book chapter 02 (section on decoding).
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if not isinstance(num_tags, int) or num_tags <= 0:
            raise ValueError(f"num_tags must be a positive int, got {num_tags!r}")
        self.num_tags = num_tags
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.trans = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must have shape (batch, seq, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask is None:
            mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        if mask.dtype != torch.bool or mask.shape != emissions.shape[:2]:
            raise ValueError("mask must be a bool tensor of shape (batch, seq)")
        if emissions.shape[1] and not bool(mask[:, 0].all()):
            raise ValueError("mask must be on at the first timestep of every sequence (left-aligned)")
        return mask

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log Z`` by the forward algorithm, shape ``(batch,)``."""
        mask = self._check(emissions, mask)
        alpha = self.start + emissions[:, 0]
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha[:, :, None] + self.trans, 1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], nxt, alpha)
        return torch.logsumexp(alpha + self.end, -1)

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised score of the tag paths, shape ``(batch,)`` (vectorised over time)."""
        mask = self._check(emissions, mask)
        m = mask.to(emissions.dtype)
        emit = emissions.gather(-1, tags[..., None]).squeeze(-1)
        s = self.start[tags[:, 0]] + (emit * m).sum(1)
        s = s + (self.trans[tags[:, :-1], tags[:, 1:]] * m[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1) - 1).clamp_min(0)[:, None]).squeeze(1)
        return s + self.end[last]

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood over the batch."""
        return (self.log_partition(emissions, mask) - self.score(emissions, tags, mask)).mean()

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> list[list[int]]:
        """Batched Viterbi: the best tag path of each sequence (length = its mask sum)."""
        mask = self._check(emissions, mask)
        b, n, k = emissions.shape
        score = self.start + emissions[:, 0]
        back = []
        for t in range(1, n):
            cand = score[:, :, None] + self.trans  # (B, from, to)
            best, arg = cand.max(1)
            back.append(arg)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        lengths = mask.sum(1)
        last = (score + self.end).argmax(-1)
        paths = torch.zeros(b, n, dtype=torch.long, device=emissions.device)
        cur = last
        for t in range(n - 1, -1, -1):
            active = t < lengths
            is_last = t == lengths - 1
            cur = torch.where(is_last, last, cur)
            paths[:, t] = torch.where(active, cur, paths[:, t])
            if t > 0:
                prev = back[t - 1].gather(1, cur[:, None]).squeeze(1)
                cur = torch.where(active & (t > 0), prev, cur)
        lens = lengths.tolist()
        return [row[:ln] for row, ln in zip(paths.tolist(), lens)]


def crf_brute_force(crf: LinearChainCRF, emissions: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``(log Z, best path)`` of ONE sequence ``(n, k)`` by enumerating all ``k^n`` paths (tiny inputs)."""
    n, k = emissions.shape
    paths = torch.tensor(list(itertools.product(range(k), repeat=n)), dtype=torch.long)
    sc = crf.score(emissions[None].expand(len(paths), -1, -1), paths)
    return torch.logsumexp(sc, 0), paths[sc.argmax()].tolist()


class CrfTagger(nn.Module):
    """The CRF baseline head: ``Dense(2m + 1)`` emissions over BIO tags plus a :class:`LinearChainCRF`.

    Parameters: ``(D + 1)(2m + 1) + (2m + 1)²`` as in bert4keras, plus the
    ``2(2m + 1)`` start/end scores of our CRF. See: book chapter 02.
    """

    def __init__(self, hidden_size: int, num_types: int) -> None:
        super().__init__()
        if not isinstance(num_types, int) or num_types <= 0:
            raise ValueError(f"num_types must be a positive int, got {num_types!r}")
        self.num_types = num_types
        self.dense = nn.Linear(hidden_size, 2 * num_types + 1)
        self.crf = LinearChainCRF(2 * num_types + 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Emission scores ``(B, n, 2m + 1)``."""
        return self.dense(hidden)


# ---------------------------------------------------------------------------
# experiment plumbing: data, model, training
# ---------------------------------------------------------------------------

HEADS = ("crf", "gp", "gp_norope", "egp")


@dataclass
class NerData:
    """Tokenised NER examples: ``[CLS] chars [SEP]`` ids, bool mask, spans ``(type, start, end)`` in token indices."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    spans: list[list[tuple[int, int, int]]]
    types: tuple[str, ...]


def prepare_ner(examples: Sequence, tokenizer, max_len: int, types: Sequence[str]) -> NerData:
    """Tokenise :class:`kexue.data.NerExample` s; character ``c`` becomes token ``c + 1``.

    Texts are truncated to ``max_len - 2`` characters and spans that do not fit
    are dropped (from the gold too, for every head alike).
    """
    types = tuple(types)
    ids, mask = tokenizer([ex.text for ex in examples], max_len, pad_to_max=True)
    index = {t: k for k, t in enumerate(types)}
    spans = []
    for ex in examples:
        row = []
        for a, b, t in ex.spans:
            if t not in index:
                raise ValueError(f"entity type {t!r} is not in types={types}")
            if b < max_len - 2:
                row.append((index[t], a + 1, b + 1))
        spans.append(sorted(set(row)))
    return NerData(ids, mask, spans, types)


def _content_mask(mask: torch.Tensor) -> torch.Tensor:
    """Real tokens minus ``[CLS]`` (index 0) and ``[SEP]`` (last real index); right padding."""
    ar = torch.arange(mask.shape[1], device=mask.device)
    return mask & (ar > 0) & (ar < mask.sum(1, keepdim=True) - 1)


class NerModel(nn.Module):
    """Encoder (frozen, top block trained, or fine-tuned) plus one of :data:`HEADS`.

    ``features`` computes the frozen part once (cacheable); ``loss`` and
    ``predict`` run the trainable part. Spans are ``(type, start, end)`` in
    token indices, end inclusive. See: book chapter 02 (experiment).
    """

    def __init__(self, encoder: nn.Module, head: str, num_types: int, head_size: int = 64,
                 train_encoder: bool = False, train_top: bool = False) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head_name, self.num_types = head, num_types
        self.train_encoder, self.train_top = bool(train_encoder), bool(train_top) and not train_encoder
        dim = encoder.config.dim
        self._frozen = [encoder]  # not a submodule: never trained, never saved with the head
        self.encoder = copy.deepcopy(encoder) if self.train_encoder else None
        self.top = copy.deepcopy(encoder.blocks[-1]) if self.train_top else None
        self.top_norm = copy.deepcopy(encoder.final_norm) if self.train_top else None
        if head == "crf":
            self.head = CrfTagger(dim, num_types)
        elif head == "egp":
            self.head = EfficientGlobalPointer(dim, num_types, head_size)
        else:
            self.head = GlobalPointer(dim, num_types, head_size, rope=head == "gp")

    def features(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The frozen computation: ids (fine-tuning), the last block's input (``train_top``) or the output."""
        if self.train_encoder:
            return input_ids
        enc = self._frozen[0]
        was = enc.training
        enc.eval()
        with torch.no_grad():
            out, hidden = enc(input_ids, mask, return_all=True)
        enc.train(was)
        return hidden[-2] if self.train_top else out

    def hidden(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.train_encoder:
            return self.encoder(feats, mask)
        if self.train_top:
            return self.top_norm(self.top(feats, mask=mask, positions=None))
        return feats

    def scores(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CRF emissions ``(B, n, 2m+1)`` or span logits ``(B, m, n, n)`` (specials masked)."""
        h = self.hidden(feats, mask)
        if self.head_name == "crf":
            return self.head(h)
        return self.head(h, _content_mask(mask))

    def loss(self, feats: torch.Tensor, mask: torch.Tensor, spans: Sequence[Sequence[tuple[int, int, int]]]) -> torch.Tensor:
        s = self.scores(feats, mask)
        n = mask.shape[1]
        if self.head_name == "crf":
            tags = torch.tensor([spans_to_bio(sp, n) for sp in spans], device=mask.device)
            return self.head.crf(s, tags, mask)
        return global_pointer_loss(s, span_targets(spans, self.num_types, n, s.dtype, s.device))

    @torch.no_grad()
    def predict(self, feats: torch.Tensor, mask: torch.Tensor) -> list[set[tuple[int, int, int]]]:
        s = self.scores(feats, mask)
        if self.head_name != "crf":
            return decode_spans(s)
        inner = _content_mask(mask)
        out = []
        for path, keep in zip(self.head.crf.decode(s, mask), inner.tolist()):
            out.append({(t, i, j) for t, i, j in bio_to_spans(path) if keep[i] and keep[j]})
        return out


def cache_features(model: NerModel, data: NerData, batch_size: int = 128) -> torch.Tensor:
    """``model.features`` for every row, computed in length-sorted batches, zero-padded to the data's width."""
    device = next(model._frozen[0].parameters()).device
    lengths = data.mask.sum(1)
    order = lengths.argsort(descending=True)
    out: torch.Tensor | None = None
    for idx in order.split(batch_size):
        n = int(lengths[idx].max())
        f = model.features(data.input_ids[idx, :n].to(device), data.mask[idx, :n].to(device))
        if out is None:
            out = f.new_zeros((len(lengths), data.mask.shape[1]) + tuple(f.shape[2:]))
        out[idx.to(device), :n] = f
    assert out is not None
    return out


def make_optimizer(model: NerModel, cfg: "NerConfig") -> torch.optim.Optimizer:
    """AdamW; encoder at ``lr_encoder``, CRF transitions at ``lr_head · crf_lr_multiplier``, the rest at ``lr_head``."""
    enc, crf, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (enc if name.startswith("encoder.") else crf if ".crf." in name else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr_head}]
    if crf:
        groups.append({"params": crf, "lr": cfg.lr_head * cfg.crf_lr_multiplier})
    if enc:
        groups.append({"params": enc, "lr": cfg.lr_encoder})
    return torch.optim.AdamW(groups, weight_decay=0.0)


def _batches(mask: torch.Tensor, batch_size: int, gen: torch.Generator | None,
             bucket: int = 0) -> list[torch.Tensor]:
    """Row indices per batch: shuffled (``gen``) or in order; ``bucket > 0`` sorts each run of
    ``bucket`` batches by length before splitting and then shuffles the batches, so a batch
    pads to a similar length (less padding, same epoch)."""
    order = torch.randperm(len(mask), generator=gen) if gen is not None else torch.arange(len(mask))
    if bucket <= 0:
        return list(order.split(batch_size))
    lengths = mask.sum(1)
    pieces: list[torch.Tensor] = []
    for chunk in order.split(batch_size * bucket):
        pieces.extend(chunk[lengths[chunk].argsort(descending=True, stable=True)].split(batch_size))
    shuffle = torch.randperm(len(pieces), generator=gen).tolist() if gen is not None else range(len(pieces))
    return [pieces[i] for i in shuffle]


def _trim(idx: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor):
    n = int(mask[idx].sum(1).max())
    return feats[idx][:, :n], mask[idx][:, :n]


def evaluate_ner(model: NerModel, feats: torch.Tensor, mask: torch.Tensor,
                 batch_size: int = 64) -> list[set[tuple[int, int, int]]]:
    """Predicted span sets for every row of cached ``feats``."""
    was = model.training
    model.eval()
    out: list[set[tuple[int, int, int]]] = [set() for _ in range(len(mask))]
    order = mask.sum(1).argsort(descending=True, stable=True)  # similar lengths share a batch
    for idx in order.split(batch_size):
        for i, spans in zip(idx.tolist(), model.predict(*_trim(idx, feats, mask))):
            out[i] = spans
    model.train(was)
    return out


def train_ner(model: NerModel, feats: torch.Tensor, mask: torch.Tensor, spans: Sequence, cfg: "NerConfig",
              eval_fn=None) -> dict:
    """Train on cached features for ``cfg.epochs``; returns per-step losses and per-epoch ``eval_fn()`` values."""
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses, evals = [], []
    for _ in range(cfg.epochs):
        for idx in _batches(mask, cfg.batch_size, gen, cfg.length_buckets):
            f, m = _trim(idx, feats, mask)
            loss = model.loss(f, m, [spans[i] for i in idx.tolist()])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if eval_fn is not None:
            evals.append(eval_fn())
    return {"loss": losses, "eval": evals}


# ---------------------------------------------------------------------------
# experiment configs
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NerConfig:
    """One NER run. ``finetune`` trains the whole encoder; ``train_top`` only its last block."""

    n_train: int | None
    n_test: int | None
    max_len: int
    epochs: int
    batch_size: int
    lr_head: float
    lr_encoder: float
    crf_lr_multiplier: float
    finetune: bool
    train_top: bool
    head_size: int = 64
    heads: tuple[str, ...] = HEADS
    seed: int = 0
    length_buckets: int = 0  # > 0: batches of similar length, sorted within runs of this many batches

    def to_dict(self) -> dict:
        return asdict(self)


def configs() -> dict[str, NerConfig]:
    """``smoke``: MSRA subset, frozen encoder (heads only), CPU in about a minute.

    ``full``: the article's recipe (all data, fine-tuning, 10 epochs, batch 16, CRF
    transitions at 2e-2 = 1000 × 2e-5) with two changes for the small shipped encoder:
    ``max_len=128`` (its position table; the article used 256) and a learning rate of
    1e-4 instead of 2e-5, which a 4-layer encoder of width 256 needs (``tools/ner_full.py``
    records the comparison of the two rates). Batches group similar lengths.
    """
    return {
        "smoke": NerConfig(n_train=1200, n_test=400, max_len=48, epochs=6, batch_size=32, lr_head=3e-3,
                           lr_encoder=0.0, crf_lr_multiplier=10.0, finetune=False, train_top=False),
        "full": NerConfig(n_train=None, n_test=None, max_len=128, epochs=10, batch_size=16, lr_head=1e-4,
                          lr_encoder=1e-4, crf_lr_multiplier=200.0, finetune=True, train_top=False,
                          length_buckets=50),
    }


def config(name: str | None = None) -> NerConfig:
    """The config of profile ``name`` (default: :func:`kexue.utils.profile`)."""
    name = profile() if name is None else name
    table = configs()
    if name not in table:
        raise ValueError(f"profile must be one of {sorted(table)}, got {name!r}")
    return table[name]


def fit_and_score(encoder: nn.Module, head: str, train: NerData, test: NerData, feats_train: torch.Tensor,
                  feats_test: torch.Tensor, cfg: NerConfig) -> dict:
    """Train one head on cached features and score it on ``test``: the chapter's experiment, one row.

    Returns losses, per-epoch test F1, the final predictions, micro P/R/F1,
    the head's parameter count and the training time.
    """
    from kexue.metrics import entity_prf

    torch.manual_seed(cfg.seed)
    device = feats_train.device
    model = NerModel(encoder, head, len(train.types), cfg.head_size, train_encoder=cfg.finetune,
                     train_top=cfg.train_top).to(device)
    gold = [set(sp) for sp in test.spans]
    m_tr, m_te = train.mask.to(device), test.mask.to(device)

    def f1() -> float:
        return entity_prf(evaluate_ner(model, feats_test, m_te), gold).f1

    t0 = time.perf_counter()
    log = train_ner(model, feats_train, m_tr, train.spans, cfg, eval_fn=f1)
    seconds = time.perf_counter() - t0
    pred = evaluate_ner(model, feats_test, m_te)
    return {"head": head, "loss": log["loss"], "f1_by_epoch": log["eval"], "pred": pred,
            "prf": entity_prf(pred, gold), "params": sum(p.numel() for p in model.head.parameters()),
            "seconds": seconds, "model": model}
