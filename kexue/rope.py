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
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kexue.data import load_fashion_mnist

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
    "ViTConfig",
    "SMOKE",
    "FULL",
    "config",
    "PatchViT",
    "load_images",
    "resize_images",
    "train_vit",
    "evaluate_vit",
    "score_by_offset",
]

LAYOUTS: tuple[str, ...] = ("pairs", "rotate_half", "block4")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _angle_dtype(dtype: torch.dtype) -> torch.dtype:
    """Angles are computed in at least float32 (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_dim(dim: object, multiple: int, name: str = "dim") -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0 or dim % multiple:
        raise ValueError(f"{name} must be a positive int divisible by {multiple}, got {dim!r}")
    return dim


def _check_layout(layout: str, allowed: Sequence[str]) -> None:
    if layout not in allowed:
        raise ValueError(f"layout must be one of {tuple(allowed)}, got {layout!r}")


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
    """``theta_i = base ** (-2 i / dim)`` for ``i = 0 .. dim/2 - 1``, shape ``(dim // 2,)`` (Eq. R11).

    See: book chapter 03.
    """
    _check_dim(dim, 2)
    if not base > 0:
        raise ValueError(f"base must be positive, got {base!r}")
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
    return pos


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
        A tensor of ``x``'s shape and dtype. Angles and products are formed in at
        least float32; the result is cast back to ``x.dtype``.

    See: book chapter 03.
    """
    x = _check_x(x, 2)
    _check_layout(layout, LAYOUTS[:2])
    pos = _as_positions(positions, x.device)
    if pos.dim() == 0 or pos.shape[-1] not in (x.shape[-2], 1):
        raise ValueError(
            f"positions must have shape (seq,) or (..., seq) with seq={x.shape[-2]}, got {tuple(pos.shape)}"
        )
    adtype = _angle_dtype(x.dtype)
    theta = rope_frequencies(x.shape[-1], base, dtype=adtype, device=x.device)
    angles = pos.to(adtype)[..., None] * theta  # (..., seq, dim/2)
    return _rotate(x.to(adtype), angles.cos(), angles.sin(), layout).to(x.dtype)


def rope_angles_2d(
    positions: torch.Tensor, dim: int, base: float = 10000.0, *, layout: str = "pairs",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-plane angles ``(..., seq, dim/2)`` of 2D RoPE for ``positions`` ``(..., seq, 2)``.

    ``pairs``/``rotate_half``: ``[row * theta | col * theta]``; ``block4``:
    ``[row theta_0, col theta_0, row theta_1, col theta_1, ...]``, with
    ``theta_i = base ** (-2 i / (dim / 2))``.

    See: book chapter 03.
    """
    _check_dim(dim, 4)
    _check_layout(layout, LAYOUTS)
    if positions.dim() == 0 or positions.shape[-1] != 2:
        raise ValueError(f"positions must have shape (..., seq, 2) holding (row, col), got {tuple(positions.shape)}")
    theta = rope_frequencies(dim // 2, base, dtype=dtype, device=positions.device)  # (dim/4,)
    pos = positions.to(dtype)
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
        ``x``'s shape and dtype; angles are formed in at least float32.

    See: book chapter 03.
    """
    x = _check_x(x, 4)
    _check_layout(layout, LAYOUTS)
    pos = _as_positions(positions, x.device)
    if pos.dim() < 2 or pos.shape[-1] != 2 or pos.shape[-2] not in (x.shape[-2], 1):
        raise ValueError(
            f"positions must have shape (..., seq, 2) with seq={x.shape[-2]} holding (row, col), "
            f"got {tuple(pos.shape)}"
        )
    adtype = _angle_dtype(x.dtype)
    angles = rope_angles_2d(pos, x.shape[-1], base, layout=layout, dtype=adtype)  # (..., seq, dim/2)
    inner = "rotate_half" if layout == "rotate_half" else "pairs"
    return _rotate(x.to(adtype), angles.cos(), angles.sin(), inner).to(x.dtype)


def _rotation_blocks(angles: torch.Tensor) -> torch.Tensor:
    """``(n,)`` angles -> ``(n, 2, 2)`` rotations ``[[cos, -sin], [sin, cos]]`` (Eq. R10)."""
    c, s = angles.cos(), angles.sin()
    return torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)


def _scalar_position(position: object, dtype: torch.dtype, device: torch.device | None, name: str) -> torch.Tensor:
    pos = position.to(device) if isinstance(position, torch.Tensor) else torch.as_tensor(position, dtype=dtype, device=device)
    if pos.dim() != 0 or pos.dtype == torch.bool or pos.is_complex():
        raise ValueError(f"{name} must be one real number, got {position!r}")
    return pos.to(dtype)


def rope_matrix(
    position: float | torch.Tensor, dim: int, base: float = 10000.0, *,
    dtype: torch.dtype = torch.float64, device: torch.device | None = None, layout: str = "pairs",
) -> torch.Tensor:
    """The explicit ``(dim, dim)`` matrix ``R_m`` of 1D RoPE (Eq. R11): ``apply_rope(x, m) == x @ R_m.T``.

    Differentiable in ``position`` when it is a float tensor with ``requires_grad``.

    See: book chapter 03.
    """
    _check_dim(dim, 2)
    _check_layout(layout, LAYOUTS[:2])
    m = _scalar_position(position, dtype, device, "position")
    theta = rope_frequencies(dim, base, dtype=dtype, device=m.device)
    R = torch.block_diag(*_rotation_blocks(m * theta))
    if layout == "rotate_half":
        perm = layout_permutation(dim, "rotate_half").to(R.device)
        R = R[perm][:, perm]
    return R


def rope_2d_matrix(
    position: Sequence[float] | torch.Tensor, dim: int, base: float = 10000.0, *,
    dtype: torch.dtype = torch.float64, device: torch.device | None = None, layout: str = "pairs",
) -> torch.Tensor:
    """The explicit ``(dim, dim)`` matrix ``R_{x,y}`` of 2D RoPE (Eq. 27 stacked).

    ``R_{x,y} = diag(R^{(dim/2)}_x, R^{(dim/2)}_y)`` for the default layout, so
    that ``apply_rope_2d(v, (x, y)) == v @ R_{x,y}.T``.

    See: book chapter 03.
    """
    _check_dim(dim, 4)
    _check_layout(layout, LAYOUTS)
    if isinstance(position, torch.Tensor):
        pos = position.to(device)
    else:
        try:
            pos = torch.as_tensor(position, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"position must hold two numbers (row, col), got {position!r}") from err
    if pos.shape != (2,) or pos.dtype == torch.bool or pos.is_complex():
        raise ValueError(f"position must hold two numbers (row, col), got {position!r}")
    pos = pos.to(dtype)
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

    See: book chapter 03.
    """
    x = _check_x(x, 4)
    if positions.shape != (x.shape[-2], 2):
        raise ValueError(f"positions must have shape (seq, 2)=({x.shape[-2]}, 2), got {tuple(positions.shape)}")
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

    See: book chapter 03, "Convention".
    """
    _check_layout(layout, LAYOUTS)
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
    """``(height * width, 2)`` int64 ``(row, col)`` of a row-major patch grid. See: book chapter 03."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.stack((rows, cols), dim=-1)


def flat_positions(grid: torch.Tensor, width: int) -> torch.Tensor:
    """Flattened 1D index ``row * width + col`` of ``(..., 2)`` grid positions. See: book chapter 03."""
    return grid[..., 0] * width + grid[..., 1]


def score_by_offset(
    q: torch.Tensor, k: torch.Tensor, size: int, base: float = 10000.0, *, mode: str = "2d"
) -> torch.Tensor:
    """Mean over heads ``h`` of ``(R_a q_h) . (R_b k_h)`` for ``a = (0, 0)`` and ``b = (dx, dy)``.

    ``q`` and ``k`` are ``(heads, dim)``; returns a ``(2 size - 1, 2 size - 1)``
    map over offsets ``dx`` (rows) and ``dy`` (columns) in ``[-(size-1), size-1]``.
    ``mode="2d"`` uses 2D RoPE, ``mode="flat"`` 1D RoPE of the flattened index
    ``x * size + y``.

    See: book chapter 03.
    """
    if mode not in ("2d", "flat"):
        raise ValueError(f"mode must be '2d' or 'flat', got {mode!r}")
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must both have shape (heads, dim), got {tuple(q.shape)} and {tuple(k.shape)}")
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


# ---------------------------------------------------------------------------
# A small ViT over image patches (the chapter's experiment)
# ---------------------------------------------------------------------------
@dataclass
class ViTConfig:
    """One run of the position-encoding comparison (train at one size, test at larger ones)."""

    dataset: str = "digits"  # "digits" (sklearn 8x8) or "fashion_mnist" (28x28)
    image_size: int = 8  # training resolution (pixels per side)
    test_sizes: tuple[int, ...] = (8, 12, 16)  # evaluation sides in pixels (see test_modes)
    test_modes: tuple[str, ...] = ("upsample", "pad")  # how test images reach a larger side
    patch: int = 2  # patch side in pixels; grid side = image_size // patch
    dim: int = 64  # model width
    depth: int = 2  # transformer blocks
    heads: int = 4  # attention heads (head size must be divisible by 4 for 2D RoPE)
    ffn_dim: int = 128  # FFN inner width
    rope_base: float = 100.0  # RoPE base; small grids want a small base (rope-vit uses 10-100)
    epochs: int = 8  # passes over the training set
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # AdamW peak learning rate (cosine decay)
    weight_decay: float = 0.05  # AdamW weight decay
    dropout: float = 0.0  # hidden dropout
    test_fraction: float = 0.2  # digits only: held-out fraction
    train_limit: int | None = None  # cap on training images (None: all)
    seed: int = 0  # data split and initialisation seed
    positions: tuple[str, ...] = ("learned", "rotary", "rotary2d")  # encodings compared


SMOKE = ViTConfig()
FULL = ViTConfig(
    dataset="fashion_mnist", image_size=28, test_sizes=(28, 40, 56), patch=4, dim=192, depth=6, heads=6,
    ffn_dim=768, rope_base=100.0, epochs=30, batch_size=128, lr=1e-3, dropout=0.1,
)


def config(profile: str | None = None) -> ViTConfig:
    """The chapter's experiment config for ``profile`` (default: ``kexue.utils.profile()``)."""
    from kexue.utils import profile as current_profile

    name = profile if profile is not None else current_profile()
    if name not in ("smoke", "full"):
        raise ValueError(f"profile must be 'smoke' or 'full', got {name!r}")
    return SMOKE if name == "smoke" else FULL


def resize_images(images: torch.Tensor, size: int, mode: str = "upsample") -> torch.Tensor:
    """Make ``(n, h, w)`` images ``(n, size, size)``.

    ``mode="upsample"``: bilinear resize (same content, finer grid; the usual
    "test at a higher resolution" protocol). ``mode="pad"``: centre the image on
    a larger zero canvas (same scale, larger field of view).
    """
    if images.dim() != 3:
        raise ValueError(f"images must have shape (n, h, w), got {tuple(images.shape)}")
    if mode not in ("upsample", "pad"):
        raise ValueError(f"mode must be 'upsample' or 'pad', got {mode!r}")
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if mode == "upsample":
        return F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    if size < h or size < w:
        raise ValueError(f"mode='pad' needs size >= the image sides {(h, w)}, got {size}")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def load_images(cfg: ViTConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)`` at the native resolution for ``cfg.dataset``."""
    if cfg.dataset == "digits":
        from kexue.data import load_digits

        x, y = load_digits()
        g = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(x), generator=g)
        n_test = int(round(cfg.test_fraction * len(x)))
        test, train = order[:n_test], order[n_test:]
        tx, ty, vx, vy = x[train], y[train], x[test], y[test]
    elif cfg.dataset == "fashion_mnist":
        tx, ty = load_fashion_mnist("train")
        vx, vy = load_fashion_mnist("test")
    else:
        raise ValueError(f"dataset must be 'digits' or 'fashion_mnist', got {cfg.dataset!r}")
    if cfg.train_limit is not None:
        tx, ty = tx[: cfg.train_limit], ty[: cfg.train_limit]
    return tx, ty, vx, vy


class PatchViT(nn.Module):
    """Patchify -> linear embedding -> :class:`kexue.nn.TransformerEncoder` -> mean pool -> linear.

    ``position`` is passed to the encoder: ``"learned"`` (absolute table over
    the flattened training grid, bilinearly interpolated to larger grids),
    ``"rotary"`` (1D RoPE of the flattened index ``row * w + col``) or
    ``"rotary2d"`` (2D RoPE of ``(row, col)``). There is no CLS token: mean
    pooling keeps every token a patch with a position.

    See: book chapter 03, "Experiment".
    """

    def __init__(self, cfg: ViTConfig, position: str, num_classes: int = 10) -> None:
        super().__init__()
        from kexue.nn import TransformerConfig, TransformerEncoder

        if cfg.image_size % cfg.patch:
            raise ValueError(f"image_size ({cfg.image_size}) must be divisible by patch ({cfg.patch})")
        self.cfg, self.position = cfg, position
        self.grid = cfg.image_size // cfg.patch
        tcfg = TransformerConfig(
            vocab_size=1, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, ffn_dim=cfg.ffn_dim,
            max_len=4096, dropout=cfg.dropout, attention_dropout=0.0, norm="pre",
            position="none" if position == "learned" else position, rope_base=cfg.rope_base,
        )
        self.patch_embed = nn.Linear(cfg.patch * cfg.patch, cfg.dim)
        self.pos_table = (
            nn.Parameter(0.02 * torch.randn(1, cfg.dim, self.grid, self.grid)) if position == "learned" else None
        )
        self.encoder = TransformerEncoder(tcfg)
        # BERT's N(0, 0.02) suits width 768; at width 64 it leaves the blocks near
        # zero for hundreds of steps, so use a fan-in scaled init instead.
        for module in self.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        self.head = nn.Linear(cfg.dim, num_classes)

    def forward(self, images: torch.Tensor, *, interpolate: bool = False) -> torch.Tensor:
        """``images`` ``(batch, H, W)`` with ``H, W`` multiples of the patch -> logits ``(batch, classes)``.

        On a grid larger than the training grid, RoPE positions are integers
        (extrapolation) unless ``interpolate=True``, which scales them by
        ``train_grid / grid`` (position interpolation, as EVA-02 does). The learned
        table is always bilinearly interpolated (it has no entries to extrapolate).
        """
        p = self.cfg.patch
        b, H, W = images.shape
        if H % p or W % p:
            raise ValueError(f"image sides must be multiples of patch={p}, got {(H, W)}")
        h, w = H // p, W // p
        patches = images.reshape(b, h, p, w, p).permute(0, 1, 3, 2, 4).reshape(b, h * w, p * p)
        x = self.patch_embed(patches)  # (b, h*w, dim)
        grid = grid_positions(h, w, device=images.device)  # (h*w, 2)
        if interpolate and (h, w) != (self.grid, self.grid):
            grid = grid * torch.tensor([self.grid / h, self.grid / w], device=images.device)
        positions = None
        if self.position == "learned":
            table = self.pos_table
            if (h, w) != (self.grid, self.grid):
                table = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False)
            x = x + table.flatten(2).transpose(1, 2)
        elif self.position == "rotary":
            positions = flat_positions(grid, self.grid if interpolate else w)  # (h*w,)
        elif self.position == "rotary2d":
            positions = grid[None]  # (1, h*w, 2)
        x = self.encoder(inputs_embeds=x, positions=positions)
        return self.head(x.mean(dim=1))


def train_vit(
    cfg: ViTConfig, position: str, data: tuple[torch.Tensor, torch.Tensor], *,
    device: torch.device | None = None, max_steps: int | None = None,
) -> tuple[PatchViT, list[float]]:
    """Train a :class:`PatchViT` (AdamW, one-cycle schedule: 10% warm-up then cosine decay).

    Returns the model in eval mode and the per-step training losses. See: book chapter 03.
    """
    from kexue.utils import seed_everything

    device = device or torch.device("cpu")
    x, y = data
    x = resize_images(x, cfg.image_size)
    g = seed_everything(cfg.seed)
    model = PatchViT(cfg, position).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if max_steps is None else min(max_steps, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1), pct_start=0.1)
    losses: list[float] = []
    model.train()
    while len(losses) < total:
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start: start + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if len(losses) >= total:
                break
    model.eval()
    return model, losses


@torch.no_grad()
def evaluate_vit(model: PatchViT, images: torch.Tensor, labels: torch.Tensor, size: int,
                 *, mode: str = "upsample", interpolate: bool = False, batch_size: int = 512) -> float:
    """Accuracy of ``model`` on ``images`` brought to ``size x size`` by :func:`resize_images`. See: book chapter 03."""
    model.eval()
    device = next(model.parameters()).device
    x = resize_images(images, size, mode)
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start: start + batch_size].to(device), interpolate=interpolate)
        correct += (logits.argmax(-1).cpu() == labels[start: start + batch_size]).sum().item()
    return correct / len(x)
