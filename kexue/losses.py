"""Contrastive losses shared by chapter 01 (SimCSE) and chapter 07 (accumulation).

In-batch InfoNCE, CLIP's symmetric InfoNCE, unsupervised SimCSE in the
adjacent-pair layout, their formula-level loop references, Su's closed-form
embedding gradient and stop-gradient surrogate, and a learnable temperature.
Book chapter 07 derives them (equations ``ch07-infonce``, ``ch07-simcse``,
``ch07-htilde``, ``ch07-surrogate``); chapter 01 trains with the SimCSE loss.

Every loss checks its inputs (:func:`check_embeddings`, :func:`check_temperature`):
embeddings are finite floating ``(rows, dim)`` tensors (NaN or inf **raise** a
``ValueError`` instead of becoming a NaN loss; with cosine similarity an
all-zero row raises too), and the temperature is finite and ``> 0``, a float
or a one-element tensor (a learnable one is checked on its detached value, so
its gradient is untouched).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kexue import checks

__all__ = [
    "info_nce",
    "symmetric_info_nce",
    "simcse_loss",
    "info_nce_reference",
    "simcse_loss_reference",
    "simcse_targets",
    "simcse_embedding_grad",
    "simcse_surrogate",
    "LogitScale",
    "check_temperature",
    "check_embeddings",
]

# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------
def check_temperature(temperature: float | Tensor) -> float | Tensor:
    """``tau``: a finite float ``> 0``, or a one-element floating tensor holding one (a learnable temperature).

    A tensor is checked on its detached value (one host synchronisation), so a
    learnable temperature keeps its gradient; ``tensor(0.)`` (a division by
    zero) and a negative tensor (which would silently invert every similarity)
    raise a ``ValueError`` like the floats do.
    """
    return checks.positive_scalar("temperature", temperature)


def check_embeddings(name: str, x: Any, min_rows: int = 1, *, nonzero_rows: bool = False) -> Tensor:
    """``x`` as a finite floating ``(rows, dim)`` tensor with at least ``min_rows`` rows.

    NaN or inf embeddings **raise** a ``ValueError`` (one host synchronisation)
    rather than propagate: every loss here would turn them into a NaN loss and
    NaN gradients for the whole batch, far from their cause. With
    ``nonzero_rows`` (cosine similarity), an all-zero row raises too: its
    direction is undefined, and normalising it would silently give similarity 0.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor of shape (rows, dim), got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature (dim >= 1), got shape {tuple(x.shape)}")
    checks.finite(name, x.detach())
    if nonzero_rows:
        zero = (x.detach() == 0).all(dim=-1)
        if bool(zero.any()):
            rows = zero.nonzero().flatten().tolist()
            raise ValueError(
                f"{name} has all-zero rows {rows[:8]}: cosine similarity (normalize=True) is undefined for them"
            )
    return x


def _check_pair(a: Tensor, b: Tensor, normalize: bool) -> None:
    checks.boolean("normalize", normalize)
    check_embeddings("a", a, nonzero_rows=normalize)
    check_embeddings("b", b, nonzero_rows=normalize)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise TypeError(f"a and b must share dtype and device, got {a.dtype} on {a.device} and {b.dtype} on {b.device}")


def _tau(temperature: float | Tensor, like: Tensor) -> float | Tensor:
    """Checked temperature; a tensor is moved to ``like``'s device (autograd follows)."""
    tau = check_temperature(temperature)
    return tau.to(like.device) if isinstance(tau, Tensor) else tau


def _similarity(a: Tensor, b: Tensor, normalize: bool) -> Tensor:
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return a @ b.T  # (rows_a, rows_b)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
def _pair_logits(a: Tensor, b: Tensor, temperature: float | Tensor, normalize: bool) -> Tensor:
    """Checked ``(N, N)`` logits ``s(a_i, b_j) / tau`` shared by the InfoNCE variants."""
    _check_pair(a, b, normalize)
    return _similarity(a, b, normalize) / _tau(temperature, a)


def info_nce(a: Tensor, b: Tensor, temperature: float | Tensor = 0.05, *, normalize: bool = True) -> Tensor:
    r"""In-batch InfoNCE: row ``i`` of ``a`` must pick row ``i`` of ``b`` among all rows of ``b``.

    .. math:: \mathcal L = -\frac1N\sum_i \log\frac{e^{s(a_i,b_i)/\tau}}{\sum_j e^{s(a_i,b_j)/\tau}}

    Args:
        a, b: ``(N, d)`` floating tensors (queries and their positives).
        temperature: ``tau > 0``; a float, or a 0-d tensor (learnable, see :class:`LogitScale`).
        normalize: cosine similarity (``True``) or the plain inner product (``False``).

    Implements eq. ``ch07-infonce``.
    """
    logits = _pair_logits(a, b, temperature, normalize)
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def symmetric_info_nce(
    a: Tensor, b: Tensor, temperature: float | Tensor = 0.05, *, normalize: bool = True
) -> Tensor:
    r"""CLIP's symmetric InfoNCE: the mean of ``a -> b`` and ``b -> a`` InfoNCE.

    .. math:: \mathcal L = \tfrac12\big(\mathrm{CE}(S/\tau) + \mathrm{CE}(S^\top/\tau)\big),\quad S_{ij} = s(a_i, b_j)

    Implements eq. ``ch07-infonce``.
    """
    logits = _pair_logits(a, b, temperature, normalize)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def simcse_targets(rows: int, device: torch.device | None = None) -> Tensor:
    """Index of each row's positive in the adjacent-pair layout: ``i XOR 1`` (0<->1, 2<->3, ...)."""
    checks.positive_int("rows", rows)
    if rows % 2:
        raise ValueError(f"rows must be even (two views per sentence), got {rows}")
    return torch.arange(rows, device=device) ^ 1


def _check_views(h: Any, normalize: bool) -> None:
    """``h``: checked embeddings with an even number (>= 2) of rows, two views per sentence."""
    checks.boolean("normalize", normalize)
    check_embeddings("h", h, min_rows=2, nonzero_rows=normalize)
    if h.shape[0] % 2:
        raise ValueError(f"h must have an even number of rows (two views per sentence), got {h.shape[0]}")


def simcse_loss(h: Tensor, temperature: float | Tensor = 0.05, *, normalize: bool = True) -> Tensor:
    r"""Unsupervised SimCSE loss in the article's layout: sentence ``k`` sits on rows ``2k`` and ``2k+1``.

    Every row is a query; its positive is its partner row ``i XOR 1``; all other
    ``2N-2`` rows are negatives; the row itself is masked out of the softmax.

    .. math:: \mathcal L = -\frac1{2N}\sum_i \log\frac{e^{s_{i,i\oplus1}/\tau}}{\sum_{j\ne i} e^{s_{ij}/\tau}}

    Args:
        h: ``(2N, d)`` floating tensor, two views (dropout passes) of each sentence on adjacent rows.
        temperature: ``tau > 0`` (0.05 in SimCSE); float or 0-d tensor.
        normalize: cosine (``True``, SimCSE) or inner-product (``False``, the derivation's) similarity.

    Implements eq. ``ch07-simcse``.
    """
    _check_views(h, normalize)
    tau = _tau(temperature, h)
    rows = h.shape[0]
    eye = torch.eye(rows, dtype=torch.bool, device=h.device)
    logits = (_similarity(h, h, normalize) / tau).masked_fill(eye, float("-inf"))  # (2N, 2N)
    return F.cross_entropy(logits, simcse_targets(rows, h.device))


def info_nce_reference(a: Tensor, b: Tensor, temperature: float | Tensor = 0.05, *, normalize: bool = True) -> Tensor:
    """Formula-level :func:`info_nce`: a Python loop over rows with ``exp`` and ``log`` (slow; for tests)."""
    _check_pair(a, b, normalize)
    tau = _tau(temperature, a)
    if normalize:
        a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    total = a.new_zeros(())
    for i in range(a.shape[0]):
        scores = torch.stack([torch.dot(a[i], b[j]) / tau for j in range(b.shape[0])])
        total = total - torch.log(torch.exp(scores[i]) / torch.exp(scores).sum())
    return total / a.shape[0]


def simcse_loss_reference(h: Tensor, temperature: float | Tensor = 0.05, *, normalize: bool = True) -> Tensor:
    """Formula-level :func:`simcse_loss`: loops over rows ``i`` and candidates ``j != i`` (slow; for tests)."""
    _check_views(h, normalize)
    tau = _tau(temperature, h)
    if normalize:
        h = h / h.norm(dim=-1, keepdim=True)
    rows = h.shape[0]
    total = h.new_zeros(())
    for i in range(rows):
        positive = torch.exp(torch.dot(h[i], h[i ^ 1]) / tau)
        denominator = sum(torch.exp(torch.dot(h[i], h[j]) / tau) for j in range(rows) if j != i)
        total = total - torch.log(positive / denominator)
    return total / rows


def _simcse_probabilities(h: Tensor, tau: float | Tensor) -> tuple[Tensor, Tensor]:
    rows = h.shape[0]
    eye = torch.eye(rows, dtype=torch.bool, device=h.device)
    p = torch.softmax((h @ h.T / tau).masked_fill(eye, float("-inf")), dim=-1)  # (2N, 2N), p_ii = 0
    t = F.one_hot(simcse_targets(rows, h.device), rows).to(h.dtype)  # symmetric 0/1 matrix
    return p, t


def simcse_embedding_grad(h: Tensor, temperature: float | Tensor = 0.05) -> Tensor:
    r"""Su's closed form :math:`\tilde h = \partial\mathcal L/\partial h` for the inner-product SimCSE loss.

    .. math:: \tilde{\boldsymbol h}_i = \frac{1}{2N\tau}\sum_j (p_{ij} + p_{ji} - 2t_{ij})\,\boldsymbol h_j,
              \quad\text{i.e. } \tilde H = \frac{(P + P^\top - 2T)H}{2N\tau}

    for :func:`simcse_loss` with ``normalize=False`` and mean reduction over the ``2N`` rows.

    Implements eq. ``ch07-htilde``.
    """
    _check_views(h, False)
    tau = _tau(temperature, h)
    with torch.no_grad():
        p, t = _simcse_probabilities(h, tau)
        return (p + p.T - 2 * t) @ h / (h.shape[0] * tau)


def simcse_surrogate(h: Tensor, temperature: float | Tensor = 0.05) -> Tensor:
    r"""Su's stop-gradient surrogate :math:`\frac1{2N}\sum_{ij}(p^{sg}_{ij} - t_{ij})\,s_{ij}`, ``s = h h^T/tau``.

    Its gradient in ``h`` equals that of the inner-product :func:`simcse_loss`; its value does not.

    Implements eq. ``ch07-surrogate``.
    """
    _check_views(h, False)
    tau = _tau(temperature, h)
    with torch.no_grad():
        p, t = _simcse_probabilities(h, tau)
    rows = h.shape[0]
    eye = torch.eye(rows, dtype=torch.bool, device=h.device)
    s = (h @ h.T / tau).masked_fill(eye, 0.0)  # the diagonal never enters the loss
    return ((p - t) * s).sum() / rows


class LogitScale(nn.Module):
    """A learnable temperature stored as ``log_scale = log(1/tau)`` (CLIP's parameterisation).

    ``temperature()`` returns ``tau = exp(-log_scale)`` as a 0-d tensor to pass to the losses.

    Chapter 07's section "A parameter inside the loss" uses it.
    """

    def __init__(self, temperature: float = 0.05, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        temperature = checks.positive_float("temperature", temperature)
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature), dtype=dtype))

    def temperature(self) -> Tensor:
        return torch.exp(-self.log_scale)

    def forward(self) -> Tensor:
        return self.temperature()
