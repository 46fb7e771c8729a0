"""Small assertion helpers used by the notebooks and tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_shape"]


def check_shape(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Assert that ``t`` has exactly ``shape`` and return it (for chaining in cells)."""
    if tuple(t.shape) != tuple(shape):
        raise AssertionError(f"expected shape {tuple(shape)}, got {tuple(t.shape)}")
    return t
