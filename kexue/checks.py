"""Argument checks shared by every module.

Each check raises a ``ValueError`` or ``TypeError`` whose message names the
argument and what was expected, and returns the (possibly normalised) value so
that it can be used inline: ``self.dim = positive_int("dim", dim)``.

Padding masks have one contract for the whole package, :func:`token_mask`
(True = real token; bool or 0/1; additive masks refused with the fix), and one
way to silence padded positions, :func:`zero_padding` (``masked_fill``, so a
padded ``inf`` or NaN never reaches a real token).
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
    "boolean",
    "finite",
    "positive_scalar",
    "token_ids",
    "token_mask",
    "zero_padding",
    "matches_module",
    "hidden_states",
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


# --------------------------------------------------------------------------- tensors and flags


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool``; ``TypeError`` otherwise (a string such as ``"no"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` if every entry is finite; ``ValueError`` counting the NaN and inf entries otherwise.

    Integer and bool tensors are always finite and cost nothing; a floating
    tensor is read once (one host synchronisation on an accelerator).
    """
    tensor(name, value)
    if (value.is_floating_point() or value.is_complex()) and value.numel():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            nan = int(torch.isnan(value).sum())
            raise ValueError(
                f"{name} must be finite, got {nan} NaN and {int(bad.sum()) - nan} infinite entries "
                f"(shape {tuple(value.shape)})"
            )
    return value


def positive_scalar(name: str, value: Any) -> float | torch.Tensor:
    """A finite number ``> 0``: a Python real number (returned as ``float``) or a one-element
    floating tensor (returned reshaped to 0-d, still attached to the autograd graph).

    A tensor, e.g. a learnable temperature, is checked on ``value.detach()``
    (one host synchronisation), so checking it never changes its gradient.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(
                f"{name} must be a positive number or a one-element floating tensor, got a "
                f"{value.dtype} tensor of shape {tuple(value.shape)}"
            )
        v = float(value.detach().reshape(()))
        if not (0.0 < v < float("inf")):
            raise ValueError(f"{name} must be finite and > 0, got a tensor holding {v!r}")
        return value.reshape(())
    return positive_float(name, value)


def token_ids(name: str, ids: Any, vocab_size: int, *, dim: int | None = None) -> torch.Tensor:
    """An integer tensor of token ids, every one in ``[0, vocab_size)``.

    ``TypeError`` if ``ids`` is not a tensor; ``ValueError`` naming ``name`` if it
    is bool or floating, has the wrong number of dimensions, or holds an id outside
    the vocabulary (reported with the offending minimum/maximum and ``vocab_size``,
    instead of the embedding's ``IndexError``). Reads the ids once (one host
    synchronisation on an accelerator).
    """
    tensor(name, ids)
    shape = tuple(ids.shape)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        expected = "an integer tensor" if dim is None else f"an integer tensor with {dim} dimensions"
        raise ValueError(f"{name} must be {expected} of token ids, got {ids.dtype} {shape}")
    if dim is not None and ids.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {shape}")
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} must hold token ids in [0, vocab_size={vocab_size}), got ids from {low} to {high}"
            )
    return ids


def token_mask(
    name: str,
    mask: Any,
    batch: int,
    seq: int,
    device: torch.device | str | None = None,
    *,
    allow_empty_rows: bool = False,
) -> torch.Tensor | None:
    """The package's one token-mask contract: ``mask`` as a bool ``(batch, seq)`` tensor.

    Every module that takes a padding mask (the encoder and its attention, the
    token mixers, pooling, span heads, the CRF) validates it here, so a mask
    means the same thing everywhere:

    * ``True`` (or ``1``) marks a **real** token, ``False`` (``0``) padding;
    * accepted: bool, or an integer or floating tensor holding only 0 and 1 (a
      tokenizer's ``int64`` ``attention_mask``, or a 0/1 float mask). A floating
      mask with any other value raises a ``TypeError`` whose message says how to
      convert it: ``mask == 0`` for an *additive* mask (0 at real tokens, a large
      negative number or ``-inf`` at padding, e.g. Hugging Face's extended
      attention mask); other values (``0.5``, NaN) are named. An all-zero float
      mask is refused as ambiguous (an additive mask without padding, or a 0/1
      mask without a real token). An integer mask with values other than 0 and 1
      raises a ``ValueError`` (with the same hints); non-tensors a ``TypeError``;
    * the shape must be exactly ``(batch, seq)`` (``ValueError`` naming both);
    * every sequence must hold at least one real token unless
      ``allow_empty_rows=True`` (attention over no key, mean pooling over no
      token and a CRF over no tag are undefined: a ``ValueError`` instead of NaN);
    * the result is moved to ``device`` (the data's device) when one is given.

    ``None`` means "no padding" and is returned as ``None``. The caller then
    removes padded positions with :func:`zero_padding` or ``masked_fill`` (never
    by multiplying with the mask: ``0 * inf`` and ``0 * NaN`` are NaN), so that
    padding never influences real tokens whatever it holds.

    The convention is the one of ``F.scaled_dot_product_attention``'s boolean
    ``attn_mask`` and Hugging Face's ``attention_mask``; it is the opposite of
    ``nn.MultiheadAttention``'s ``key_padding_mask`` (True = padding), which
    cannot be detected: pass ``~key_padding_mask``.

    Cost: a non-bool mask is read once to check its values, and the empty-row
    check reads the mask once (each a host synchronisation on an accelerator).
    """
    if mask is None:
        return None
    tensor(name, mask)
    if tuple(mask.shape) != (batch, seq):
        raise ValueError(f"{name} must have shape (batch, seq)=({batch}, {seq}), got {tuple(mask.shape)}")
    if mask.is_complex():
        raise TypeError(f"{name} must be bool or integer 0/1 or float 0/1 (1 = real token), got {mask.dtype}")
    if mask.is_floating_point():
        ones_and_zeros = bool(((mask == 0) | (mask == 1)).all()) if mask.numel() else True
        if not ones_and_zeros or (mask.numel() and not bool(mask.any())):
            # an additive mask (0 / -1e4 / -inf), a fraction, NaN, or all zeros (ambiguous: an
            # additive mask without padding, or a 0/1 mask without a real token)
            hint = _mask_hint(name, mask)
            raise TypeError(
                f"{name} must be bool or integer 0/1 or float 0/1 (1 = real token), got {mask.dtype}{hint}"
            )
        mask = mask != 0
    if mask.dtype != torch.bool:
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            hint = _mask_hint(name, mask)
            raise ValueError(f"{name} must be bool or hold only 0 and 1 (1 = real token){hint}")
        mask = mask != 0
    if device is not None:
        mask = mask.to(device)
    if not allow_empty_rows and batch and not bool(mask.any(dim=-1).all()):
        rows = (~mask.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(f"{name}: every sequence needs at least one real (True) token; rows {rows[:8]} have none")
    return mask


def _mask_hint(name: str, mask: torch.Tensor) -> str:
    """How to turn a refused mask into a token mask, from its values (read once)."""
    if mask.is_complex() or not mask.numel():
        return ""
    ok = (mask == 0) | (mask == 1)
    if bool(ok.all()):
        if not bool(mask.any()):
            return f": all zeros, i.e. an additive mask without padding? its token mask is `{name} == 0`"
        return f": convert a 0/1 token mask with `{name}.bool()`"
    bad = mask[~ok]
    if bool((mask <= 0).all()):  # 0 at real tokens, a large negative number or -inf at padding
        return (
            f": it looks like an additive attention mask (0 at real tokens, {bad.min().item()!r} at padding); "
            f"the token mask is `{name} == 0`"
        )
    return f", got the value {bad.flatten()[0].item()!r}"


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` (``(batch, seq, ...)``) with padded positions set to exactly 0; ``x`` itself if ``mask`` is None.

    ``mask`` is a bool ``(batch, seq)`` tensor from :func:`token_mask`. Uses
    ``masked_fill``, not ``x * mask``: a padded position holding ``inf`` or NaN
    becomes 0, not NaN, so it cannot reach real tokens (or the gradients).
    Out of place: the caller's ``x`` is not modified.
    """
    if mask is None:
        return x
    return x.masked_fill(~mask.reshape(*mask.shape, *(1,) * (x.dim() - mask.dim())), 0)


def matches_module(name: str, x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """``x`` if its floating dtype and device match ``module``'s parameters.

    ``TypeError`` (dtype) or ``ValueError`` (device) naming ``name`` and both
    values, instead of the matrix product's error from deep inside torch. The
    dtype is not compared under autocast (mixed dtypes are then intended). A
    module without floating parameters accepts anything.
    """
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is None:
        return x
    if x.device != param.device:
        raise ValueError(
            f"{name} is on {x.device} but the module's parameters are on {param.device}: move one of them"
        )
    if x.dtype != param.dtype and not _autocast_enabled(x.device.type):
        raise TypeError(
            f"{name} is {x.dtype} but the module's parameters are {param.dtype}: "
            f"convert one of them (e.g. `{name}.to({param.dtype})` or `module.to({x.dtype})`)"
        )
    return x


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def hidden_states(name: str, value: Any, dim: int, *, module: torch.nn.Module | None = None) -> torch.Tensor:
    """A floating ``(batch, seq, dim)`` tensor with ``seq >= 1`` (``batch`` may be 0).

    With ``module``, its dtype and device must also match the module's
    parameters (:func:`matches_module`).
    """
    floating_tensor(name, value)
    if value.dim() != 3 or value.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (batch, seq, {dim}), got {tuple(value.shape)}")
    if module is not None:
        matches_module(name, value, module)
    if value.shape[1] < 1:
        raise ValueError(f"{name} must have at least one token (seq >= 1), got shape {tuple(value.shape)}")
    return value
