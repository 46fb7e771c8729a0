"""GlobalPointer, Efficient GlobalPointer, their loss, decoding, and a CRF baseline.

Articles: Su Jianlin, "GlobalPointer：用统一的方式处理嵌套和非嵌套NER" (2021,
https://kexue.fm/archives/8373); "将'Softmax+交叉熵'推广到多标签分类问题" (2020,
https://kexue.fm/archives/7359); "Efficient GlobalPointer：少点参数，多点效果"
(2022, https://kexue.fm/archives/8877).

Conventions: spans are ``(type, start, end)`` with ``end`` INCLUSIVE; span
logits have shape ``(batch, num_types, seq, seq)`` with rows = start and
columns = end; RoPE uses the adjacent-pair layout of :mod:`kexue.rope`
(identical to bert4keras' interleaved sin/cos table). BIO tags for the CRF
baseline come from :mod:`kexue.spans` (``spans_to_bio`` / ``bio_to_spans``,
re-exported here).

See: book chapter 02 (``02_globalpointer``). The chapter's experiment (the NER
model, data preparation and training) lives in
:mod:`kexue.experiments.ch02_globalpointer`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from kexue import checks
from kexue.rope import apply_rope, rope_matrix
from kexue.spans import bio_to_spans, spans_to_bio

__all__ = [
    "GlobalPointer", "EfficientGlobalPointer", "mask_span_logits",
    "multilabel_categorical_crossentropy", "sparse_multilabel_categorical_crossentropy",
    "mcce_reference", "global_pointer_loss", "decode_spans", "decode_spans_reference",
    "global_pointer_reference", "efficient_global_pointer_reference", "gp_param_count",
    "egp_param_count", "crf_param_count", "LinearChainCRF", "crf_brute_force", "CrfTagger",
    "spans_to_bio", "bio_to_spans", "span_targets",
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

    What survives is the candidate set of eq. (ch02-count): a cell ``(i, j)``
    is kept iff both ``i`` and ``j`` are real tokens (row AND column axis, so
    left padding is handled too) and ``i <= j`` (when ``tril``).
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
            checks.positive_int(name, v)
        if rope and head_size % 2:
            raise ValueError(f"head_size must be even when rope=True, got {head_size}")
        self.hidden_size, self.num_types, self.head_size = hidden_size, num_types, head_size
        self.rope, self.rope_base = bool(rope), rope_base


class GlobalPointer(_SpanHead):
    """Span scores ``s_α(i, j) = (R_i q_{i,α})ᵀ (R_j k_{j,α}) / √d``: eq. (ch02-score).

    One ``Linear(hidden_size, num_types * 2 * head_size)`` (bias included, as
    in bert4keras); each type's chunk is split into q (first half) and k
    (second half). Parameters: ``(D + 1) · 2 d m``.
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
    """Efficient GlobalPointer, eq. (ch02-egp), in the bert4keras layout.

    ``p_dense: D → 2d`` (even channels q, odd channels k), shared bilinear
    ``(R_i q_i)ᵀ(R_j k_j)/√d``, plus per-type start/end biases from
    ``q_dense: 2d → 2m`` on the pre-RoPE ``[q_i; k_i]``, halved. Parameters:
    ``(D + 1) · 2d + (2d + 1) · 2m``.
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

def global_pointer_reference(hidden: torch.Tensor, mask: torch.Tensor, head: GlobalPointer) -> torch.Tensor:
    """Eq. (ch02-score) written out: explicit RoPE matrices, per-type affine maps, explicit masks."""
    b, n, _ = hidden.shape
    m, d = head.num_types, head.head_size
    w = head.dense.weight.view(m, 2, d, -1)
    bias = head.dense.bias.view(m, 2, d)
    q = torch.einsum("tdh,bnh->btnd", w[:, 0], hidden) + bias[None, :, 0, None, :]
    k = torch.einsum("tdh,bnh->btnd", w[:, 1], hidden) + bias[None, :, 1, None, :]
    if head.rope:
        r = rope_matrix(torch.arange(n), d, head.rope_base, dtype=hidden.dtype, device=hidden.device)
        q, k = torch.einsum("nde,btne->btnd", r, q), torch.einsum("nde,btne->btnd", r, k)
    s = torch.einsum("btid,btjd->btij", q, k) / d ** 0.5
    neg = torch.finfo(s.dtype).min
    for i, j in itertools.product(range(n), range(n)):  # reference only: explicit cell rule
        bad = ~(mask[:, i] & mask[:, j]) | torch.tensor(j < i)
        s[:, :, i, j] = torch.where(bad[:, None], torch.full_like(s[:, :, i, j], neg), s[:, :, i, j])
    return s


def efficient_global_pointer_reference(hidden: torch.Tensor, mask: torch.Tensor,
                                       head: EfficientGlobalPointer) -> torch.Tensor:
    """Eq. (ch02-egp) literally: ``q_iᵀk_j/√d + w_αᵀ[q_i; k_i; q_j; k_j] + b_α`` with ``w_α ∈ ℝ^{4d}``.

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
        r = rope_matrix(torch.arange(n), d, head.rope_base, dtype=hidden.dtype, device=hidden.device)
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
    """``log(1 + Σ_neg e^{s}) + log(1 + Σ_pos e^{-s})`` over the last axis: eq. (ch02-loss), right-hand side.

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
    """Eq. (ch02-loss), left-hand side: the pairwise sum with threshold ``s_0 = 0``.

    ``log(1 + Σ_{neg,pos} e^{s_i - s_j} + Σ_neg e^{s_i} + Σ_pos e^{-s_j})``:
    literal double sum over (negative, positive) pairs; for checks only.
    """
    y = targets.to(torch.bool)
    e = logits.exp()
    neg = torch.where(y, torch.zeros_like(e), e)
    pos = torch.where(y, 1 / e, torch.zeros_like(e))
    pairs = (neg[..., :, None] * pos[..., None, :]).sum((-1, -2))
    return torch.log(1 + pairs + neg.sum(-1) + pos.sum(-1))


def sparse_multilabel_categorical_crossentropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The same loss from positive indices only, eq. (ch02-sparse): ``a + log(1 - e^{b - a})``.

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
    """Eq. (ch02-loss) averaged over (sample, type) rows: flatten ``(B, m, n, n)`` to ``(B·m, n²)``."""
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (batch, types, n, n), got {tuple(logits.shape)}")
    return multilabel_categorical_crossentropy(logits.flatten(2), targets.flatten(2)).mean()


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------

def decode_spans(logits: torch.Tensor, threshold: float = 0.0) -> list[set[tuple[int, int, int]]]:
    """Every ``(type, start, end)`` (end inclusive) with score ``> threshold``, per sample.

    Two vectorised stages, no recursion: the row maxima pick the (sample,
    type, start) rows that hold any positive cell, then only those rows are
    thresholded. Nested and overlapping spans are all
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
# the CRF baseline (BIO tags from kexue.spans)
# ---------------------------------------------------------------------------

class LinearChainCRF(nn.Module):
    """A linear-chain CRF with start/end/transition scores; batched forward algorithm and Viterbi.

    The recursion over time is inherently sequential: that is the point of the
    chapter's comparison. ``mask`` must be left-aligned (True first).
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.num_tags = checks.positive_int("num_tags", num_tags)
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
    ``2(2m + 1)`` start/end scores of our CRF.
    """

    def __init__(self, hidden_size: int, num_types: int) -> None:
        super().__init__()
        self.num_types = checks.positive_int("num_types", num_types)
        self.dense = nn.Linear(hidden_size, 2 * num_types + 1)
        self.crf = LinearChainCRF(2 * num_types + 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Emission scores ``(B, n, 2m + 1)``."""
        return self.dense(hidden)
