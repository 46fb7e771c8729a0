"""Fixtures shared by the unit tests.

* Every test runs with one intra-op thread, so results do not depend on how
  many cores the machine has or how busy it is, and the suite can run beside
  other work without oversubscribing the CPU.
* ``tiny_config(**overrides)`` builds the smallest useful
  :class:`kexue.nn.TransformerConfig` (2 blocks of width 16, no dropout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from kexue.nn import TransformerConfig

TINY = dict(vocab_size=50, dim=16, depth=2, heads=2, ffn_dim=32, max_len=32, dropout=0.0, attention_dropout=0.0)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config() -> Callable[..., TransformerConfig]:
    def make(**overrides) -> TransformerConfig:
        return TransformerConfig(**{**TINY, **overrides})

    return make
