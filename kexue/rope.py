"""Rotary position embedding (RoPE), 1D and 2D.

Article: Su Jianlin, "Transformer升级之路：4、二维位置的旋转式位置编码" (2021),
https://kexue.fm/archives/8397 ; RoFormer, arXiv:2104.09864.

Convention: the article's *adjacent-pair* layout. Features ``(x[2i], x[2i+1])``
form one 2D plane that is rotated by ``m * theta_i`` with
``theta_i = base ** (-2 i / dim)``.

See: book chapter 03 (``03_rope_2d``).
"""

from __future__ import annotations

import torch

__all__ = ["rope_frequencies", "apply_rope"]


def _angle_dtype(dtype: torch.dtype) -> torch.dtype:
    """Angles are computed in at least float32 (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rope_frequencies(dim: int, base: float = 10000.0, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | None = None) -> torch.Tensor:
    """``theta_i = base ** (-2 i / dim)`` for ``i = 0 .. dim/2 - 1``, shape ``(dim // 2,)``."""
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim!r}")
    exponent = torch.arange(0, dim, 2, dtype=dtype, device=device) / dim
    return base ** (-exponent)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate ``x`` by its positions: ``R(m) x`` of the article's Eq. (1), batched.

    Args:
        x: ``(..., seq, dim)`` with ``dim`` even; any float dtype.
        positions: ``(seq,)`` or broadcastable to ``(..., seq)``; int or float.
        base: the frequency base.

    Returns:
        A tensor of ``x``'s shape and dtype. Angles are formed in at least float32.
    """
    if x.dim() < 2:
        raise ValueError(f"x must have shape (..., seq, dim), got {tuple(x.shape)}")
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"x's last dimension (dim) must be even, got {dim}")
    positions = torch.as_tensor(positions, device=x.device)
    if positions.dim() == 0 or positions.shape[-1] not in (x.shape[-2], 1):
        raise ValueError(
            f"positions must have shape (seq,) or (..., seq) with seq={x.shape[-2]}, "
            f"got {tuple(positions.shape)}"
        )
    adtype = _angle_dtype(x.dtype)
    theta = rope_frequencies(dim, base, dtype=adtype, device=x.device)
    angles = positions.to(adtype)[..., None] * theta  # (..., seq, dim/2)
    cos, sin = angles.cos(), angles.sin()
    pairs = x.to(adtype).unflatten(-1, (dim // 2, 2))  # (..., seq, dim/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
