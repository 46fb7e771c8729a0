"""One figure style for the whole book.

Call :func:`figure` instead of ``plt.subplots``: it applies the style, uses a
constrained layout and a width that fits the book's text column. Labels stay
in English (the CI machines have no CJK font).
"""

from __future__ import annotations

from typing import Any

import matplotlib
import matplotlib.pyplot as plt

__all__ = ["PALETTE", "apply_style", "figure"]

#: Colour-blind-safe palette (Okabe & Ito), in the order series are drawn.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

_STYLE: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
}


def apply_style() -> None:
    """Set the book's matplotlib rcParams globally."""
    plt.rcParams.update(_STYLE)


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 7.0, height: float | None = None, **kwargs: Any):
    """``plt.subplots`` in the book's style; returns ``(fig, axes)``."""
    apply_style()
    if height is None:
        height = 3.0 * nrows if ncols > 1 else 3.6 * nrows
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kwargs)
