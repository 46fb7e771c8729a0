"""One small, readable Transformer encoder shared by the chapters.

It is BERT-shaped (token + position embeddings, ``depth`` blocks of
self-attention and a feed-forward network, an optional tied MLM head) and
written in plain PyTorch around ``F.scaled_dot_product_attention``.

Choices a chapter can switch:

* ``norm``: ``"post"`` (BERT: ``x = LN(x + f(x))``) or ``"pre"``
  (``x = x + f(LN(x))`` with one final LayerNorm).
* ``position``: ``"learned"`` absolute embeddings, ``"none"``, ``"rotary"``
  (1D RoPE on queries and keys, chapter 03) or ``"rotary2d"`` (2D RoPE for
  image patches, chapter 03; positions are passed to ``forward``).
* ``mixer``: ``"attention"`` or any token mixer registered in
  ``kexue.mixers.MIXERS`` (chapter 05).
* ``dropout`` (embedding and residual-branch dropout, the "hidden" dropout the
  SimCSE chapter tunes) and ``attention_dropout`` are separate.

See: the book's "Notation and conventions" page.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kexue.attention import _ACTIVATIONS, MultiHeadSelfAttention, TransformerConfig, _check_mask
from kexue import checks
from kexue.mixers import MIXERS

__all__ = [
    "TransformerConfig",
    "MultiHeadSelfAttention",
    "FeedForward",
    "TransformerBlock",
    "TransformerEncoder",
    "MaskedLM",
    "count_parameters",
    "patchify",
]

class FeedForward(nn.Module):
    """``W_down act(W_up x + b_up) + b_down``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.dim, config.ffn_dim)
        self.down = nn.Linear(config.ffn_dim, config.dim)
        self.activation = _ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.up(x)))


class TransformerBlock(nn.Module):
    """One block: token mixing then the FFN, each a residual branch with dropout.

    post-LN: ``x = LN(x + drop(mix(x)))``; ``x = LN(x + drop(ffn(x)))``.
    pre-LN:  ``x = x + drop(mix(LN(x)))``; ``x = x + drop(ffn(LN(x)))``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        if config.mixer == "attention":
            self.attention: nn.Module = MultiHeadSelfAttention(config)
        else:
            if config.mixer not in MIXERS:
                raise ValueError(f"mixer must be 'attention' or one of {sorted(MIXERS)}, got {config.mixer!r}")
            self.attention = MIXERS[config.mixer](config.dim, config.max_len, **config.mixer_options)
        self.attention_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def _mix(self, x: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.attention, MultiHeadSelfAttention):
            return self.attention(x, mask=mask, positions=positions)
        return self.attention(x, mask=mask)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.config.norm == "post":
            x = self.attention_norm(x + self.dropout(self._mix(x, mask, positions)))
            return self.ffn_norm(x + self.dropout(self.ffn(x)))
        x = x + self.dropout(self._mix(self.attention_norm(x), mask, positions))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class TransformerEncoder(nn.Module):
    """Embeddings, ``depth`` blocks and (for pre-LN) a final LayerNorm.

    ``forward(input_ids, mask)`` returns hidden states ``(batch, seq, dim)``;
    with ``return_all=True`` it returns ``(hidden, all_hidden)`` where
    ``all_hidden`` lists the embedding output and every block's output
    (``depth + 1`` tensors, BERT's ``hidden_states``).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = (
            nn.Embedding(config.max_len, config.dim) if config.position == "learned" else None
        )
        # BERT normalises the embeddings (post-LN); pre-LN normalises at the end instead.
        self.embedding_norm = (
            nn.LayerNorm(config.dim, eps=config.layer_norm_eps) if config.norm == "post" else nn.Identity()
        )
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.depth))
        self.final_norm = (
            nn.LayerNorm(config.dim, eps=config.layer_norm_eps) if config.norm == "pre" else nn.Identity()
        )
        self.apply(_init_weights)

    def embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (batch, seq) or inputs_embeds (batch, seq, dim)")
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
                raise ValueError(
                    f"input_ids must be an integer tensor of shape (batch, seq), got "
                    f"{input_ids.dtype} {tuple(input_ids.shape)}"
                )
            x = self.token_embedding(input_ids)
        else:
            assert inputs_embeds is not None
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.dim:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, seq, {self.config.dim}), got {tuple(inputs_embeds.shape)}"
                )
            x = inputs_embeds
        seq = x.shape[1]
        if seq > self.config.max_len:
            raise ValueError(f"sequence length {seq} exceeds max_len={self.config.max_len}")
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(seq, device=x.device))
        return self.embedding_dropout(self.embedding_norm(x))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        return_all: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.embed(input_ids, inputs_embeds)
        mask = _check_mask(mask, x.shape[0], x.shape[1], x.device)
        hidden = [x]
        for block in self.blocks:
            x = block(x, mask=mask, positions=positions)
            hidden.append(x)
        x = self.final_norm(x)
        if return_all:
            hidden[-1] = x
            return x, hidden
        return x


class MaskedLM(nn.Module):
    """The encoder plus BERT's MLM head with the output matrix tied to the token embedding.

    ``logits = LN(gelu(W_t h + b_t)) E^T + b``, shape ``(batch, seq, vocab_size)``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config)
        self.mlm_transform = nn.Linear(config.dim, config.dim)
        self.mlm_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        _init_weights(self.mlm_transform)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        h = self.encoder(input_ids, mask, **kwargs)
        h = self.mlm_norm(F.gelu(self.mlm_transform(h)))
        return F.linear(h, self.encoder.token_embedding.weight, self.mlm_bias)


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(N, H, W)`` images to ``(N, (H/p)(W/p), p*p)`` non-overlapping ``p x p`` patches, row-major.

    Patch ``r * (W/p) + c`` holds the pixels of grid cell ``(r, c)``, themselves
    in row-major order: the token sequence a vision Transformer reads.
    """
    checks.tensor("images", images)
    if images.dim() != 3:
        raise ValueError(f"images must have shape (N, H, W), got {tuple(images.shape)}")
    checks.positive_int("patch", patch)
    n, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"patch={patch} must divide the image sides {h}x{w}")
    cells = images.reshape(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4)
    return cells.reshape(n, (h // patch) * (w // patch), patch * patch)
