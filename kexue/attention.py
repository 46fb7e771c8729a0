"""Multi-head self-attention and the configuration of the shared Transformer.

These two sit below :mod:`kexue.nn` and :mod:`kexue.mixers` so that the
attention token mixer of chapter 05 and the encoder blocks share one
implementation without an import cycle; readers import both from
:mod:`kexue.nn`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kexue import checks, rope

__all__ = ["TransformerConfig", "MultiHeadSelfAttention"]

_NORMS = ("pre", "post")
_POSITIONS = ("learned", "none", "rotary", "rotary2d")
_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


@dataclass
class TransformerConfig:
    """Hyper-parameters of :class:`TransformerEncoder` and :class:`MaskedLM`."""

    vocab_size: int = 1000  # number of token ids (0 is [PAD] by convention)
    dim: int = 128  # hidden size d
    depth: int = 2  # number of blocks L
    heads: int = 4  # attention heads h; head size is dim // heads
    ffn_dim: int = 512  # inner width of the feed-forward network
    max_len: int = 512  # longest sequence (size of the learned position table)
    dropout: float = 0.1  # hidden dropout: embeddings and both residual branches
    attention_dropout: float = 0.1  # dropout on the attention probabilities
    norm: str = "post"  # "post" (BERT) or "pre"
    position: str = "learned"  # "learned", "none", "rotary", "rotary2d"
    rope_base: float = 10000.0  # RoPE frequency base
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (BERT's value)
    activation: str = "gelu"  # FFN non-linearity: "gelu" or "relu"
    attention_scale: float | None = None  # None means 1/sqrt(head size)
    mixer: str = "attention"  # token mixer; see kexue.mixers.MIXERS
    mixer_options: dict[str, Any] = field(default_factory=dict)
    pad_token_id: int = 0
    causal: bool = False  # attention: query i sees keys j <= i only (a GPT-style decoder)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "depth", "heads", "ffn_dim", "max_len"):
            checks.positive_int(name, getattr(self, name))
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        for name in ("dropout", "attention_dropout"):
            checks.float_in(name, getattr(self, name), 0.0, 1.0)
        checks.choice("norm", self.norm, _NORMS)
        checks.choice("position", self.position, _POSITIONS)
        checks.choice("activation", self.activation, tuple(_ACTIVATIONS))
        checks.positive_float("rope_base", self.rope_base)
        checks.float_in("layer_norm_eps", self.layer_norm_eps, 0.0, float("inf"))  # 0 is used for exact identities
        if self.attention_scale is not None:
            checks.positive_float("attention_scale", self.attention_scale)
        if not isinstance(self.mixer, str):
            raise TypeError(f"mixer must be a str, got {type(self.mixer).__name__}")
        if not isinstance(self.mixer_options, dict):
            raise TypeError(f"mixer_options must be a dict, got {type(self.mixer_options).__name__}")
        if self.mixer != "attention" and self.position in ("rotary", "rotary2d"):
            raise ValueError(
                f"position={self.position!r} rotates attention queries and keys, which mixer={self.mixer!r} "
                "does not have: use mixer='attention' or position='learned'/'none'"
            )
        if not isinstance(self.causal, bool):
            raise TypeError(f"causal must be a bool, got {type(self.causal).__name__}")
        if self.causal and self.mixer != "attention":
            raise ValueError(
                f"causal=True masks attention scores; for mixer={self.mixer!r} pass causal=True in "
                "mixer_options if that mixer supports it"
            )
        checks.nonnegative_int("pad_token_id", self.pad_token_id)
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"pad_token_id must be < vocab_size={self.vocab_size}, got {self.pad_token_id}")
        head_dim = self.dim // self.heads
        if self.position == "rotary" and head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {head_dim}")
        if self.position == "rotary2d" and head_dim % 4:
            raise ValueError(f"2D rotary positions need a head size divisible by 4, got {head_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_positions(positions: Any, position: str, batch: int, seq: int) -> torch.Tensor | None:
    """``positions`` checked against the encoder's ``position`` scheme (shapes only).

    ``"rotary"``: ``None`` (``0 .. seq-1``), ``(seq,)`` or ``(1 or batch, seq)``;
    ``"rotary2d"``: ``(seq, 2)`` or ``(1 or batch, seq, 2)`` holding ``(row, col)``;
    ``"learned"`` and ``"none"`` use no positions, so passing some is an error
    rather than silently ignored. Values (finite, real) are checked by
    :mod:`kexue.rope`.
    """
    if position not in ("rotary", "rotary2d"):
        if positions is not None:
            raise ValueError(
                f"positions are only used with position='rotary' or 'rotary2d', and this model has "
                f"position={position!r}: pass positions=None"
            )
        return None
    if positions is None:
        if position == "rotary2d":
            raise ValueError("position='rotary2d' needs positions of shape (batch or 1, seq, 2)")
        return None
    checks.tensor("positions", positions)
    tail = (seq,) if position == "rotary" else (seq, 2)
    shape = tuple(positions.shape)
    if not (shape == tail or (shape[1:] == tail and shape[0] in (1, batch))):
        raise ValueError(
            f"positions for position={position!r} must have shape {tail} or (1 or batch={batch}, *{tail}), "
            f"got {shape}"
        )
    return positions


def _check_inputs(
    module: nn.Module, config: TransformerConfig, x: Any, mask: Any, positions: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Check the hidden states ``x`` of ``module`` and return its checked ``mask`` and ``positions``."""
    checks.hidden_states("x", x, config.dim, module=module)
    batch, seq, _ = x.shape
    mask = checks.token_mask("mask", mask, batch, seq, x.device)
    return mask, _check_positions(positions, config.position, batch, seq)


class MultiHeadSelfAttention(nn.Module):
    """``softmax(Q K^T * scale + mask) V`` over ``heads`` heads, then an output projection.

    ``Q = x W_q``, ``K = x W_k``, ``V = x W_v``; with rotary positions, ``Q`` and
    ``K`` are rotated per position before the scores (chapter 03).

    ``forward(x, mask=None, positions=None)``: ``x`` is ``(batch, seq, dim)``;
    ``mask`` follows :func:`kexue.checks.token_mask` (True = real token); the
    padded rows of ``x`` are zeroed by ``masked_fill`` before the projections,
    so whatever they hold (even inf or NaN) never reaches a real token or a
    gradient. Outputs at padded positions carry no meaning.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.dim, config.dim)
        self.key = nn.Linear(config.dim, config.dim)
        self.value = nn.Linear(config.dim, config.dim)
        self.output = nn.Linear(config.dim, config.dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (b, h, s, hd)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        *,
        checked: bool = False,
    ) -> torch.Tensor:
        """``checked=True`` skips the argument checks, for a caller that already made them (the
        encoder checks its mask and positions once, not in every block); ``mask`` must then be
        ``None`` or a bool ``(batch, seq)`` tensor from :func:`kexue.checks.token_mask`."""
        if not checked:
            mask, positions = _check_inputs(self, self.config, x, mask, positions)
        seq = x.shape[1]
        # padded rows zeroed by masked_fill: a padded inf/NaN would otherwise reach the real tokens
        # through q.k (NaN + mask = NaN) and p.v (0 * NaN), and every weight gradient
        x = checks.zero_padding(x, mask)
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        position = self.config.position
        if position in ("rotary", "rotary2d"):
            if position == "rotary":
                pos = torch.arange(seq, device=x.device) if positions is None else positions
                if pos.dim() == 2:  # (b, s) -> (b, 1, s) to broadcast over heads
                    pos = pos[:, None, :]
                q = rope.apply_rope(q, pos, self.config.rope_base)
                k = rope.apply_rope(k, pos, self.config.rope_base)
            else:
                pos = positions[:, None] if positions.dim() == 3 else positions
                q = rope.apply_rope_2d(q, pos, self.config.rope_base)
                k = rope.apply_rope_2d(k, pos, self.config.rope_base)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (b, 1, 1, s): keys only
        if self.config.causal:
            # query i sees keys j <= i; every query also sees itself, so a padded query row
            # (left padding) is never empty: no NaN, and real rows are unchanged by it
            order = torch.arange(seq, device=x.device)
            causal = order[None, :] <= order[:, None]  # (s, s)
            if attn_mask is None:
                attn_mask = causal
            else:
                attn_mask = (attn_mask & causal) | torch.eye(seq, dtype=torch.bool, device=x.device)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.config.attention_dropout if self.training else 0.0,
            scale=self.config.attention_scale,
        )
        return self.output(out.transpose(1, 2).flatten(-2))  # (b, s, d)
