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

from kexue.attention import (
    _ACTIVATIONS,
    MultiHeadSelfAttention,
    TransformerConfig,
    _check_inputs,
    _check_positions,
)
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
            return self.attention(x, mask=mask, positions=positions, checked=True)
        return self.attention(x, mask=mask)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None, *,
        checked: bool = False,
    ) -> torch.Tensor:
        """``x`` ``(batch, seq, dim)``; ``mask`` per :func:`kexue.checks.token_mask`; ``positions`` for rotary.

        ``checked=True`` skips the argument checks (the encoder makes them once per call).
        """
        if not checked:
            mask, positions = _check_inputs(self, self.config, x, mask, positions)
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

    Inputs are checked once per call: ids inside ``[0, vocab_size)``, the mask
    by the package's one contract :func:`kexue.checks.token_mask` (True = real
    token; an additive 0/-inf mask is refused with the fix), positions by
    shape. Padding never influences real tokens: padded rows of
    ``inputs_embeds`` are zeroed (``masked_fill``) on entry and every attention
    zeroes padded rows before its projections, so even inf or NaN there leaves
    the real outputs and all gradients unchanged.
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

    def _inputs(
        self, input_ids: Any, inputs_embeds: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, int, int, torch.device]:
        """Checked ``input_ids`` or ``inputs_embeds`` with their batch, seq and device."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (batch, seq) or inputs_embeds (batch, seq, dim)")
        if input_ids is not None:
            checks.token_ids("input_ids", input_ids, self.config.vocab_size, dim=2)
            if input_ids.dtype not in (torch.int64, torch.int32):  # what nn.Embedding takes
                input_ids = input_ids.long()
            batch, seq = input_ids.shape
            device = input_ids.device
            if seq < 1:
                raise ValueError("input_ids must have at least one token (seq >= 1)")
        else:
            checks.hidden_states("inputs_embeds", inputs_embeds, self.config.dim, module=self)
            batch, seq, _ = inputs_embeds.shape
            device = inputs_embeds.device
        if seq > self.config.max_len:
            raise ValueError(f"sequence length {seq} exceeds max_len={self.config.max_len}")
        return input_ids, inputs_embeds, batch, seq, device

    def embed(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token (or given) embeddings plus positions, normalised (post-LN) and dropped out.

        With a ``mask`` (see :func:`kexue.checks.token_mask`), padded rows of
        ``inputs_embeds`` are zeroed first, so inf/NaN there never reaches a real token.
        """
        input_ids, inputs_embeds, batch, seq, device = self._inputs(input_ids, inputs_embeds)
        return self._embed(input_ids, inputs_embeds, checks.token_mask("mask", mask, batch, seq, device))

    def _embed(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if input_ids is not None:
            x = self.token_embedding(input_ids)
        else:
            assert inputs_embeds is not None
            x = checks.zero_padding(inputs_embeds, mask)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(x.shape[1], device=x.device))
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
        """Hidden states ``(batch, seq, dim)`` (and all layers' with ``return_all``).

        ``mask`` follows :func:`kexue.checks.token_mask` (bool or 0/1 integers,
        True = real token, every sequence with one real token at least); ``positions`` are
        for ``position="rotary"`` (``(seq,)`` or ``(1 or batch, seq)``) and
        ``"rotary2d"`` (``(seq, 2)`` or ``(1 or batch, seq, 2)``) only. An empty
        batch gives an empty output.
        """
        checks.boolean("return_all", return_all)
        input_ids, inputs_embeds, batch, seq, device = self._inputs(input_ids, inputs_embeds)
        mask = checks.token_mask("mask", mask, batch, seq, device)
        _check_positions(positions, self.config.position, batch, seq)
        x = self._embed(input_ids, inputs_embeds, mask)
        hidden = [x]
        for block in self.blocks:
            x = block(x, mask=mask, positions=positions, checked=True)
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
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
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
