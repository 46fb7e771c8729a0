"""Entity-level metrics for span extraction (NER).

Micro precision, recall and F1 over exact ``(type, start, end)`` triples, end
inclusive: mixing half-open and closed ends silently gives an F1 of 0, a
mistake peer implementations have made. Book chapter 02 derives the F1 formula
in its metric section.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["PRF", "entity_prf", "per_type_prf", "tensor_f1"]


@dataclass(frozen=True)
class PRF:
    """Micro precision / recall / F1 with the counts they come from."""

    precision: float
    recall: float
    f1: float
    tp: int
    n_pred: int
    n_gold: int


def _prf(tp: int, n_pred: int, n_gold: int) -> PRF:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * tp / (n_pred + n_gold) if (n_pred + n_gold) else 0.0
    return PRF(p, r, f, tp, n_pred, n_gold)


def _check(pred: Sequence, gold: Sequence) -> None:
    if isinstance(pred, (set, frozenset)) or isinstance(gold, (set, frozenset)):
        raise TypeError("pred and gold must be sequences (one set of entities per sample), not a single set")
    if len(pred) != len(gold):
        raise ValueError(f"pred and gold must have one entry per sample, got {len(pred)} and {len(gold)}")


def entity_prf(pred: Sequence[Iterable[Hashable]], gold: Sequence[Iterable[Hashable]]) -> PRF:
    """Micro P/R/F1 where each sample's prediction and gold are sets of entity tuples.

    ``F1 = 2|R ∩ T| / (|R| + |T|)`` summed over samples (micro average).
    """
    _check(pred, gold)
    tp = n_pred = n_gold = 0
    for p, g in zip(pred, gold):
        p, g = set(p), set(g)
        tp += len(p & g)
        n_pred += len(p)
        n_gold += len(g)
    return _prf(tp, n_pred, n_gold)


def per_type_prf(
    pred: Sequence[Iterable[tuple]], gold: Sequence[Iterable[tuple]], type_index: int = 0
) -> dict[Hashable, PRF]:
    """:func:`entity_prf` restricted to each entity type (``entity[type_index]``)."""
    _check(pred, gold)
    pred = [set(p) for p in pred]
    gold = [set(g) for g in gold]
    types = sorted({e[type_index] for s in (*pred, *gold) for e in s}, key=str)
    return {
        t: entity_prf([{e for e in p if e[type_index] == t} for p in pred],
                      [{e for e in g if e[type_index] == t} for g in gold])
        for t in types
    }


def tensor_f1(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """The one-line training-time F1 on the span grid: ``2 Σ y·[s>0] / (Σ y + Σ [s>0])``.

    Equals :func:`entity_prf` micro F1 when ``logits`` already has impossible
    cells masked (chapter 02). Returns a 0-dim tensor (0 when both sums are 0).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"targets must have logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}")
    pred = (logits > threshold).to(torch.float64)
    y = targets.to(torch.float64)
    denom = y.sum() + pred.sum()
    return torch.where(denom > 0, 2 * (y * pred).sum() / denom.clamp_min(1), denom.new_zeros(()))
