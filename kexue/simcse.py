"""Sentence embeddings from ``kexue.nn`` encoders: pooling, BERT-whitening and
STS evaluation (book chapter 01, "SimCSE on Chinese STS, against BERT-whitening").

Article: Su Jianlin, "中文任务还是SOTA吗？我们给SimCSE补充了一些实验" (2021),
https://kexue.fm/archives/8348 ; BERT-whitening: arXiv:2103.15316.

Pooling conventions follow the author's code (``bojone/SimCSE``):

* ``cls``: the last layer's vector at position 0 (``[CLS]``);
* ``last-avg``: the mean of the last layer over the real (unpadded) tokens;
* ``first-last-avg``: the mean of the *first Transformer block's* output
  (not the embedding layer) and the last block's output, each averaged over
  the real tokens;
* ``pooler``: ``tanh(W h_cls + b)`` with a :class:`Pooler` (BERT's pooler);
  our pretraining has no next-sentence task, so its weights come from SimCSE
  training or stay at their initialisation.

The padding mask follows the package's one contract,
:func:`kexue.checks.token_mask` (bool or 0/1, True on real tokens; an additive
``0 / -1e4`` mask or a fractional one is refused with the fix), and padded
positions are removed with ``masked_fill``, so whatever they hold (even inf or
NaN) never reaches a pooled vector.

The SimCSE loss is :func:`kexue.losses.simcse_loss`. The model card uses
:func:`sts_spearman` for the shipped encoder's raw and whitened scores.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from kexue import checks
from kexue.nn import MaskedLM, TransformerEncoder
from kexue.tokenizer import CharTokenizer

__all__ = [
    "POOLINGS",
    "Pooler",
    "pool",
    "encode",
    "encode_hf",
    "fit_whitening",
    "apply_whitening",
    "cosine_scores",
    "spearman",
    "sts_spearman",
]

Pooling = Literal["cls", "last-avg", "first-last-avg", "pooler"]
POOLINGS: tuple[str, ...] = ("cls", "last-avg", "first-last-avg")


class Pooler(nn.Module):
    """BERT's pooler, ``tanh(h_cls W + b)``: the ``pooler`` pooling."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls))


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens; ``mask`` is a checked bool mask with a real token in every row."""
    count = mask.sum(-1, keepdim=True).to(h.dtype)  # (batch, 1), >= 1
    return checks.zero_padding(h, mask).sum(-2) / count


def pool(
    hidden_states: Sequence[torch.Tensor],
    mask: torch.Tensor,
    pooling: str = "first-last-avg",
    pooler: Pooler | None = None,
) -> torch.Tensor:
    """Pool per-layer hidden states into one vector per sentence, eq. ``ch01-pool``.

    Args:
        hidden_states: the embedding output then every block's output, as returned by
            ``TransformerEncoder(..., return_all=True)[1]`` (``depth + 1`` tensors of
            shape ``(batch, seq, dim)``).
        mask: ``(batch, seq)``, ``True`` (or 1) on real tokens: the contract of
            :func:`kexue.checks.token_mask`. Every sentence needs a real token.
        pooling: one of ``cls``, ``last-avg``, ``first-last-avg``, ``pooler``.
        pooler: required for ``pooling="pooler"``.

    Returns:
        ``(batch, dim)`` in the hidden states' dtype. Padded positions never
        influence it, whatever they hold.

    Raises:
        ValueError / TypeError: an unknown ``pooling``, fewer than two hidden
            states or ones of different shapes, or a ``mask`` outside the contract
            (wrong shape; floating, e.g. an additive ``0 / -1e4`` mask; values
            other than 0/1; a sentence without real tokens).
    """
    checks.choice("pooling", pooling, (*POOLINGS, "pooler"))
    if isinstance(hidden_states, torch.Tensor) or not isinstance(hidden_states, Sequence):
        raise TypeError(
            f"hidden_states must be a sequence of (batch, seq, dim) tensors, got {type(hidden_states).__name__}"
        )
    if len(hidden_states) < 2:
        raise ValueError("hidden_states must hold the embedding output and at least one block's output")
    last = checks.floating_tensor("hidden_states[-1]", hidden_states[-1], dim=3)
    first = checks.floating_tensor("hidden_states[1]", hidden_states[1], dim=3)
    if first.shape != last.shape:
        raise ValueError(
            f"hidden_states must share one shape, got {tuple(first.shape)} (hidden_states[1]) and "
            f"{tuple(last.shape)} (hidden_states[-1])"
        )
    mask = checks.token_mask("mask", mask, last.shape[0], last.shape[1], last.device)
    if pooling == "cls":
        return last[:, 0]
    if pooling == "last-avg":
        return _masked_mean(last, mask)
    if pooling == "first-last-avg":
        return 0.5 * (_masked_mean(hidden_states[1], mask) + _masked_mean(last, mask))
    if pooler is None:
        raise ValueError("pooling='pooler' needs a Pooler module (argument pooler)")
    return pooler(last[:, 0])


def _encoder(model: MaskedLM | TransformerEncoder) -> TransformerEncoder:
    if isinstance(model, MaskedLM):
        return model.encoder
    if isinstance(model, TransformerEncoder):
        return model
    raise TypeError(f"model must be a kexue.nn MaskedLM or TransformerEncoder, got {type(model).__name__}")


def encode(
    model: MaskedLM | TransformerEncoder,
    tokenizer: CharTokenizer,
    texts: Sequence[str],
    pooling: str | Sequence[str] = "first-last-avg",
    *,
    max_len: int = 64,
    batch_size: int = 128,
    pooler: Pooler | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Sentence embeddings in eval mode (dropout off), float32 on the CPU.

    With a sequence of poolings, returns ``{pooling: (n, dim)}`` from one pass.
    Sentences are processed longest first, so batches carry little padding.
    The tokenizer's ids must fit the model's vocabulary (``ValueError`` otherwise).
    """
    names = _check_texts_and_poolings(texts, pooling, pooler, max_len, batch_size)
    enc = _encoder(model)
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer must be a kexue.tokenizer.CharTokenizer, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size > enc.config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has {enc.config.vocab_size}: "
            "they do not belong together"
        )
    was = enc.training
    enc.eval()
    device = next(enc.parameters()).device

    def batch_vectors(batch: list[str]) -> dict[str, torch.Tensor]:
        ids, mask = tokenizer(batch, max_len)
        ids, mask = ids.to(device), mask.to(device)
        _, hs = enc(ids, mask, return_all=True)
        return {name: pool(hs, mask, name, pooler) for name in names}

    result = _encode_longest_first(texts, names, batch_size, batch_vectors)
    enc.train(was)
    return result[names[0]] if isinstance(pooling, str) else result


def _check_texts_and_poolings(
    texts: Sequence[str], pooling: str | Sequence[str], pooler: Pooler | None, max_len: int, batch_size: int
) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts must not be empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    checks.int_at_least("max_len", max_len, 2)
    checks.positive_int("batch_size", batch_size)
    names = [pooling] if isinstance(pooling, str) else list(pooling)
    if not names:
        raise ValueError("pooling must name at least one pooling")
    for name in names:
        checks.choice("pooling", name, (*POOLINGS, "pooler"))
    if "pooler" in names and pooler is None:
        raise ValueError("pooling='pooler' needs a Pooler module (argument pooler)")
    return names


def _encode_longest_first(
    texts: Sequence[str], names: list[str], batch_size: int,
    batch_vectors: Callable[[list[str]], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Encode longest first (little padding per batch), return float32 CPU rows in the input order."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            vectors = batch_vectors([texts[i] for i in order[start : start + batch_size]])
            for name in names:
                out[name].append(vectors[name].float().cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {name: torch.cat(parts)[inverse] for name, parts in out.items()}


def encode_hf(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    pooling: str | Sequence[str] = "first-last-avg",
    *,
    max_len: int = 64,
    batch_size: int = 128,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """:func:`encode` for a Hugging Face BERT-like model (``output_hidden_states``) and its tokenizer.

    The same poolings as eq. ``ch01-pool``: ``hidden_states[1]`` is the first block's output.
    Used for the English MiniLM.
    """
    names = _check_texts_and_poolings(texts, pooling, None, max_len, batch_size)
    if "pooler" in names:
        raise ValueError("encode_hf takes the poolings of POOLINGS; use the model's own pooler_output instead")
    was = model.training
    model.eval()
    device = next(model.parameters()).device

    def batch_vectors(batch: list[str]) -> dict[str, torch.Tensor]:
        inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
        hs = model(**inputs, output_hidden_states=True).hidden_states
        return {name: pool(hs, inputs["attention_mask"], name) for name in names}

    result = _encode_longest_first(texts, names, batch_size, batch_vectors)
    model.train(was)
    return result[names[0]] if isinstance(pooling, str) else result


def fit_whitening(embeddings: torch.Tensor, n_components: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-whitening: ``(mean, W)`` with ``W = U diag(1/sqrt(s))`` from the SVD of the covariance.

    ``(x - mean) @ W`` has identity covariance, eq. ``ch01-whiten``.
    ``n_components`` keeps that many leading directions. ``None`` keeps every
    direction whose variance exceeds ``1e-9`` of the largest: embeddings taken
    after a post-LN LayerNorm lie in a ``dim - 1`` dimensional affine subspace
    (each normalised vector has zero mean), so one direction has zero variance
    and dividing by its root, as the reference code does, amplifies rounding
    noise. Computed in float64, returned in the input's dtype. Asking for a
    zero-variance direction explicitly raises ``ValueError``, and so do NaN or
    infinite embeddings (they would turn every statistic into NaN).
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings must be a 2D tensor (n, dim), got {shape}")
    checks.floating_tensor("embeddings", embeddings)
    checks.finite("embeddings", embeddings)
    n, dim = embeddings.shape
    if n < 2:
        raise ValueError(f"embeddings needs at least 2 rows to estimate a covariance, got {n}")
    if n_components is not None and (
        isinstance(n_components, bool) or not isinstance(n_components, int) or not 1 <= n_components <= dim
    ):
        raise ValueError(f"n_components must be an int in [1, {dim}] or None, got {n_components!r}")
    x = embeddings.double()
    mean = x.mean(0, keepdim=True)
    cov = (x - mean).T @ (x - mean) / (n - 1)
    u, s, _ = torch.linalg.svd(cov)
    if not bool(s[0] > 0):
        raise ValueError("embeddings are all identical: nothing to whiten")
    rank = int((s > s[0] * 1e-9).sum())
    if n_components is None:
        k = rank
    elif n_components > rank:
        raise ValueError(
            f"n_components={n_components} asks for directions with (numerically) zero variance; "
            f"the embeddings span {rank} directions"
        )
    else:
        k = n_components
    w = u[:, :k] / s[:k].sqrt()
    return mean.to(embeddings.dtype), w.to(embeddings.dtype)


def apply_whitening(embeddings: torch.Tensor, mean: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(x - mean) @ W`` with ``(mean, W)`` from :func:`fit_whitening`, eq. ``ch01-whiten``.

    ``embeddings`` is ``(n, dim)``, ``mean`` ``(1, dim)`` or ``(dim,)``, ``W``
    ``(dim, k)``, all of one floating dtype (``TypeError`` naming both dtypes
    otherwise; convert with ``.double()``).
    """
    checks.floating_tensor("embeddings", embeddings, dim=2)
    checks.floating_tensor("mean", mean)
    checks.floating_tensor("w", w, dim=2)
    dim = embeddings.shape[1]
    if mean.numel() != dim or mean.shape[-1] != dim:
        raise ValueError(f"mean must have shape (1, {dim}) for embeddings of dim {dim}, got {tuple(mean.shape)}")
    if w.shape[0] != dim:
        raise ValueError(f"w must have shape ({dim}, k) for embeddings of dim {dim}, got {tuple(w.shape)}")
    for name, t in (("mean", mean), ("w", w)):
        if t.dtype != embeddings.dtype:
            raise TypeError(f"embeddings is {embeddings.dtype} but {name} is {t.dtype}: convert one of them")
    return (embeddings - mean.reshape(1, dim)) @ w


def cosine_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two ``(n, dim)`` tensors, in float64.

    NaN or infinite entries raise ``ValueError`` (a NaN score would make the
    Spearman correlation NaN without a word).
    """
    for name, t in (("a", a), ("b", b)):
        checks.floating_tensor(name, t, dim=2)
        checks.finite(name, t)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def spearman(scores: torch.Tensor | Sequence[float], gold: torch.Tensor | Sequence[float]) -> float:
    """Spearman's rho (``scipy.stats.spearmanr``), the article's metric (x100 in its tables).

    ``ValueError`` instead of NaN when either side holds NaN/inf or is constant
    (the correlation is then undefined).
    """
    s = torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
    g = torch.as_tensor(gold, dtype=torch.float64).detach().cpu()
    if s.shape != g.shape or s.dim() != 1 or len(s) < 3:
        raise ValueError(
            f"scores and gold must be 1D of the same length (at least 3), got {tuple(s.shape)} and {tuple(g.shape)}"
        )
    for name, t in (("scores", s), ("gold", g)):
        checks.finite(name, t)
        if bool((t == t[0]).all()):
            raise ValueError(f"{name} are all equal ({float(t[0])!r}): Spearman's rho is undefined")
    return float(spearmanr(s.numpy(), g.numpy()).statistic)


def sts_spearman(
    model: MaskedLM | TransformerEncoder,
    tokenizer: CharTokenizer,
    pairs: Sequence[tuple[str, str, float]],
    poolings: Sequence[str] = POOLINGS,
    *,
    whitening_texts: Sequence[str] | None = None,
    max_len: int = 64,
) -> dict[str, dict[str, float]]:
    """Spearman of cosine scores on STS pairs for each pooling: ``{"raw": {...}, "whitening": {...}}``.

    Whitening statistics come from ``whitening_texts`` (default: both sides of
    ``pairs``, as the author's whitening script pools its splits).
    """
    if isinstance(pairs, (str, torch.Tensor)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a sequence of (text, text, score) triples, got {type(pairs).__name__}")
    for i, p in enumerate(pairs):
        if (
            not isinstance(p, Sequence) or isinstance(p, str) or len(p) != 3
            or not isinstance(p[0], str) or not isinstance(p[1], str)
            or isinstance(p[2], bool) or not isinstance(p[2], numbers.Real)
        ):
            raise TypeError(f"pairs[{i}] must be a (text, text, score) triple, got {p!r}")
    a = encode(model, tokenizer, [p[0] for p in pairs], list(poolings), max_len=max_len)
    b = encode(model, tokenizer, [p[1] for p in pairs], list(poolings), max_len=max_len)
    gold = [p[2] for p in pairs]
    out: dict[str, dict[str, float]] = {"raw": {}, "whitening": {}}
    fit = None
    if whitening_texts is not None:
        fit = encode(model, tokenizer, list(whitening_texts), list(poolings), max_len=max_len)
    for name in poolings:
        out["raw"][name] = spearman(cosine_scores(a[name], b[name]), gold)
        stats = fit[name] if fit is not None else torch.cat([a[name], b[name]])
        mean, w = fit_whitening(stats.double())
        out["whitening"][name] = spearman(
            cosine_scores(apply_whitening(a[name].double(), mean, w), apply_whitening(b[name].double(), mean, w)), gold
        )
    return out
