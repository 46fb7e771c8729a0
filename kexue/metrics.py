"""Entity-level metrics for span extraction (NER).

Micro precision, recall and F1 over exact ``(type, start, end)`` triples, end
inclusive: mixing half-open and closed ends silently gives an F1 of 0, a
mistake peer implementations have made. Book chapter 02 derives the F1 formula
in its metric section.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
import math
from dataclasses import dataclass

import torch

from kexue import checks

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


def _check(pred: Sequence, gold: Sequence) -> tuple[list[set], list[set]]:
    """``pred`` and ``gold`` as lists of per-sample entity sets; ``TypeError``/``ValueError`` naming the bad one."""
    for name, value in (("pred", pred), ("gold", gold)):
        if isinstance(value, (set, frozenset)):
            raise TypeError(f"pred and gold must be sequences (one set of entities per sample); {name} is a single set")
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(
                f"{name} must be a list or tuple (one set of entities per sample), got {type(value).__name__}"
            )
    if len(pred) != len(gold):
        raise ValueError(f"pred and gold must have one entry per sample, got {len(pred)} and {len(gold)}")
    return _sets("pred", pred), _sets("gold", gold)


def _sets(name: str, samples: Sequence) -> list[set]:
    out = []
    for i, sample in enumerate(samples):
        if isinstance(sample, (str, bytes)):
            raise TypeError(f"{name}[{i}] must be a collection of entities, got the string {sample!r}")
        try:
            out.append(set(sample))
        except TypeError as err:
            raise TypeError(f"{name}[{i}] must be an iterable of hashable entities (tuples), got {sample!r}") from err
    return out


def entity_prf(pred: Sequence[Iterable[Hashable]], gold: Sequence[Iterable[Hashable]]) -> PRF:
    """Micro P/R/F1 where each sample's prediction and gold are sets of entity tuples.

    ``F1 = 2|R ∩ T| / (|R| + |T|)`` summed over samples (micro average).
    """
    pred_sets, gold_sets = _check(pred, gold)
    tp = n_pred = n_gold = 0
    for p, g in zip(pred_sets, gold_sets):
        tp += len(p & g)
        n_pred += len(p)
        n_gold += len(g)
    return _prf(tp, n_pred, n_gold)


def per_type_prf(
    pred: Sequence[Iterable[tuple]], gold: Sequence[Iterable[tuple]], type_index: int = 0
) -> dict[Hashable, PRF]:
    """:func:`entity_prf` restricted to each entity type (``entity[type_index]``)."""
    pred, gold = _check(pred, gold)
    if isinstance(type_index, bool) or not isinstance(type_index, int):
        raise TypeError(f"type_index must be an int, got {type(type_index).__name__}")
    for name, samples in (("pred", pred), ("gold", gold)):
        for sample in samples:
            for e in sample:
                try:
                    e[type_index]
                except (TypeError, IndexError, KeyError) as err:
                    raise ValueError(
                        f"{name} entities must be tuples with their type at index type_index={type_index}, got {e!r}"
                    ) from err
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

    ``targets`` hold 0/1 (or bool); ``logits`` are real, ``-inf`` allowed for
    masked cells, NaN refused (a NaN score is neither above nor below the
    threshold: counting it as "no entity" would hide a diverged model).
    ``threshold`` is a finite real number.
    """
    checks.tensor("logits", logits)
    checks.tensor("targets", targets)
    if logits.dtype == torch.bool or logits.is_complex():
        raise TypeError(f"logits must be a real tensor, got {logits.dtype}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite real number, got {threshold!r}")
    if logits.is_floating_point() and bool(torch.isnan(logits).any()):
        raise ValueError(f"logits must not hold NaN, got {int(torch.isnan(logits).sum())} NaN entries")
    if logits.shape != targets.shape:
        raise ValueError(f"targets must have logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}")
    if targets.is_complex() or (targets.numel() and not bool(((targets == 0) | (targets == 1)).all())):
        raise ValueError("targets must hold only 0 and 1 (or be bool)")
    pred = (logits > threshold).to(torch.float64)
    y = targets.to(torch.float64)
    denom = y.sum() + pred.sum()
    return torch.where(denom > 0, 2 * (y * pred).sum() / denom.clamp_min(1), denom.new_zeros(()))
