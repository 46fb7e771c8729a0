"""BERT's masked-language-model objective, as methods: corruption, loss, held-out accuracy.

BERT (Devlin et al., 2019) selects 15% of the real tokens of each sequence;
of those 80% become ``[MASK]``, 10% a random token and 10% stay as they are;
the loss is the cross-entropy of the original token at the selected positions
only:

.. math::

   \\mathcal L = -\\frac{1}{|S|}\\sum_{i\\in S}\\log p_\\theta(x_i \\mid \\tilde x),

with :math:`S` the selected positions and :math:`\\tilde x` the corrupted
sequence. :func:`mlm_logits_at` runs the MLM head on the selected positions
only, which saves most of its cost on a large vocabulary.

Sequences are ``[CLS] characters [SEP]`` from :class:`kexue.tokenizer.CharTokenizer`;
:class:`PackedSequences` keeps them flat (sentences longer than ``max_len - 2``
characters are cut into chunks) and pads any subset into a batch.

Masks follow :func:`kexue.checks.token_mask` (bool or 0/1, True on real
tokens); token ids must lie in the vocabulary; an empty selection or an empty
evaluation raises ``ValueError`` instead of returning NaN or 0.

Used by the pretraining of the shipped encoder (``python -m kexue.pretrain``,
see the model card) and by the grow-then-train experiment of chapter 06.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kexue import checks
from kexue.nn import MaskedLM
from kexue.tokenizer import SPECIAL_TOKENS, CharTokenizer

__all__ = [
    "N_SPECIAL",
    "seed_from",
    "PackedSequences",
    "mask_tokens",
    "mlm_logits_at",
    "mlm_loss",
    "MLMBatch",
    "corrupt",
    "mean_mlm_loss",
    "evaluate_mlm",
]

#: ids below this are the special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]); they are never selected
N_SPECIAL = len(SPECIAL_TOKENS)


def seed_from(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms (SHA-256 of their decimal list)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class PackedSequences:
    """Token sequences ``[CLS] chars [SEP]`` stored flat, padded on demand.

    Sentences longer than ``max_len - 2`` characters are cut into chunks of at
    most that many. ``flat`` holds every sequence back to back, ``lengths``
    their lengths and ``offsets`` where each starts.
    """

    def __init__(self, tokenizer: CharTokenizer, sentences: Sequence[str], max_len: int) -> None:
        if not isinstance(tokenizer, CharTokenizer):
            raise TypeError(f"tokenizer must be a kexue.tokenizer.CharTokenizer, got {type(tokenizer).__name__}")
        if isinstance(sentences, str) or not isinstance(sentences, Sequence):
            raise TypeError(f"sentences must be a sequence of str, got {type(sentences).__name__}")
        checks.int_at_least("max_len", max_len, 3)  # room for [CLS] x [SEP]
        room = max_len - 2
        rows: list[list[int]] = []
        for s in sentences:
            ids = tokenizer.encode(s)
            for i in range(0, max(len(ids), 1), room):
                rows.append([tokenizer.cls_id, *ids[i : i + room], tokenizer.sep_id])
        if not rows:
            raise ValueError("sentences must not be empty")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self.flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def positions(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gather, mask)``: indices into ``flat`` of the padded batch of sequences ``index``."""
        checks.tensor("index", index)
        if index.dim() != 1 or index.numel() == 0 or index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError(f"index must be a non-empty 1D integer tensor, got {index.dtype} {tuple(index.shape)}")
        lengths = self.lengths[index]
        width = int(lengths.max())
        mask = torch.arange(width) < lengths[:, None]
        gather = (self.offsets[index][:, None] + torch.arange(width)).clamp(max=len(self.flat) - 1)
        return gather, mask

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(input_ids, mask)`` of the sequences ``index`` (``[PAD]`` = 0)."""
        gather, mask = self.positions(index)
        ids = torch.zeros(mask.shape, dtype=torch.long)
        ids[mask] = self.flat[gather][mask]
        return ids, mask


def mask_tokens(
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
    n_special: int = N_SPECIAL,
    replace: tuple[float, float] = (0.8, 0.1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: select ``mask_prob`` of the real non-special tokens,
    make ``replace[0]`` of them ``[MASK]``, ``replace[1]`` a random non-special
    token, and leave the rest. Returns ``(corrupted ids, selected)``; at least
    one token is selected when any is eligible. Draws happen on the CPU
    generator, so the result does not depend on the device.

    ``input_ids``: integer ``(batch, seq)`` ids in ``[0, vocab_size)``; ``mask``:
    the same shape, :func:`kexue.checks.token_mask` contract (rows of padding
    only are allowed: nothing is selected there). ``mask_prob`` and both
    ``replace`` probabilities lie in ``[0, 1]`` with ``sum(replace) <= 1``;
    ``mask_id`` is an id of the vocabulary and ``n_special < vocab_size``.
    """
    checks.tensor("input_ids", input_ids)
    checks.positive_int("vocab_size", vocab_size)
    n_special = checks.nonnegative_int("n_special", n_special)
    if n_special >= vocab_size:
        raise ValueError(f"n_special ({n_special}) must be < vocab_size ({vocab_size}): no token could be drawn")
    checks.nonnegative_int("mask_id", mask_id)
    if mask_id >= vocab_size:
        raise ValueError(f"mask_id must be an id in [0, vocab_size={vocab_size}), got {mask_id}")
    mask_prob = checks.float_in("mask_prob", mask_prob, 0.0, 1.0, closed_high=True)
    if not isinstance(replace, tuple) or len(replace) != 2:
        raise TypeError(f"replace must be a pair (p_mask, p_random), got {replace!r}")
    p_mask = checks.float_in("replace[0]", replace[0], 0.0, 1.0, closed_high=True)
    p_random = checks.float_in("replace[1]", replace[1], 0.0, 1.0, closed_high=True)
    if p_mask + p_random > 1.0:
        raise ValueError(f"replace probabilities must sum to at most 1, got {replace!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    checks.token_ids("input_ids", input_ids, vocab_size, dim=2)
    checks.tensor("mask", mask)
    if input_ids.shape != mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and mask {tuple(mask.shape)} must have one shape")
    mask = checks.token_mask("mask", mask, *input_ids.shape, allow_empty_rows=True)
    device = input_ids.device
    cpu_ids = input_ids.cpu()
    eligible = mask.cpu() & (cpu_ids >= n_special)
    u = torch.rand(cpu_ids.shape, generator=generator)
    selected = eligible & (u < mask_prob)
    if not selected.any() and eligible.any():
        selected = eligible & (u == u.masked_fill(~eligible, 2.0).min())
    v = torch.rand(cpu_ids.shape, generator=generator)
    random_ids = torch.randint(n_special, vocab_size, cpu_ids.shape, generator=generator)
    corrupted = cpu_ids.clone()
    to_mask = selected & (v < p_mask)
    to_random = selected & (v >= p_mask) & (v < p_mask + p_random)
    corrupted[to_mask] = mask_id
    corrupted[to_random] = random_ids[to_random]
    return corrupted.to(device), selected.to(device)


def _check_selected(selected: Any, input_ids: torch.Tensor, mask: Any) -> torch.Tensor:
    """``selected`` as a bool tensor shaped like ``input_ids``, marking real tokens only."""
    checks.tensor("selected", selected)
    checks.tensor("input_ids", input_ids)
    if selected.dtype != torch.bool:
        raise TypeError(f"selected must be a bool tensor (True at the positions to predict), got {selected.dtype}")
    if selected.shape != input_ids.shape:
        raise ValueError(f"selected {tuple(selected.shape)} and input_ids {tuple(input_ids.shape)} must have one shape")
    selected = selected.to(input_ids.device)
    if not bool(selected.any()):
        raise ValueError("selected marks no position: the MLM loss over no token is undefined")
    if input_ids.dim() == 2:
        real = checks.token_mask("mask", mask, *input_ids.shape, input_ids.device)
        if real is not None and bool((selected & ~real).any()):
            raise ValueError("selected marks padded positions (mask is False there): only real tokens can be predicted")
    return selected


def mlm_logits_at(model: MaskedLM, input_ids: torch.Tensor, mask: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """``model(input_ids, mask)[selected]``, running the MLM head on ``selected`` only.

    ``selected``: bool, shaped like ``input_ids``, at least one real (unpadded) position.
    """
    if not isinstance(model, MaskedLM):
        raise TypeError(f"model must be a kexue.nn.MaskedLM, got {type(model).__name__}")
    selected = _check_selected(selected, input_ids, mask)
    h = model.encoder(input_ids, mask)[selected]
    h = model.mlm_norm(F.gelu(model.mlm_transform(h)))
    return F.linear(h, model.encoder.token_embedding.weight, model.mlm_bias)


def mlm_loss(model: MaskedLM, corrupted: torch.Tensor, mask: torch.Tensor, selected: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The MLM loss: mean cross-entropy of the original tokens ``labels`` at ``selected``.

    ``labels``: one token id per selected position (``selected.sum()`` of them), in the vocabulary.
    """
    checks.tensor("selected", selected)
    if selected.dtype == torch.bool:
        n = int(selected.sum())
        checks.token_ids("labels", labels, model.config.vocab_size, dim=1)
        if labels.numel() != n:
            raise ValueError(f"labels must hold one id per selected position ({n}), got {labels.numel()}")
    logits = mlm_logits_at(model, corrupted, mask, selected)
    return F.cross_entropy(logits.float(), labels)


#: ``(corrupted ids, mask, selected, labels)``: the arguments of :func:`mlm_loss` after the model
MLMBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def corrupt(
    input_ids: torch.Tensor, mask: torch.Tensor, *, device: torch.device | str | None = None, **masking: Any
) -> MLMBatch:
    """One MLM batch: :func:`mask_tokens` of ``input_ids`` (``masking``: its keyword arguments,
    ``mask_id``, ``vocab_size``, ``mask_prob``, ``generator``, ...), with the original tokens at the
    selected positions as labels, all moved to ``device``; ``mlm_loss(model, *batch)`` is its loss."""
    corrupted, selected = mask_tokens(input_ids, mask, **masking)
    labels = input_ids[selected.to(input_ids.device)]
    return corrupted.to(device), mask.to(device), selected.to(device), labels.to(device)


@torch.no_grad()
def mean_mlm_loss(model: MaskedLM, batches: Sequence[MLMBatch]) -> float:
    """The MLM cross-entropy averaged over every selected position of fixed ``batches``
    (eval mode, float32 logits). ``ValueError`` if ``batches`` select no position at all."""
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Sequence) or len(batches) == 0:
        raise ValueError("batches must be a non-empty sequence of (corrupted, mask, selected, labels) batches")
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for corrupted, mask, selected, labels in batches:
        logits = mlm_logits_at(model, corrupted, mask, selected)
        total += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        count += int(labels.numel())
    model.train(was)
    return total / count


@torch.no_grad()
def evaluate_mlm(
    model: MaskedLM,
    tokenizer: CharTokenizer,
    sentences: Sequence[str],
    *,
    max_len: int = 128,
    mask_prob: float = 0.15,
    seed: int = 0,
    unigram_id: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Held-out MLM accuracy: mask ``mask_prob`` of the characters (all with
    ``[MASK]``) and count exact top-1 recoveries.

    The masked positions depend only on ``(sentences, seed, mask_prob)``, not
    on batching. Also returns the mean cross-entropy and, when ``unigram_id``
    is given, the accuracy of always predicting that token (the unigram
    baseline) on the same positions. Runs in float32 in eval mode.
    ``ValueError`` if no position gets masked (too few or too short sentences
    for ``mask_prob``), instead of reporting an accuracy of 0.
    """
    mask_prob = checks.float_in("mask_prob", mask_prob, 0.0, 1.0, closed_high=True)
    checks.positive_int("batch_size", batch_size)
    if unigram_id is not None:
        checks.nonnegative_int("unigram_id", unigram_id)
    data = PackedSequences(tokenizer, sentences, max_len)
    g = torch.Generator().manual_seed(seed_from(seed, 3))
    u = torch.rand(len(data.flat), generator=g)
    eligible = data.flat >= N_SPECIAL
    chosen = eligible & (u < mask_prob)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = unigram = 0
    loss_sum = 0.0
    order = torch.argsort(data.lengths, descending=True, stable=True)
    for index in order.split(batch_size):
        ids, mask = data.batch(index)
        gather, _ = data.positions(index)
        selected = chosen[gather] & mask
        if not selected.any():
            continue
        labels = ids[selected]
        corrupted = ids.masked_fill(selected, tokenizer.mask_id)
        logits = mlm_logits_at(model, corrupted.to(device), mask.to(device), selected.to(device)).float()
        labels = labels.to(device)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
        total += int(labels.numel())
        if unigram_id is not None:
            unigram += int((labels == unigram_id).sum())
    model.train(was_training)
    if total == 0:
        raise ValueError(
            f"no position was masked in {len(sentences)} sentences at mask_prob={mask_prob}: "
            "give more sentences or a larger mask_prob"
        )
    out = {"accuracy": correct / total, "loss": loss_sum / total, "n_masked": float(total)}
    if unigram_id is not None:
        out["unigram_accuracy"] = unigram / total
    return out
