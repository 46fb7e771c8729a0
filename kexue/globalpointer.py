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
import operator
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
    "spans_to_bio", "bio_to_spans", "span_targets", "span_indices",
]


# ---------------------------------------------------------------------------
# masking
# ---------------------------------------------------------------------------

def _span_logits_arg(logits: object) -> torch.Tensor:
    """``logits`` as a floating ``(batch, types, n, n)`` tensor; errors name the argument."""
    checks.floating_tensor("logits", logits, dim=4)
    if logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must have shape (batch, types, n, n), got {tuple(logits.shape)}")
    return logits


def _invalid_cells(mask: torch.Tensor, tril: bool) -> torch.Tensor:
    """``(B, 1, n, n)`` bool, True on the cells that are not candidates of eq. (ch02-count).

    A cell ``(i, j)`` is a candidate iff ``mask[i]`` and ``mask[j]`` (row AND
    column, so left padding is handled too) and ``i <= j`` (when ``tril``).
    Built once per batch from the ``(B, n)`` mask; broadcast over the types.
    """
    valid = mask[:, :, None] & mask[:, None, :]
    if tril:
        valid = valid.triu_()
    return valid.logical_not_()[:, None]


def mask_span_logits(logits: torch.Tensor, mask: torch.Tensor | None, tril: bool = True) -> torch.Tensor:
    """Set impossible cells of ``(batch, types, n, n)`` logits to ``finfo(dtype).min``.

    What survives is the candidate set of eq. (ch02-count): a cell ``(i, j)``
    is kept iff both ``i`` and ``j`` are real tokens (row AND column axis, so
    left padding is handled too) and ``i <= j`` (when ``tril``).
    ``finfo.min`` rather than ``-1e12`` keeps fp16/bf16 finite (``-1e12``
    overflows to ``-inf`` in fp16). ``mask`` follows the package's token-mask
    contract (:func:`kexue.checks.token_mask`: bool or 0/1, True on real
    tokens, moved to the logits' device; None = no padding). Out of place.
    """
    logits = _span_logits_arg(logits)
    checks.boolean("tril", tril)
    mask = _span_mask(mask, logits.shape[0], logits.shape[-1], logits.device)
    return logits.masked_fill(_invalid_cells(mask, tril), torch.finfo(logits.dtype).min)


def _span_mask(mask: object, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """The token-mask contract for the span heads; None becomes all True. Empty rows are allowed
    (a text with no real token has no candidate span)."""
    if mask is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    return checks.token_mask("mask", mask, batch, n, device, allow_empty_rows=True)


class _FillInvalid(torch.autograd.Function):
    """In place: the cells of ``scores`` (``(B·m, n, n)`` or ``(B, m, n, n)``) where ``invalid``
    (``(B, 1, n, n)``) is True become ``finfo(dtype).min``. The gradient is the incoming one with
    those cells set to 0, in one ``torch.where`` pass (autograd's ``masked_fill`` clones, then fills)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.mark_dirty(scores)
        ctx.save_for_backward(invalid)
        b, n = invalid.shape[0], invalid.shape[-1]
        scores.view(b, -1, n, n).masked_fill_(invalid, torch.finfo(scores.dtype).min)
        return scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (invalid,) = ctx.saved_tensors
        b, n = invalid.shape[0], invalid.shape[-1]
        return torch.where(invalid, 0, grad.view(b, -1, n, n)).view(grad.shape), None


def _sequence_arg(name: str, x: object, width: int, module: nn.Module) -> torch.Tensor:
    """``x`` as a non-empty floating ``(batch, seq, width)`` tensor of ``module``'s dtype and device."""
    checks.floating_tensor(name, x, dim=3)
    if x.shape[-1] != width:
        raise ValueError(f"{name} must have shape (batch, seq, {width}), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one sequence of at least one step, got shape {tuple(x.shape)}")
    return checks.matches_module(name, x, module)


# ---------------------------------------------------------------------------
# the two heads
# ---------------------------------------------------------------------------

class _SpanHead(nn.Module):
    """Shared arguments of the two span heads: checked sizes, RoPE switch and base."""

    def __init__(self, hidden_size: int, num_types: int, head_size: int, rope: bool, rope_base: float) -> None:
        super().__init__()
        for name, v in (("hidden_size", hidden_size), ("num_types", num_types), ("head_size", head_size)):
            checks.positive_int(name, v)
        checks.boolean("rope", rope)
        if rope and head_size % 2:
            raise ValueError(f"head_size must be even when rope=True, got {head_size}")
        self.hidden_size, self.num_types, self.head_size = hidden_size, num_types, head_size
        self.rope, self.rope_base = rope, checks.positive_float("rope_base", rope_base)

    def _inputs(self, hidden: object, mask: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``hidden (B, n, D)`` and the bool ``(B, n)`` mask on its device."""
        hidden = _sequence_arg("hidden", hidden, self.hidden_size, self)
        return hidden, _span_mask(mask, hidden.shape[0], hidden.shape[1], hidden.device)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """RoPE over the second-to-last (sequence) axis with the element-wise fast path of :mod:`kexue.rope`."""
        if not self.rope:
            return x
        return apply_rope(x, torch.arange(x.shape[-2], device=x.device), self.rope_base)


def _scaled_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · q kᵀ`` as ``(N, n, n)``, the leading axes of ``q`` and ``k`` flattened into ``N``:
    one batched matmul with the scale folded into it (no pass over the scores)."""
    q3, k3 = q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:])
    zero = q3.new_zeros(1, 1, 1)  # ignored (beta=0)
    return torch.baddbmm(zero, q3, k3.transpose(-1, -2), beta=0, alpha=scale)


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

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden (B, n, D)``, token ``mask (B, n)`` (None: no padding) → masked logits ``(B, m, n, n)``."""
        hidden, mask = self._inputs(hidden, mask)
        (b, n), m, d = mask.shape, self.num_types, self.head_size
        # every type's q and k from one projection, as a (B, m, 2, n, d) view; RoPE in one pass
        qk = self._rotate(self.dense(hidden).unflatten(-1, (m, 2, d)).permute(0, 2, 3, 1, 4))
        q, k = qk.unbind(2)
        logits = _scaled_scores(q, k, d ** -0.5)  # (B·m, n, n): every type in one batched matmul
        # the mask is built once per batch and applied in place to the matmul's own output
        # (in place on a view of it would make autograd copy the grid in the backward pass)
        return _FillInvalid.apply(logits, _invalid_cells(mask, tril=True)).view(b, m, n, n)


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

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden (B, n, D)``, token ``mask (B, n)`` (None: no padding) → masked logits ``(B, m, n, n)``."""
        hidden, mask = self._inputs(hidden, mask)
        d = self.head_size
        x = self.p_dense(hidden)  # (B, n, 2d), q and k interleaved
        q, k = self._rotate(x.unflatten(-1, (d, 2)).permute(0, 3, 1, 2)).unbind(1)  # (B, n, d) each
        shared = _scaled_scores(q, k, d ** -0.5)  # (B, n, n)
        bias = (self.q_dense(x) / 2).transpose(1, 2)  # (B, 2m, n): start (odd) and end (even) biases
        logits = (bias[:, 1::2, :, None] + bias[:, ::2, None, :]).add_(shared[:, None])
        return _FillInvalid.apply(logits, _invalid_cells(mask, tril=True))


# ---------------------------------------------------------------------------
# naive references (formula level)
# ---------------------------------------------------------------------------

def global_pointer_reference(hidden: torch.Tensor, mask: torch.Tensor, head: GlobalPointer) -> torch.Tensor:
    """Eq. (ch02-score) written out: explicit RoPE matrices, per-type affine maps, explicit masks."""
    b, n, _ = hidden.shape
    mask = _span_mask(mask, b, n, hidden.device)
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


def _multi_hot(targets: object, logits: torch.Tensor) -> torch.Tensor:
    """``targets`` (bool or 0/1 of ``logits``' shape) as a bool tensor; errors name the argument."""
    checks.tensor("targets", targets)
    if targets.shape != logits.shape:
        raise ValueError(f"targets must be a tensor of logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}")
    if targets.dtype == torch.bool:
        return targets.to(logits.device)
    pos = targets != 0
    if targets.numel() and not bool((pos == (targets == 1)).all()):
        raise ValueError("targets must be 0/1 (multi-hot)")
    return pos.to(logits.device)


def _refuse_masked_positives(masked: torch.Tensor, where: str = "index") -> None:
    """A positive on a masked cell (``finfo.min`` or ``-inf``) makes the loss about ``1e38`` in
    float32 and NaN in float16: refuse it. ``masked`` is True at such positives."""
    if bool(masked.any()):
        first = masked.nonzero()[0].tolist()
        _masked_positive_error(int(masked.sum()), f"{where} {first}")


def _masked_positive_error(count: int, first: str) -> None:
    raise ValueError(
        f"targets mark {count} masked cell(s) as positive (first: {first}); a positive must be a "
        "candidate span (both ends real tokens, start <= end): drop such spans before building the "
        "targets (span_targets(..., mask=mask) refuses them)"
    )


def multilabel_categorical_crossentropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log(1 + Σ_neg e^{s}) + log(1 + Σ_pos e^{-s})`` over the last axis: eq. (ch02-loss), right-hand side.

    ``logits (..., C)``; ``targets`` 0/1 of the same shape. Returns ``(...)`` in
    ``logits``' dtype; computed in at least float32. Masked cells (``finfo.min``
    or ``-inf``) must be negatives (a positive there is refused); they
    contribute exactly 0.
    """
    checks.floating_tensor("logits", logits)
    pos = _multi_hot(targets, logits)
    _refuse_masked_positives(pos & (logits <= torch.finfo(logits.dtype).min))
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


def _positive_indices(name: str, positives: object, logits: torch.Tensor) -> torch.Tensor:
    """Checked int64 ``(..., K)`` indices into ``logits``' last axis, ``-1`` padding, no duplicate."""
    checks.tensor(name, positives)
    if positives.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 tensor of indices (..., K), padded with -1, got {positives.dtype}")
    if positives.shape[:-1] != logits.shape[:-1]:
        raise ValueError(f"{name} must have shape {tuple(logits.shape[:-1])} + (K,), got {tuple(positives.shape)}")
    positives = positives.to(device=logits.device, dtype=torch.int64)
    if positives.numel():
        if int(positives.max()) >= logits.shape[-1] or int(positives.min()) < -1:
            raise ValueError(f"{name} must lie in [0, {logits.shape[-1]}) or be -1 (padding)")
        ordered = positives.sort(-1).values
        dup = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
        if bool(dup.any()):
            row = dup.any(-1).nonzero()[0].tolist()
            raise ValueError(f"{name} must not repeat an index (row {row} does): a positive counts once, "
                             "so deduplicate (e.g. with torch.unique) before calling")
    return positives


def sparse_multilabel_categorical_crossentropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The same loss from positive indices only, eq. (ch02-sparse): ``a + log(1 - e^{b - a})``.

    ``logits (..., C)``; ``positives (..., K)`` int64 indices into the last
    axis, padded with ``-1``; indices must be distinct (a repeated index is
    refused: it would count its cell twice in ``b``). ``a = log(1 + Σ_all e^s)``,
    ``b = log Σ_pos e^s``. Returns ``(...)``. Where the positives hold over
    90% of ``e^a`` the subtraction would cancel (in float32 a positive 100
    above the negatives erases them from ``a``), so those rows sum the
    negatives directly.
    """
    checks.floating_tensor("logits", logits)
    positives = _positive_indices("positives", positives, logits)
    s = logits.to(_loss_dtype(logits.dtype))
    valid = positives >= 0
    sp = s.gather(-1, positives.clamp_min(0))
    _refuse_masked_positives(valid & (sp <= torch.finfo(logits.dtype).min), "positives index")
    pos_term = _log1p_sum_exp((-sp).masked_fill(~valid, torch.finfo(s.dtype).min))
    a = _log1p_sum_exp(s)
    # e^{b - a} = Σ_pos e^{s - a}, summed with a 0/1 mask (a logsumexp over an
    # empty positive set would give a NaN gradient)
    ratio = (torch.exp(sp - a[..., None]) * valid).sum(-1)
    neg_term = a + torch.log1p(-ratio.clamp(max=1 - torch.finfo(s.dtype).eps))
    # where the positives hold most of the mass, 1 - e^{b - a} cancels (in float32 the negatives
    # can vanish from a entirely): those rows sum the negatives directly, positives set to min
    close = ratio > 0.9
    if bool(close.any()):
        c = s.shape[-1]
        ext = torch.cat([s, s.new_zeros(*s.shape[:-1], 1)], -1)  # column c absorbs the -1 padding
        direct = _log1p_sum_exp(ext.scatter(-1, positives.masked_fill(~valid, c), torch.finfo(s.dtype).min)[..., :c])
        neg_term = torch.where(close, direct, neg_term)
    return (neg_term + pos_term).to(logits.dtype)


class _RowMCCE(torch.autograd.Function):
    """Eq. (ch02-loss), right-hand side, per row of ``scores (R, C)`` from the positives' column indices.

    The fused training loss. Forward: one maximum and one exponent pass over
    the ``C`` cells into a buffer, which the backward pass scales into the
    gradient of eq. (ch02-grad); the ``K`` positives are handled apart.
    Exact: the positives are removed from the negative sum (their buffer
    entries set to 0), not subtracted from it, so nothing cancels. The shift
    is ``max(0, row maximum)``; where a positive is that maximum and lies so
    far above 0 that the exponent floor could swamp the negatives, the row
    is shifted by its largest negative instead (found on a copy of those rows
    only). Reference: :func:`mcce_reference`.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        cdtype = _loss_dtype(scores.dtype)
        # exponents are floored where exp is still a normal number: below that, exp takes a slow path
        # (masked cells are finfo.min); a floored cell adds e^floor, below every eps of the sum
        floor = -700.0 if cdtype == torch.float64 else -80.0
        valid = positives >= 0
        rows, slots = valid.nonzero(as_tuple=True)
        cols = positives[rows, slots]
        sp = scores.gather(1, positives.clamp_min(0)).to(cdtype)  # (R, K)
        top = scores.amax(1).to(cdtype)
        shift = top.clamp_min(0)
        limit = math.log(torch.finfo(cdtype).eps) - 2 - floor - math.log(scores.shape[1])
        far = (sp.masked_fill(~valid, -math.inf).amax(1) >= top) & (top > limit)
        if bool(far.any()):
            r = far.nonzero()[:, 0]
            at = torch.full_like(far, -1, dtype=torch.int64)
            at[r] = torch.arange(len(r), device=r.device)
            neg = scores[r].to(cdtype)
            keep = far[rows]
            neg[at[rows[keep]], cols[keep]] = -math.inf
            shift[r] = neg.amax(1).clamp_min(0)
        # the buffer: float32/64, or bf16 for bf16 scores (same exponent range; the sums are float32)
        buf = torch.bfloat16 if scores.dtype == torch.bfloat16 else cdtype
        e = torch.sub(scores, shift[:, None], out=torch.empty_like(scores, dtype=buf))
        e.clamp_min_(floor).exp_()
        e[rows, cols] = 0  # the positives leave the negative sum
        neg = e.sum(1, dtype=cdtype)  # Σ_neg e^{s - shift}
        # the positives' term log(1 + Σ_pos e^{-s}) on the K gathered scores
        p_shift = (-sp).masked_fill(~valid, -math.inf).amax(1).clamp_min(0)
        ep = torch.exp((-sp - p_shift[:, None]).clamp_min(floor)).masked_fill(~valid, 0)
        pos = ep.sum(1)  # Σ_pos e^{-s - p_shift}
        ctx.save_for_backward(e, ep, torch.exp(-shift) + neg, torch.exp(-p_shift) + pos, rows, slots, cols)
        ctx.out_dtype = scores.dtype
        # log(1 + e^{shift} Σ) as logaddexp(0, ·): no cancellation when the sum is small
        zero = neg.new_zeros(())
        loss = torch.logaddexp(zero, shift + neg.log()) + torch.logaddexp(zero, p_shift + pos.log())
        return loss.to(scores.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        e, ep, z_neg, z_pos, rows, slots, cols = ctx.saved_tensors  # z: Z_± · e^{-shift}
        g = grad.to(z_neg.dtype)
        # ∂/∂s_c = e^{s_c}/Z_- on the negatives, -e^{-s_c}/Z_+ on the positives: eq. (ch02-grad)
        out = e * (g / z_neg).to(e.dtype)[:, None]
        out[rows, cols] = -(ep * (g / z_pos)[:, None])[rows, slots].to(e.dtype)
        return out.to(ctx.out_dtype), None


def _pack(rows: torch.Tensor, cols: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``(num_rows, K >= 1)`` int64: each row's ``cols`` side by side, ``-1`` padding (``rows`` ascending)."""
    counts = torch.bincount(rows, minlength=num_rows)
    width = max(1, int(counts.max()) if rows.numel() else 0)
    rank = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    out = torch.full((num_rows, width), -1, dtype=torch.int64, device=rows.device)
    out[rows, rank] = cols
    return out


def global_pointer_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (ch02-loss) averaged over the (sample, type) rows of ``(B, m, n, n)`` logits.

    ``targets``: dense 0/1 of the logits' shape (:func:`span_targets`) or the
    positives' flat cell indices ``i·n + j``, int64 ``(B, m, K)`` padded with
    ``-1`` (:func:`span_indices`, which skips the dense tensor). A positive on
    a masked cell (padding, ``j < i``, or ``mask`` False at either end when
    ``mask`` is given) is refused with a ``ValueError``. Computed by the fused
    loss :class:`_RowMCCE` (checked against :func:`mcce_reference`); returns
    a scalar in the logits' dtype.
    """
    logits = _span_logits_arg(logits)
    b, m, n, _ = logits.shape
    if logits.numel() == 0:
        raise ValueError(f"logits must hold at least one sample, type and token, got shape {tuple(logits.shape)}")
    flat = logits.reshape(b * m, n * n)
    checks.tensor("targets", targets)
    if targets.dim() == 3 and targets.shape[:2] == (b, m) and not targets.is_floating_point():
        positives = _positive_indices("targets", targets.reshape(b * m, targets.shape[-1]), flat)
        if positives.shape[1] == 0:
            positives = positives.new_full((b * m, 1), -1)
    else:
        if targets.shape != logits.shape:
            raise ValueError(f"targets must be 0/1 of logits' shape {tuple(logits.shape)} or int64 span "
                             f"indices of shape ({b}, {m}, K), got {targets.dtype} {tuple(targets.shape)}")
        dense = targets.to(logits.device).reshape(b * m, n * n)
        rows, cols = dense.nonzero(as_tuple=True)  # one pass; the values are checked on the nonzeros only
        if dense.dtype != torch.bool and not bool((dense[rows, cols] == 1).all()):
            raise ValueError("targets must be 0/1 (multi-hot)")
        positives = _pack(rows, cols, b * m)
    valid = positives >= 0
    cells = positives.clamp_min(0)
    bad = valid & (flat.gather(1, cells) <= torch.finfo(logits.dtype).min)
    if mask is not None:
        mask = checks.token_mask("mask", mask, b, n, logits.device, allow_empty_rows=True)
        i, j = cells.div(n, rounding_mode="floor"), cells.remainder(n)
        row_mask = mask.repeat_interleave(m, 0)
        bad |= valid & ~(row_mask.gather(1, i) & row_mask.gather(1, j) & (i <= j))
    if bool(bad.any()):
        r, slot = bad.nonzero()[0].tolist()
        c = int(positives[r, slot])
        _masked_positive_error(int(bad.sum()), f"sample {r // m}, type {r % m}, start {c // n}, end {c % n}")
    return _RowMCCE.apply(flat, positives).mean()


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
    logits = _span_logits_arg(logits)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
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


def _span_rows(spans: object, num_types: int, n: int, mask: object) -> list[tuple[int, int, int, int]]:
    """``(sample, type, start, end)`` of every span, each checked: a type in ``[0, num_types)``,
    ``0 <= start <= end < n``, and with ``mask`` both ends real tokens."""
    checks.positive_int("num_types", num_types)
    checks.positive_int("n", n)
    if isinstance(spans, (torch.Tensor, str)) or not isinstance(spans, Sequence):
        raise TypeError("spans must be a sequence with one sequence of (type, start, end) triples per sample, "
                        f"got {type(spans).__name__}")
    if mask is not None:
        mask = checks.token_mask("mask", mask, len(spans), n, allow_empty_rows=True).cpu()
    out = []
    for b, row in enumerate(spans):
        if isinstance(row, (torch.Tensor, str)) or not isinstance(row, (Sequence, set, frozenset)):
            raise TypeError(f"spans[{b}] must be a sequence of (type, start, end) triples, got {type(row).__name__}")
        for span in row:
            try:
                if len(span) != 3 or any(isinstance(v, bool) for v in span):
                    raise TypeError
                t, i, j = (operator.index(v) for v in span)
            except TypeError:
                raise ValueError(f"spans[{b}] holds {span!r}; each span must be (type, start, end) of ints") from None
            if not 0 <= t < num_types:
                raise ValueError(f"spans[{b}] holds {span!r}: type must lie in [0, num_types={num_types})")
            if not 0 <= i <= j < n:
                raise ValueError(f"spans[{b}] holds {span!r}: need 0 <= start <= end < n={n} "
                                 "(end inclusive)")
            if mask is not None and not (mask[b, i] and mask[b, j]):
                raise ValueError(f"spans[{b}] holds {span!r}, which starts or ends on a masked token")
            out.append((b, t, i, j))
    return out


def span_targets(spans: Sequence[Sequence[tuple[int, int, int]]], num_types: int, n: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense 0/1 targets ``(B, m, n, n)`` from per-sample ``(type, start, end)`` lists.

    Every span is checked (``ValueError`` naming it): type in ``[0, num_types)``,
    ``0 <= start <= end < n``, and, when the token ``mask`` is given, both ends
    on real tokens. A span listed twice marks its cell once.
    """
    idx = _span_rows(spans, num_types, n, mask)
    y = torch.zeros(len(spans), num_types, n, n, dtype=dtype, device=device)
    if idx:
        bi = torch.tensor(idx, device=device).T
        y[bi[0], bi[1], bi[2], bi[3]] = 1
    return y


def span_indices(spans: Sequence[Sequence[tuple[int, int, int]]], num_types: int, n: int,
                 device: torch.device | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The sparse targets of :func:`global_pointer_loss`: flat cells ``start·n + end``, int64 ``(B, m, K)``.

    ``K`` is the largest number of spans of one (sample, type); shorter rows are
    padded with ``-1``. The spans are checked as in :func:`span_targets`; a
    span listed twice counts once. ``B·m·K`` entries instead of ``B·m·n²``.
    """
    idx = _span_rows(spans, num_types, n, mask)
    b = len(spans)
    cells = torch.tensor(sorted(set(idx)), dtype=torch.int64).view(-1, 4)
    row = cells[:, 0] * num_types + cells[:, 1]
    flat = cells[:, 2] * n + cells[:, 3]
    out = _pack(row, flat, b * num_types)
    return out.view(b, num_types, out.shape[1]).to(device)


# ---------------------------------------------------------------------------
# the CRF baseline (BIO tags from kexue.spans)
# ---------------------------------------------------------------------------

class LinearChainCRF(nn.Module):
    """A linear-chain CRF with start/end/transition scores; batched forward algorithm and Viterbi.

    The recursion over time is inherently sequential: that is the point of the
    chapter's comparison. ``mask`` follows the token-mask contract of
    :func:`kexue.checks.token_mask` and must be left-aligned and contiguous
    (True for the first ``L_b >= 1`` steps of sequence ``b``, then False): the
    forward algorithm skips masked steps while the path score counts the
    steps up to the last real one, so a hole would make them disagree.
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.num_tags = checks.positive_int("num_tags", num_tags)
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.trans = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))

    def _check(self, emissions: object, mask: object) -> torch.Tensor:
        emissions = _sequence_arg("emissions", emissions, self.num_tags, self)
        b, n, _ = emissions.shape
        if mask is None:
            return torch.ones(b, n, dtype=torch.bool, device=emissions.device)
        mask = checks.token_mask("mask", mask, b, n, emissions.device)
        if not bool(mask[:, 0].all()):
            raise ValueError("mask must be on at the first timestep of every sequence (left-aligned)")
        holes = mask[:, 1:] & ~mask[:, :-1]  # a real step after a padded one
        if bool(holes.any()):
            row, t = holes.nonzero()[0].tolist()
            raise ValueError(f"mask must be left-aligned and contiguous (True, ..., True, False, ..., False); "
                             f"sequence {row} has a real step at {t + 1} after padding")
        return mask

    def _tags(self, tags: object, mask: torch.Tensor) -> torch.Tensor:
        checks.tensor("tags", tags)
        if tags.dtype == torch.bool or tags.is_floating_point() or tags.is_complex():
            raise TypeError(f"tags must be an integer tensor of tag ids, got {tags.dtype}")
        if tags.shape != mask.shape:
            raise ValueError(f"tags must have shape {tuple(mask.shape)} (batch, seq), got {tuple(tags.shape)}")
        tags = tags.to(device=mask.device, dtype=torch.int64)
        real = tags[mask]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.num_tags):
            raise ValueError(f"tags must lie in [0, num_tags={self.num_tags}) on real steps, "
                             f"got values from {int(real.min())} to {int(real.max())}")
        return tags.masked_fill(~mask, 0)  # padded steps may hold anything (e.g. -100)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log Z`` by the forward algorithm, shape ``(batch,)``."""
        return self._log_partition(emissions, self._check(emissions, mask))

    def _log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        alpha = self.start + emissions[:, 0]
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha[:, :, None] + self.trans, 1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], nxt, alpha)
        return torch.logsumexp(alpha + self.end, -1)

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised score of the tag paths, shape ``(batch,)`` (vectorised over time)."""
        mask = self._check(emissions, mask)
        return self._score(emissions, self._tags(tags, mask), mask)

    def _score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(emissions.dtype)
        emit = emissions.gather(-1, tags[..., None]).squeeze(-1)
        s = self.start[tags[:, 0]] + (emit * m).sum(1)
        s = s + (self.trans[tags[:, :-1], tags[:, 1:]] * m[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1) - 1).clamp_min(0)[:, None]).squeeze(1)
        return s + self.end[last]

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood over the batch."""
        mask = self._check(emissions, mask)
        tags = self._tags(tags, mask)
        return (self._log_partition(emissions, mask) - self._score(emissions, tags, mask)).mean()

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
        checks.positive_int("hidden_size", hidden_size)
        self.num_types = checks.positive_int("num_types", num_types)
        self.dense = nn.Linear(hidden_size, 2 * num_types + 1)
        self.crf = LinearChainCRF(2 * num_types + 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Emission scores ``(B, n, 2m + 1)`` of ``hidden (B, n, D)``."""
        return self.dense(_sequence_arg("hidden", hidden, self.dense.in_features, self))
