"""Unsupervised SimCSE training of a ``kexue.nn`` encoder, shared by chapters 01 and 07.

Chapter 01 trains the character BERT with the article's recipe (Adam at a
constant learning rate, one epoch) for each pooling, and with a frozen encoder
under a trainable linear layer; chapter 07 trains it with a small batch and with
a large batch whose gradient comes from
:func:`kexue.accumulation.contrastive_backward`. Both go through
:func:`kexue.experiments.loop.fit`; the loss is :func:`kexue.losses.simcse_loss`
(eq. ``ch01-simcse-loss``) on the adjacent-pair layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from kexue import checks
from kexue.accumulation import contrastive_backward
from kexue.experiments.loop import fit
from kexue.losses import simcse_loss
from kexue.nn import MaskedLM, TransformerEncoder
from kexue.simcse import POOLINGS, pool
from kexue.tokenizer import CharTokenizer

__all__ = ["PooledEncoder", "SimCSEResult", "pair_rows", "train_simcse"]


class PooledEncoder(nn.Module):
    """Token ids ``(rows, seq)`` -> one pooled vector per row ``(rows, dim)``, optionally through a head.

    The mask is ``ids != pad_id`` (what :class:`~kexue.tokenizer.CharTokenizer`
    returns; every row needs a real token); the pooling is one of
    :data:`kexue.simcse.POOLINGS`, eq. ``ch01-pool``. The encoder checks the ids
    against its vocabulary.
    Taking the ids alone is what :func:`~kexue.accumulation.contrastive_backward`
    needs: it splits one tensor into micro-batches.
    """

    def __init__(
        self, encoder: TransformerEncoder, pooling: str, pad_id: int = 0, head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        if not isinstance(encoder, TransformerEncoder):
            raise TypeError(f"encoder must be a kexue.nn.TransformerEncoder, got {type(encoder).__name__}")
        self.pooling = checks.choice("pooling", pooling, POOLINGS)
        self.pad_id = checks.nonnegative_int("pad_id", pad_id)
        self.head = head

    def forward(self, ids: Tensor) -> Tensor:
        mask = ids != self.pad_id  # (rows, seq)
        _, hidden_states = self.encoder(ids, mask, return_all=True)
        h = pool(hidden_states, mask, self.pooling)  # (rows, dim)
        return h if self.head is None else self.head(h)


@dataclass
class SimCSEResult:
    """What :func:`train_simcse` returns: the loss of every step, the training time and,
    for ``trainable="linear"``, the trained linear head."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    head: nn.Linear | None = None


def pair_rows(tokenizer: CharTokenizer, sentences: Sequence[str], max_len: int, *, pad_to_max: bool = False) -> Tensor:
    """Token ids of ``sentences`` with every row repeated once: rows ``2k, 2k+1`` = sentence ``k``."""
    ids, _ = tokenizer(list(sentences), max_len, pad_to_max=pad_to_max)
    return ids.repeat_interleave(2, dim=0)


def train_simcse(
    model: MaskedLM | TransformerEncoder,
    tokenizer: CharTokenizer,
    sentences: Sequence[str],
    *,
    pooling: str = "cls",
    batch_size: int = 64,
    lr: float = 1e-5,
    epochs: int = 1,
    steps: int | None = None,
    temperature: float = 0.05,
    max_len: int = 64,
    trainable: Literal["all", "linear"] = "all",
    optimizer: Literal["adam", "adamw"] = "adam",
    weight_decay: float = 0.01,
    micro_batch_size: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SimCSEResult:
    """Unsupervised SimCSE in the article's layout, trained through :func:`~kexue.experiments.loop.fit`.

    Every step takes ``batch_size`` sentences from a permutation of ``sentences``
    (a new one per epoch, drawn from ``seed``), puts each on two adjacent rows and
    encodes the ``2 * batch_size`` rows in train mode, so the two copies get
    independent dropout masks. ``steps`` defaults to ``epochs`` full passes (a
    last partial batch is dropped). The dropout rates are the encoder's own: load
    it with ``load_zh_char_bert(dropout=0.3, attention_dropout=0.0)`` for the
    article's setting.

    Optimiser at a constant ``lr``: ``"adam"`` is the author's script (chapter 01);
    ``"adamw"`` uses ``weight_decay`` (chapter 07).

    ``micro_batch_size`` (sentences) computes each step's gradient with
    :func:`~kexue.accumulation.contrastive_backward`, one micro-batch of activations
    at a time; the gradient is that of the whole batch. It need not divide
    ``batch_size``: the last micro-batch holds the sentences left over (a pair's
    two rows always stay together).

    ``trainable="linear"`` freezes the encoder (dropout stays on, as in Keras) and
    trains one bias-free linear layer, orthogonally initialised, on the pooled
    vector: the article's frozen-encoder experiment. The encoder's
    ``requires_grad`` flags are restored afterwards as they were.

    The model is left in eval mode.
    """
    if isinstance(model, MaskedLM):
        encoder = model.encoder
    elif isinstance(model, TransformerEncoder):
        encoder = model
    else:
        raise TypeError(f"model must be a kexue.nn MaskedLM or TransformerEncoder, got {type(model).__name__}")
    checks.choice("pooling", pooling, POOLINGS)
    checks.choice("trainable", trainable, ("all", "linear"))
    checks.choice("optimizer", optimizer, ("adam", "adamw"))
    checks.int_at_least("batch_size", batch_size, 2)
    checks.positive_float("lr", lr)
    checks.positive_int("epochs", epochs)
    checks.positive_float("temperature", temperature)
    checks.int_at_least("max_len", max_len, 3)
    checks.float_in("weight_decay", weight_decay, 0.0, float("inf"))
    checks.nonnegative_int("seed", seed)
    if progress is not None:
        checks.boolean("progress", progress)
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer must be a kexue.tokenizer.CharTokenizer, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size > encoder.config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has {encoder.config.vocab_size}"
        )
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise TypeError(f"sentences must be a sequence of str, got {type(sentences).__name__}")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise TypeError(f"sentences[{i}] must be a str, got {type(sentence).__name__}")
    if len(sentences) < batch_size:
        raise ValueError(f"sentences must hold at least batch_size={batch_size} sentences, got {len(sentences)}")
    if micro_batch_size is not None:
        checks.positive_int("micro_batch_size", micro_batch_size)
    per_epoch = len(sentences) // batch_size
    total = epochs * per_epoch if steps is None else checks.positive_int("steps", steps)

    device = next(encoder.parameters()).device
    head = None
    if trainable == "linear":
        head = nn.Linear(encoder.config.dim, encoder.config.dim, bias=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nn.init.orthogonal_(head.weight)
        head.to(device)
    wrapped = PooledEncoder(encoder, pooling, tokenizer.pad_id, head)
    flags = [p.requires_grad for p in encoder.parameters()]
    if head is not None:
        for p in encoder.parameters():
            p.requires_grad_(False)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    generator = torch.Generator().manual_seed(seed)
    orders: list[list[int]] = []

    def batch_at(step: int) -> Tensor:
        epoch, k = divmod(step, per_epoch)
        while len(orders) <= epoch:  # steps run in order, so the permutations do too
            orders.append(torch.randperm(len(sentences), generator=generator).tolist())
        picked = orders[epoch][k * batch_size : (k + 1) * batch_size]
        return pair_rows(tokenizer, [sentences[i] for i in picked], max_len).to(device)

    def embedding_loss(h: Tensor) -> Tensor:
        return simcse_loss(h.float(), temperature)

    def loss_fn(m: nn.Module, ids: Tensor) -> Tensor:
        return embedding_loss(m(ids))

    def step_fn(m: nn.Module, ids: Tensor) -> Tensor:
        return contrastive_backward(m, ids, embedding_loss, 2 * micro_batch_size)

    accumulate = micro_batch_size is not None
    try:
        history = fit(
            wrapped, batch_at, None if accumulate else loss_fn, step_fn=step_fn if accumulate else None,
            steps=total, lr=lr, optimizer=opt, schedule="constant", seed=seed, progress=progress, desc="SimCSE",
        )
    finally:
        for p, flag in zip(encoder.parameters(), flags):
            p.requires_grad_(flag)
        model.eval()
        if head is not None:
            head.eval()
    return SimCSEResult(losses=list(history.losses), seconds=history.seconds, head=head)
