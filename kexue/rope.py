"""Rotary position embedding (RoPE), 1D and 2D.

Article: Su Jianlin, "Transformer升级之路：4、二维位置的旋转式位置编码" (2021-05-10),
https://kexue.fm/archives/8397 ; background: https://kexue.fm/archives/8265 and
RoFormer, arXiv:2104.09864.

Convention (the article's): *adjacent pairs*. Features ``(x[2i], x[2i+1])`` form
one plane that is rotated by ``m * theta_i`` with ``theta_i = base ** (-2 i / dim)``.
For 2D positions ``(row, col)`` the vector is split in *halves*: the first
``dim / 2`` features get 1D RoPE of the row, the last ``dim / 2`` 1D RoPE of the
column, each half with its own ladder ``theta_i = base ** (-2 i / (dim / 2))``.
This is the block-diagonal matrix of the article's Eq. (1)/(27), stacked.

Two other layouts are provided for the convention check; each equals the
default after the fixed channel permutation :func:`layout_permutation`:

* ``"rotate_half"`` (GPT-NeoX / LLaMA-HF / Qwen2-VL): channel ``i`` is paired
  with channel ``i + dim / 2``.
* ``"block4"`` (2D only): the literal 4x4 block of Eq. (27) tiled down the
  diagonal: channels ``4i, 4i+1`` rotate by ``row * theta_i`` and
  ``4i+2, 4i+3`` by ``col * theta_i``.

Fast paths are element-wise (``x * cos + rot(x) * sin``, Eq. R13): no
``(seq, dim, dim)`` matrix is ever formed. :func:`rope_matrix`,
:func:`rope_2d_matrix` and :func:`apply_rope_2d_reference` are the explicit,
formula-level references.

See: book chapter 03 (``03_rope_2d``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from kexue import checks

__all__ = [
    "LAYOUTS",
    "rope_frequencies",
    "apply_rope",
    "apply_rope_2d",
    "rope_angles_2d",
    "rope_matrix",
    "rope_2d_matrix",
    "apply_rope_2d_reference",
    "layout_permutation",
    "grid_positions",
    "flat_positions",
    "score_by_offset",
]

LAYOUTS: tuple[str, ...] = ("pairs", "rotate_half", "block4")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


#: dtype the angles ``m * theta_i`` are formed in. float32 cannot: at ``m ~ 1e6`` its spacing
#: is 0.06, so the angle is off by up to ~0.03 rad and ``(R_m q).(R_n k)`` drifts from a
#: function of ``m - n``. The table is ``(..., seq, dim/2)``, small next to ``x``.
_ANGLE_DTYPE = torch.float64


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The rotation itself runs in at least float32 (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _angle_device(device: torch.device) -> torch.device:
    """Where the float64 angle table is formed: MPS has no float64, so its table is formed on the CPU."""
    return torch.device("cpu") if device.type == "mps" else device


def _cos_sin(angles: torch.Tensor, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of the angle table, in ``dtype`` on ``device``.

    Angles about to lose precision (float64 -> float32) are first reduced modulo
    ``2 pi`` in float64, so the float32 cos/sin see an angle in ``[0, 2 pi)``
    accurate to float32 resolution whatever the position.
    """
    if angles.dtype != dtype:
        angles = torch.remainder(angles, 2 * math.pi)
    angles = angles.to(device=device, dtype=dtype)
    return angles.cos(), angles.sin()


def _check_dim(dim: object, multiple: int, name: str = "dim") -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0 or dim % multiple:
        raise ValueError(f"{name} must be a positive int divisible by {multiple}, got {dim!r}")
    return dim


def _check_x(x: object, multiple: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be a floating tensor (fp16, bf16, fp32, fp64), got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (..., seq, dim), got {tuple(x.shape)}")
    if x.shape[-1] % multiple or x.shape[-1] == 0:
        raise ValueError(f"x's last dimension (dim) must be a positive multiple of {multiple}, got {x.shape[-1]}")
    return x


def rope_frequencies(
    dim: int, base: float = 10000.0, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """``theta_i = base ** (-2 i / dim)`` for ``i = 0 .. dim/2 - 1``, shape ``(dim // 2,)`` (Eq. R11)."""
    _check_dim(dim, 2)
    checks.positive_float("base", base)
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim
    return (float(base) ** (-exponent)).to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """Rotate the planes of ``x`` (``(..., dim)``) by angles whose cos/sin are ``(..., dim/2)``.

    Each plane maps ``(a, b) -> (a cos - b sin, a sin + b cos)`` (Eq. R13).
    ``pairs``: plane ``j`` is ``(x[2j], x[2j+1])``, computed as one complex product
    ``(a + i b) * (cos + i sin)`` on a zero-copy complex view of ``x`` (one pass
    forward, one backward); ``rotate_half``: plane ``j`` is ``(x[j], x[j + dim/2])``.
    """
    if layout == "rotate_half":
        a, b = x.chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    pairs = x.unflatten(-1, (-1, 2))  # (..., dim/2, 2)
    try:
        z = torch.view_as_complex(pairs)
    except RuntimeError:  # strides not compatible with a complex view
        z = torch.view_as_complex(pairs.contiguous())
    return torch.view_as_real(z * torch.complex(cos, sin)).flatten(-2)


def _as_positions(positions: object, device: torch.device, name: str = "positions") -> torch.Tensor:
    if isinstance(positions, torch.Tensor):
        pos = positions.to(device)
    else:
        try:
            pos = torch.as_tensor(positions, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(positions).__name__}") from err
    if pos.dtype == torch.bool or pos.is_complex():
        raise TypeError(f"{name} must hold integer or real numbers, got {pos.dtype}")
    return checks.finite(name, pos)


def apply_rope(
    x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, *, layout: str = "pairs"
) -> torch.Tensor:
    """1D RoPE: ``R_m x`` with ``R_m`` block-diagonal of 2x2 rotations by ``m theta_i`` (Eqs. R11, R13).

    Args:
        x: ``(..., seq, dim)`` with ``dim`` even; fp16, bf16, fp32 or fp64.
        positions: ``(seq,)`` or broadcastable to ``(..., seq)``; integer or float.
        base: the frequency base of ``theta_i = base ** (-2 i / dim)``.
        layout: ``"pairs"`` (the article's adjacent pairs) or ``"rotate_half"``.

    Returns:
        A tensor of ``x``'s shape and dtype. Angles are formed in float64 (and
        reduced modulo ``2 pi``), the rotation in at least float32; the result
        is cast back to ``x.dtype``. Positions must be finite (``ValueError``).
    """
    x = _check_x(x, 2)
    checks.choice("layout", layout, LAYOUTS[:2])
    pos = _as_positions(positions, x.device)
    if pos.dim() == 0 or pos.shape[-1] not in (x.shape[-2], 1):
        raise ValueError(
            f"positions must have shape (seq,) or (..., seq) with seq={x.shape[-2]}, got {tuple(pos.shape)}"
        )
    work = _angle_device(x.device)
    theta = rope_frequencies(x.shape[-1], base, dtype=_ANGLE_DTYPE, device=work)
    angles = pos.to(device=work, dtype=_ANGLE_DTYPE)[..., None] * theta  # (..., seq, dim/2)
    cdtype = _compute_dtype(x.dtype)
    cos, sin = _cos_sin(angles, cdtype, x.device)
    return _rotate(x.to(cdtype), cos, sin, layout).to(x.dtype)


def rope_angles_2d(
    positions: torch.Tensor, dim: int, base: float = 10000.0, *, layout: str = "pairs",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-plane angles ``(..., seq, dim/2)`` of 2D RoPE for ``positions`` ``(..., seq, 2)``.

    ``pairs``/``rotate_half``: ``[row * theta | col * theta]``; ``block4``:
    ``[row theta_0, col theta_0, row theta_1, col theta_1, ...]``, with
    ``theta_i = base ** (-2 i / (dim / 2))``.

    The angles are formed in float64 and returned in ``dtype`` (a floating
    dtype) on ``positions``' device. Note that float32 cannot hold a large angle
    exactly (spacing 0.06 at 1e6): ask for ``dtype=torch.float64`` for large
    positions; :func:`apply_rope_2d` does so internally.
    """
    _check_dim(dim, 4)
    checks.choice("layout", layout, LAYOUTS)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = positions.device if isinstance(positions, torch.Tensor) else torch.device("cpu")
    pos = _as_positions(positions, device)
    if pos.dim() == 0 or pos.shape[-1] != 2:
        raise ValueError(f"positions must have shape (..., seq, 2) holding (row, col), got {tuple(pos.shape)}")
    return _angles_2d(pos, dim, base, layout).to(device=device, dtype=dtype)


def _angles_2d(pos: torch.Tensor, dim: int, base: float, layout: str) -> torch.Tensor:
    """Unchecked :func:`rope_angles_2d` in ``_ANGLE_DTYPE`` (on the CPU for MPS positions)."""
    work = _angle_device(pos.device)
    theta = rope_frequencies(dim // 2, base, dtype=_ANGLE_DTYPE, device=work)  # (dim/4,)
    pos = pos.to(device=work, dtype=_ANGLE_DTYPE)
    rows, cols = pos[..., 0:1] * theta, pos[..., 1:2] * theta  # (..., seq, dim/4) each
    if layout == "block4":
        return torch.stack((rows, cols), dim=-1).flatten(-2)
    return torch.cat((rows, cols), dim=-1)


def apply_rope_2d(
    x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, *, layout: str = "pairs"
) -> torch.Tensor:
    """2D RoPE: ``R_{row,col} x``, the article's Eq. (1)/(27) stacked over ``dim / 4`` frequencies.

    With the default ``layout="pairs"`` the first half of ``x`` gets 1D RoPE of
    the row and the second half 1D RoPE of the column (adjacent pairs in each
    half), so that ``(R_a q) . (R_b k)`` depends on ``b - a`` only (Eq. ch03-relativity).

    Args:
        x: ``(..., seq, dim)`` with ``dim`` divisible by 4; fp16, bf16, fp32 or fp64.
        positions: ``(..., seq, 2)`` holding ``(row, col)``, broadcastable against
            ``x.shape[:-1] + (2,)``, e.g. ``(seq, 2)`` or ``(batch, 1, seq, 2)``
            for ``x`` of shape ``(batch, heads, seq, dim)``; integer or float.
        base: frequency base; ``theta_i = base ** (-2 i / (dim / 2))``.
        layout: ``"pairs"`` (default), ``"rotate_half"`` or ``"block4"``.

    Returns:
        ``x``'s shape and dtype; angles are formed in float64 (reduced modulo
        ``2 pi``), the rotation in at least float32. Positions must be finite.
    """
    x = _check_x(x, 4)
    checks.choice("layout", layout, LAYOUTS)
    pos = _as_positions(positions, x.device)
    if pos.dim() < 2 or pos.shape[-1] != 2 or pos.shape[-2] not in (x.shape[-2], 1):
        raise ValueError(
            f"positions must have shape (..., seq, 2) with seq={x.shape[-2]} holding (row, col), "
            f"got {tuple(pos.shape)}"
        )
    angles = _angles_2d(pos, x.shape[-1], base, layout)  # (..., seq, dim/2), float64
    cdtype = _compute_dtype(x.dtype)
    cos, sin = _cos_sin(angles, cdtype, x.device)
    inner = "rotate_half" if layout == "rotate_half" else "pairs"
    return _rotate(x.to(cdtype), cos, sin, inner).to(x.dtype)


def _matrix_position(
    position: object, dtype: torch.dtype, device: torch.device | None, shape_ok: Callable[[torch.Size], bool],
    expected: str,
) -> torch.Tensor:
    """``position`` as a real tensor of ``dtype`` (on its own device unless ``device``) whose shape passes
    ``shape_ok``; a ``ValueError`` saying it must be ``expected`` otherwise."""
    if isinstance(position, torch.Tensor):
        pos = position.to(device)
    else:
        try:
            pos = torch.as_tensor(position, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"position must be {expected}, got {position!r}") from err
    if not shape_ok(pos.shape) or pos.dtype == torch.bool or pos.is_complex():
        raise ValueError(f"position must be {expected}, got {position!r}")
    return checks.finite("position", pos.to(dtype))


def rope_matrix(
    position: float | Sequence[float] | torch.Tensor, dim: int, base: float = 10000.0, *,
    dtype: torch.dtype = torch.float64, device: torch.device | None = None, layout: str = "pairs",
) -> torch.Tensor:
    """The explicit matrix ``R_m`` of 1D RoPE (Eq. R11): ``apply_rope(x, m) == x @ R_m.T``.

    ``position`` is one number ``m`` (a Python number or a 0-d tensor), giving
    one ``(dim, dim)`` matrix, or a 1-d tensor (or sequence) of ``n``
    positions, giving the batch ``(n, dim, dim)`` whose ``i``-th matrix is
    ``R_{position[i]}``. The matrices are built in ``dtype`` (default float64,
    whatever the dtype of ``position``) on ``position``'s device unless
    ``device`` is given. Differentiable in ``position`` when it is a float
    tensor with ``requires_grad``.
    """
    _check_dim(dim, 2)
    checks.choice("layout", layout, LAYOUTS[:2])
    m = _matrix_position(position, dtype, device, lambda s: len(s) <= 1, "a real number or a 1-d tensor of them")
    work = _angle_device(m.device)
    theta = rope_frequencies(dim, base, dtype=_ANGLE_DTYPE, device=work)
    angles = m.to(device=work, dtype=_ANGLE_DTYPE)[..., None] * theta  # (..., dim/2), differentiable in m
    c, s = _cos_sin(angles, dtype, m.device)
    R = torch.zeros(*m.shape, dim, dim, dtype=dtype, device=m.device)
    even = torch.arange(0, dim, 2, device=m.device)
    R[..., even, even], R[..., even, even + 1] = c, -s  # plane i: [[cos, -sin], [sin, cos]]
    R[..., even + 1, even], R[..., even + 1, even + 1] = s, c
    if layout == "rotate_half":
        perm = layout_permutation(dim, "rotate_half").to(R.device)
        R = R[..., perm, :][..., perm]
    return R


def rope_2d_matrix(
    position: Sequence[float] | torch.Tensor, dim: int, base: float = 10000.0, *,
    dtype: torch.dtype = torch.float64, device: torch.device | None = None, layout: str = "pairs",
) -> torch.Tensor:
    """The explicit ``(dim, dim)`` matrix ``R_{x,y}`` of 2D RoPE (Eq. 27 stacked).

    ``R_{x,y} = diag(R^{(dim/2)}_x, R^{(dim/2)}_y)`` for the default layout, so
    that ``apply_rope_2d(v, (x, y)) == v @ R_{x,y}.T``.
    """
    _check_dim(dim, 4)
    checks.choice("layout", layout, LAYOUTS)
    pos = _matrix_position(position, dtype, device, lambda s: s == (2,), "two numbers (row, col)")
    R = torch.block_diag(
        rope_matrix(pos[0], dim // 2, base, dtype=dtype, device=pos.device),
        rope_matrix(pos[1], dim // 2, base, dtype=dtype, device=pos.device),
    )
    if layout != "pairs":
        perm = layout_permutation(dim, layout).to(R.device)
        R = R[perm][:, perm]
    return R


def apply_rope_2d_reference(
    x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, *, layout: str = "pairs"
) -> torch.Tensor:
    """Formula-level reference: ``x_s @ R_{p_s}^T`` with one explicit matrix per token.

    ``x`` is ``(..., seq, dim)`` and ``positions`` is ``(seq, 2)`` (shared by
    every leading index). Slow by design (a Python loop over tokens); use it
    only to check :func:`apply_rope_2d`.
    """
    x = _check_x(x, 4)
    positions = _as_positions(positions, x.device)
    if positions.shape != (x.shape[-2], 2):
        raise ValueError(f"positions must have shape (seq, 2)=({x.shape[-2]}, 2), got {tuple(positions.shape)}")
    if x.shape[-2] == 0:
        return x.clone()
    out = [
        x[..., s, :] @ rope_2d_matrix(positions[s], x.shape[-1], base, dtype=x.dtype, device=x.device, layout=layout).T
        for s in range(x.shape[-2])
    ]
    return torch.stack(out, dim=-2)


def layout_permutation(dim: int, layout: str) -> torch.Tensor:
    """Index ``perm`` with ``rope(x[..., perm], layout) == rope(x, "pairs")[..., perm]``.

    So a model using ``layout`` with its query/key projections' output channels
    permuted by ``perm`` computes exactly the same attention scores as the
    default layout (a permutation is orthogonal). Valid for 1D and 2D RoPE
    (``"block4"`` is 2D only and needs ``dim % 4 == 0``).
    """
    checks.choice("layout", layout, LAYOUTS)
    _check_dim(dim, 4 if layout == "block4" else 2)
    c = torch.arange(dim)
    if layout == "pairs":
        return c
    if layout == "rotate_half":
        half = dim // 2
        return torch.where(c < half, 2 * c, 2 * (c - half) + 1)
    quarter = dim // 4
    block, r = c // 4, c % 4  # channel 4i + r of block4
    return torch.where(r < 2, 2 * block + r, 2 * quarter + 2 * block + (r - 2))


def grid_positions(height: int, width: int, *, device: torch.device | None = None) -> torch.Tensor:
    """``(height * width, 2)`` int64 ``(row, col)`` of a row-major patch grid."""
    checks.positive_int("height", height)
    checks.positive_int("width", width)
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.stack((rows, cols), dim=-1)


def flat_positions(grid: torch.Tensor, width: int) -> torch.Tensor:
    """Flattened 1D index ``row * width + col`` of ``(..., 2)`` grid positions."""
    checks.tensor("grid", grid)
    if grid.dim() == 0 or grid.shape[-1] != 2:
        raise ValueError(f"grid must have shape (..., 2) holding (row, col), got {tuple(grid.shape)}")
    checks.positive_int("width", width)
    return grid[..., 0] * width + grid[..., 1]


def score_by_offset(
    q: torch.Tensor, k: torch.Tensor, size: int, base: float = 10000.0, *, mode: str = "2d"
) -> torch.Tensor:
    """Mean over heads ``h`` of ``(R_a q_h) . (R_b k_h)`` for ``a = (0, 0)`` and ``b = (dx, dy)`` (Eq. ch03-relativity).

    ``q`` and ``k`` are ``(heads, dim)``; returns a ``(2 size - 1, 2 size - 1)``
    map over offsets ``dx`` (rows) and ``dy`` (columns) in ``[-(size-1), size-1]``.
    ``mode="2d"`` uses 2D RoPE, ``mode="flat"`` 1D RoPE of the flattened index
    ``x * size + y``.
    """
    checks.choice("mode", mode, ("2d", "flat"))
    checks.positive_int("size", size)
    checks.floating_tensor("q", q)
    checks.floating_tensor("k", k)
    if q.dim() != 2 or q.shape != k.shape or q.shape[0] == 0:
        raise ValueError(
            f"q and k must both have shape (heads >= 1, dim), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    r = torch.arange(-(size - 1), size, device=q.device)
    offsets = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)  # (n, 2)
    kk = k[:, None, :].expand(-1, len(offsets), -1)  # (h, n, d)
    if mode == "2d":
        qr = apply_rope_2d(q[:, None, :], torch.zeros(1, 2, device=q.device), base)  # (h, 1, d)
        kr = apply_rope_2d(kk, offsets, base)
    else:
        qr = apply_rope(q[:, None, :], torch.zeros(1, device=q.device), base)
        kr = apply_rope(kk, flat_positions(offsets, size), base)
    return (qr * kr).sum(-1).mean(0).reshape(2 * size - 1, 2 * size - 1)
