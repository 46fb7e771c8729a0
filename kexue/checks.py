"""Argument checks shared by every module.

Each check raises a ``ValueError`` or ``TypeError`` whose message names the
argument and what was expected, and returns the (possibly normalised) value so
that it can be used inline: ``self.dim = positive_int("dim", dim)``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeVar

import torch

__all__ = [
    "positive_int",
    "int_at_least",
    "nonnegative_int",
    "positive_float",
    "float_in",
    "choice",
    "tensor",
    "floating_tensor",
]

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int ``>= 1``; ``ValueError`` naming ``name`` otherwise."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ``>= minimum``."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def nonnegative_int(name: str, value: Any) -> int:
    """``value`` as an int ``>= 0``."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def positive_float(name: str, value: Any) -> float:
    """``value`` as a finite real number ``> 0`` (ints accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (0.0 < float(value) < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def float_in(name: str, value: Any, low: float, high: float, *, closed_high: bool = False) -> float:
    """``value`` as a real number in ``[low, high)`` (``[low, high]`` with ``closed_high``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    ok = low <= value <= high if closed_high else low <= value < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def choice(name: str, value: T, choices: Collection[T]) -> T:
    """``value`` if it is one of ``choices``; ``ValueError`` listing them otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def tensor(name: str, value: Any) -> torch.Tensor:
    """``value`` if it is a ``torch.Tensor``; ``TypeError`` otherwise."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def floating_tensor(name: str, value: Any, *, dim: int | None = None) -> torch.Tensor:
    """A floating-point tensor, optionally with exactly ``dim`` dimensions."""
    tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(value.shape)}")
    return value
