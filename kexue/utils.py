"""Device, seeding and run-profile helpers shared by every chapter.

See: the book's "Notation and conventions" page.
"""

from __future__ import annotations

import os
import random
from typing import Literal

import numpy as np
import torch

__all__ = ["get_device", "seed_everything", "profile", "Profile", "PROFILES", "git_commit"]

Profile = Literal["smoke", "book", "full"]
#: The run profiles, smallest first: ``smoke`` (CPU, minutes; what CI runs),
#: ``book`` (a recorded CPU run of up to about 90 minutes) and ``full`` (the
#: article's scale, meant for a GPU).
PROFILES: tuple[str, ...] = ("smoke", "book", "full")


def get_device() -> torch.device:
    """Return the device every chapter runs on.

    The ``KEXUE_DEVICE`` environment variable wins (any string ``torch.device``
    accepts, e.g. ``cpu``, ``cuda:1``); otherwise CUDA when present, else CPU.
    This is the only place in kexue that chooses a device.
    """
    override = os.environ.get("KEXUE_DEVICE", "").strip()
    if override:
        try:
            return torch.device(override)
        except RuntimeError as err:  # torch raises RuntimeError for bad strings
            raise ValueError(
                f"KEXUE_DEVICE={override!r} is not a device torch understands "
                "(expected e.g. 'cpu', 'cuda', 'cuda:0')"
            ) from err
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    Returns a fresh ``torch.Generator`` seeded with ``seed`` for code that
    prefers an explicit generator over the global state.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def profile() -> Profile:
    """Read the run profile from ``KEXUE_PROFILE``.

    ``smoke`` (the default) is the CPU-sized run CI executes; ``book`` is the
    recorded CPU run; ``full`` is the article's scale, meant for a GPU. Any
    other value raises ``ValueError``.
    """
    value = os.environ.get("KEXUE_PROFILE", "smoke").strip().lower() or "smoke"
    if value not in PROFILES:
        raise ValueError(
            f"KEXUE_PROFILE must be one of {PROFILES}, got {value!r}"
        )
    return value  # type: ignore[return-value]


def git_commit(default: str = "unknown") -> str:
    """The current git commit of the kexue checkout, for training records."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return default
    return out.stdout.strip() or default
