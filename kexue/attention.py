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

from kexue import rope

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

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "depth", "heads", "ffn_dim", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.position not in _POSITIONS:
            raise ValueError(f"position must be one of {_POSITIONS}, got {self.position!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {tuple(_ACTIVATIONS)}, got {self.activation!r}"
            )
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


def _check_mask(mask: torch.Tensor | None, batch: int, seq: int, device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.shape != (batch, seq):
        raise ValueError(f"mask must have shape (batch, seq)=({batch}, {seq}), got {tuple(mask.shape)}")
    return mask.to(device=device, dtype=torch.bool)


class MultiHeadSelfAttention(nn.Module):
    """``softmax(Q K^T * scale + mask) V`` over ``heads`` heads, then an output projection.

    ``Q = x W_q``, ``K = x W_k``, ``V = x W_v``; with rotary positions, ``Q`` and
    ``K`` are rotated per position before the scores (chapter 03).
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
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
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
                if positions is None:
                    raise ValueError("position='rotary2d' needs positions of shape (batch or 1, seq, 2)")
                pos = positions[:, None] if positions.dim() == 3 else positions
                q = rope.apply_rope_2d(q, pos, self.config.rope_base)
                k = rope.apply_rope_2d(k, pos, self.config.rope_base)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (b, 1, 1, s): keys only
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.config.attention_dropout if self.training else 0.0,
            scale=self.config.attention_scale,
        )
        return self.output(out.transpose(1, 2).flatten(-2))  # (b, s, d)
