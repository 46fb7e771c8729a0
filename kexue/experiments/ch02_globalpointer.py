"""Chapter 02's experiment: MSRA NER with four heads on one encoder, flat and nested.

The heads are a BIO CRF, GlobalPointer with and without RoPE, and Efficient
GlobalPointer (:data:`HEADS`), each on the book's small Chinese character BERT
(frozen, top block trained, or fine-tuned). :func:`run` trains every head on
the same MSRA subset and then the silver nested set
(:func:`kexue.data.load_silver_nested`) with the heads of
``cfg.nested_heads``; ``tools/ner_full.py`` records the ``full`` profile head by
head with :func:`fit_head`. Every training run goes through
:func:`kexue.experiments.loop.fit` with AdamW at constant learning rates (one
parameter group per rate) and, when ``length_buckets > 0``, batches of similar
length.

See: book chapter 02 (``02_globalpointer``), sections "Experiment: MSRA,
flat", "The full profile, recorded" and "Experiment: nested entities (silver)".
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from kexue import checks
from kexue.data import ENTITY_TYPES, load_msra, load_silver_nested
from kexue.experiments.config import Profiles
from kexue.experiments.loop import History, fit
from kexue.experiments.records import RunResult, fingerprint
from kexue.globalpointer import (
    CrfTagger,
    EfficientGlobalPointer,
    GlobalPointer,
    decode_spans,
    global_pointer_loss,
    span_targets,
)
from kexue.metrics import PRF, entity_prf, per_type_prf
from kexue.pretrained import load_zh_char_bert
from kexue.spans import bio_to_spans, spans_to_bio
from kexue.utils import get_device, seed_everything

__all__ = [
    "HEADS", "NerConfig", "CONFIGS", "NerData", "prepare_ner", "NerModel", "cache_features",
    "make_optimizer", "epoch_batches", "evaluate_ner", "train_ner", "HeadResult", "fit_head",
    "NestedResult", "nested_experiment", "select_rows", "run",
    "ARTICLE_ROPE_GAP", "check_rope_gap", "bio_round_trip", "check_bio_loses_inner_spans",
]

HEADS = ("crf", "gp", "gp_norope", "egp")

Span = tuple[int, int, int]  # (type, start, end inclusive), in token indices


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NerConfig:
    """One run of the chapter's experiment. ``finetune`` trains the whole encoder; ``train_top`` only its last block."""

    n_train: int | None  # training sentences drawn at random (None: all of MSRA's train split)
    n_test: int | None  # test sentences drawn at random (None: all)
    max_len: int  # tokens per sentence, [CLS] and [SEP] included (longer texts are cut)
    epochs: int
    batch_size: int
    lr_head: float  # AdamW learning rate of the head (and of a trained top block)
    lr_encoder: float  # AdamW learning rate of a fine-tuned encoder
    crf_lr_multiplier: float  # the CRF's start/end/transition scores train at lr_head times this
    finetune: bool
    train_top: bool
    head_size: int = 64
    heads: tuple[str, ...] = HEADS  # the flat experiment's heads
    nested_heads: tuple[str, ...] = ("crf", "gp")  # the silver nested experiment's heads (() skips it)
    length_buckets: int = 0  # > 0: batches of similar length, sorted within runs of this many batches


#: ``smoke``: a 1,200-sentence subset, frozen encoder (heads only): under a minute on one
#: CPU thread for all six runs. ``book``: the same recipe on 8,000 training sentences and
#: the whole test split, cut at 64 tokens, 6 epochs: a few minutes per seed on one thread;
#: recorded with 3 seeds, which puts an interval on each gap between heads (some are a
#: point or two). ``full``: the article's
#: recipe (all data, fine-tuning, 10 epochs, batch 16, CRF transitions at 2e-2 = 1000 x 2e-5)
#: with two changes for the small shipped encoder: ``max_len=128`` (its position table;
#: the article used 256) and a learning rate of 1e-4 instead of 2e-5, which a 4-layer
#: encoder of width 256 needs (``tools/ner_full.py`` records the comparison of the two
#: rates). Batches group similar lengths.
CONFIGS = Profiles(
    smoke=NerConfig(n_train=1200, n_test=400, max_len=48, epochs=6, batch_size=32, lr_head=3e-3,
                    lr_encoder=0.0, crf_lr_multiplier=10.0, finetune=False, train_top=False),
    book=NerConfig(n_train=8_000, n_test=None, max_len=64, epochs=6, batch_size=32, lr_head=3e-3,
                   lr_encoder=0.0, crf_lr_multiplier=10.0, finetune=False, train_top=False,
                   length_buckets=20),
    full=NerConfig(n_train=None, n_test=None, max_len=128, epochs=10, batch_size=16, lr_head=1e-4,
                   lr_encoder=1e-4, crf_lr_multiplier=200.0, finetune=True, train_top=False,
                   length_buckets=50),
)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

@dataclass
class NerData:
    """Tokenised NER examples: ``[CLS] chars [SEP]`` ids, bool mask, spans ``(type, start, end)`` in token indices."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    spans: list[list[Span]]
    types: tuple[str, ...]


def prepare_ner(examples: Sequence, tokenizer, max_len: int, types: Sequence[str]) -> NerData:
    """Tokenise :class:`kexue.data.NerExample` s; character ``c`` becomes token ``c + 1``.

    Texts are truncated to ``max_len - 2`` characters and spans that do not fit
    are dropped (from the gold too, for every head alike). A malformed span
    (``end < start``, negative, or past the end of its text) raises a
    ``ValueError`` naming the example: it is a data error, not something to skip.
    """
    types = tuple(types)
    checks.int_at_least("max_len", max_len, 3)
    ids, mask = tokenizer([ex.text for ex in examples], max_len, pad_to_max=True)
    index = {t: k for k, t in enumerate(types)}
    spans = []
    for k, ex in enumerate(examples):
        row = []
        for a, b, t in ex.spans:
            if t not in index:
                raise ValueError(f"entity type {t!r} is not in types={types}")
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a <= b < len(ex.text)):
                raise ValueError(f"examples[{k}] has the span {(a, b, t)!r}: need 0 <= start <= end < "
                                 f"len(text)={len(ex.text)} (end inclusive), text {ex.text[:20]!r}")
            if b < max_len - 2:
                row.append((index[t], a + 1, b + 1))
        spans.append(sorted(set(row)))
    return NerData(ids, mask, spans, types)


def select_rows(cfg: NerConfig, seed: int, n_train: int, n_test: int) -> tuple[list[int], list[int]]:
    """Sorted row indices of the training and test subsets (all rows when ``cfg.n_*`` is None)."""
    rng = random.Random(seed)
    i_tr = sorted(rng.sample(range(n_train), cfg.n_train)) if cfg.n_train else list(range(n_train))
    i_te = sorted(rng.sample(range(n_test), cfg.n_test)) if cfg.n_test else list(range(n_test))
    return i_tr, i_te


# ---------------------------------------------------------------------------
# the task model
# ---------------------------------------------------------------------------

def _content_mask(mask: torch.Tensor) -> torch.Tensor:
    """Real tokens minus ``[CLS]`` (index 0) and ``[SEP]`` (last real index); right padding."""
    ar = torch.arange(mask.shape[1], device=mask.device)
    return mask & (ar > 0) & (ar < mask.sum(1, keepdim=True) - 1)


class NerModel(nn.Module):
    """Encoder (frozen, top block trained, or fine-tuned) plus one of :data:`HEADS`.

    ``features`` computes the frozen part once (cacheable); ``loss`` and
    ``predict`` run the trainable part. Spans are ``(type, start, end)`` in
    token indices, end inclusive.
    """

    def __init__(self, encoder: nn.Module, head: str, num_types: int, head_size: int = 64,
                 train_encoder: bool = False, train_top: bool = False) -> None:
        super().__init__()
        self.head_name = checks.choice("head", head, HEADS)
        self.num_types = checks.positive_int("num_types", num_types)
        self.train_encoder, self.train_top = bool(train_encoder), bool(train_top) and not train_encoder
        dim = encoder.config.dim
        self._frozen = [encoder]  # not a submodule: never trained, never saved with the head
        self.encoder = copy.deepcopy(encoder) if self.train_encoder else None
        self.top = copy.deepcopy(encoder.blocks[-1]) if self.train_top else None
        self.top_norm = copy.deepcopy(encoder.final_norm) if self.train_top else None
        if head == "crf":
            self.head = CrfTagger(dim, num_types)
        elif head == "egp":
            self.head = EfficientGlobalPointer(dim, num_types, head_size)
        else:
            self.head = GlobalPointer(dim, num_types, head_size, rope=head == "gp")

    def features(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The frozen computation: ids (fine-tuning), the last block's input (``train_top``) or the output."""
        if self.train_encoder:
            return input_ids
        enc = self._frozen[0]
        was = enc.training
        enc.eval()
        with torch.no_grad():
            out, hidden = enc(input_ids, mask, return_all=True)
        enc.train(was)
        return hidden[-2] if self.train_top else out

    def hidden(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.train_encoder:
            return self.encoder(feats, mask)
        if self.train_top:
            return self.top_norm(self.top(feats, mask=mask, positions=None))
        return feats

    def scores(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CRF emissions ``(B, n, 2m+1)`` or span logits ``(B, m, n, n)`` (specials masked)."""
        h = self.hidden(feats, mask)
        if self.head_name == "crf":
            return self.head(h)
        return self.head(h, _content_mask(mask))

    def loss(self, feats: torch.Tensor, mask: torch.Tensor, spans: Sequence[Sequence[Span]]) -> torch.Tensor:
        """The CRF's negative log-likelihood of the BIO tags, or the GlobalPointer loss of the span grid."""
        s = self.scores(feats, mask)
        n = mask.shape[1]
        if self.head_name == "crf":
            tags = torch.tensor([spans_to_bio(sp, n) for sp in spans], device=mask.device)
            return self.head.crf(s, tags, mask)
        return global_pointer_loss(s, span_targets(spans, self.num_types, n, s.dtype, s.device))

    @torch.no_grad()
    def predict(self, feats: torch.Tensor, mask: torch.Tensor) -> list[set[Span]]:
        """Viterbi paths turned into spans (CRF), or every span scoring above 0 (GlobalPointer)."""
        s = self.scores(feats, mask)
        if self.head_name != "crf":
            return decode_spans(s)
        inner = _content_mask(mask)
        out = []
        for path, keep in zip(self.head.crf.decode(s, mask), inner.tolist()):
            out.append({(t, i, j) for t, i, j in bio_to_spans(path) if keep[i] and keep[j]})
        return out


def cache_features(model: NerModel, data: NerData, batch_size: int = 128) -> torch.Tensor:
    """``model.features`` for every row, computed in length-sorted batches, zero-padded to the data's width."""
    device = next(model._frozen[0].parameters()).device
    lengths = data.mask.sum(1)
    order = lengths.argsort(descending=True)
    out: torch.Tensor | None = None
    for idx in order.split(batch_size):
        n = int(lengths[idx].max())
        f = model.features(data.input_ids[idx, :n].to(device), data.mask[idx, :n].to(device))
        if out is None:
            out = f.new_zeros((len(lengths), data.mask.shape[1]) + tuple(f.shape[2:]))
        out[idx.to(device), :n] = f
    assert out is not None
    return out


# ---------------------------------------------------------------------------
# training and evaluation
# ---------------------------------------------------------------------------

def make_optimizer(model: NerModel, cfg: NerConfig) -> torch.optim.Optimizer:
    """AdamW; encoder at ``lr_encoder``, CRF scores at ``lr_head · crf_lr_multiplier``, the rest at ``lr_head``."""
    enc, crf, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (enc if name.startswith("encoder.") else crf if ".crf." in name else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr_head}]
    if crf:
        groups.append({"params": crf, "lr": cfg.lr_head * cfg.crf_lr_multiplier})
    if enc:
        groups.append({"params": enc, "lr": cfg.lr_encoder})
    return torch.optim.AdamW(groups, weight_decay=0.0)


def _batches(mask: torch.Tensor, batch_size: int, gen: torch.Generator | None,
             bucket: int = 0) -> list[torch.Tensor]:
    """Row indices per batch: shuffled (``gen``) or in order; ``bucket > 0`` sorts each run of
    ``bucket`` batches by length before splitting and then shuffles the batches, so a batch
    pads to a similar length (less padding, same epoch)."""
    order = torch.randperm(len(mask), generator=gen) if gen is not None else torch.arange(len(mask))
    if bucket <= 0:
        return list(order.split(batch_size))
    lengths = mask.sum(1)
    pieces: list[torch.Tensor] = []
    for chunk in order.split(batch_size * bucket):
        pieces.extend(chunk[lengths[chunk].argsort(descending=True, stable=True)].split(batch_size))
    shuffle = torch.randperm(len(pieces), generator=gen).tolist() if gen is not None else range(len(pieces))
    return [pieces[i] for i in shuffle]


def epoch_batches(mask: torch.Tensor, batch_size: int, seed: int, bucket: int = 0) -> Callable[[int], torch.Tensor]:
    """``step -> row indices`` over epochs of ``ceil(rows / batch_size)`` steps, each epoch reshuffled.

    The epochs are drawn in order from one generator seeded with ``seed``, so
    the batch of a step does not depend on when it is asked for (what
    :func:`~kexue.experiments.loop.fit` needs to resume).
    """
    checks.positive_int("batch_size", batch_size)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(mask) / batch_size)
    epochs: list[list[torch.Tensor]] = []

    def batch_at(step: int) -> torch.Tensor:
        epoch, i = divmod(step, per_epoch)
        while len(epochs) <= epoch:
            epochs.append(_batches(mask, batch_size, gen, bucket))
        return epochs[epoch][i]

    return batch_at


def _trim(idx: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` cut to their longest real length."""
    n = int(mask[idx].sum(1).max())
    return feats[idx][:, :n], mask[idx][:, :n]


def evaluate_ner(model: NerModel, feats: torch.Tensor, mask: torch.Tensor,
                 batch_size: int = 64) -> list[set[Span]]:
    """Predicted span sets for every row of cached ``feats`` (batches of similar length, row order kept)."""
    was = model.training
    model.eval()
    out: list[set[Span]] = [set() for _ in range(len(mask))]
    order = mask.sum(1).argsort(descending=True, stable=True)  # similar lengths share a batch
    for idx in order.split(batch_size):
        for i, spans in zip(idx.tolist(), model.predict(*_trim(idx, feats, mask))):
            out[i] = spans
    model.train(was)
    return out


def train_ner(model: NerModel, feats: torch.Tensor, mask: torch.Tensor, spans: Sequence[Sequence[Span]],
              cfg: NerConfig, *, seed: int = 0, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
              desc: str = "ner") -> History:
    """Train on cached ``feats`` for ``cfg.epochs`` through :func:`~kexue.experiments.loop.fit`.

    AdamW with :func:`make_optimizer`'s groups at constant learning rates (no
    warm-up, no decay); ``evaluate(model)`` runs after every epoch.
    """
    per_epoch = math.ceil(len(mask) / cfg.batch_size)
    order = epoch_batches(mask, cfg.batch_size, seed, cfg.length_buckets)

    def batch_at(step: int):
        idx = order(step)
        f, m = _trim(idx, feats, mask)
        return f, m, [spans[i] for i in idx.tolist()]

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        return model.loss(*batch)

    return fit(model, batch_at, loss_fn, steps=cfg.epochs * per_epoch, optimizer=make_optimizer(model, cfg),
               schedule="constant", evaluate=evaluate, eval_every=per_epoch, seed=seed, desc=desc)


@dataclass
class HeadResult:
    """One head trained and scored: the chapter's experiment, one row."""

    head: str
    losses: list[float]  # every step's training loss
    f1_by_epoch: list[float]  # test F1 after each epoch
    pred: list[set[Span]]  # final predictions, one set per test row
    prf: PRF  # final micro P/R/F1
    per_type: dict[int, PRF]  # final P/R/F1 of each type index
    params: int  # the head's parameters
    seconds: float  # training time, per-epoch evaluation included


def fit_head(encoder: nn.Module, head: str, train: NerData, test: NerData, feats_train: torch.Tensor,
             feats_test: torch.Tensor, cfg: NerConfig, seed: int = 0) -> HeadResult:
    """Train one head on cached features and score it on ``test`` after every epoch (the last one is final)."""
    seed_everything(seed)
    device = feats_train.device
    model = NerModel(encoder, head, len(train.types), cfg.head_size, train_encoder=cfg.finetune,
                     train_top=cfg.train_top).to(device)
    gold = [set(sp) for sp in test.spans]
    m_tr, m_te = train.mask.to(device), test.mask.to(device)
    last: dict[str, list[set[Span]]] = {}

    def evaluate(model: nn.Module) -> dict[str, float]:
        last["pred"] = evaluate_ner(model, feats_test, m_te)
        return {"f1": entity_prf(last["pred"], gold).f1}

    history = train_ner(model, feats_train, m_tr, train.spans, cfg, seed=seed, evaluate=evaluate, desc=head)
    pred = last["pred"]  # evaluated after the last step
    per = per_type_prf(pred, gold)
    return HeadResult(
        head=head, losses=history.losses, f1_by_epoch=history.eval_series("f1")[1], pred=pred,
        prf=entity_prf(pred, gold),
        per_type={t: per.get(t, entity_prf([], [])) for t in range(len(train.types))},
        params=sum(p.numel() for p in model.head.parameters()), seconds=history.seconds,
    )


# ---------------------------------------------------------------------------
# the nested experiment
# ---------------------------------------------------------------------------

@dataclass
class NestedResult:
    """The silver nested experiment: each head's run, the inner spans and the BIO ceiling."""

    runs: dict[str, HeadResult]
    gold: list[set[Span]]
    inner: list[set[Span]]  # gold spans that lie inside another gold span
    bio_bound: PRF  # the gold after a BIO round trip, scored against the gold: a flat tagger's ceiling
    inner_recall: dict[str, float] = field(default_factory=dict)


def inner_spans(gold: set[Span]) -> set[Span]:
    """The spans of ``gold`` that lie inside another span of it."""
    return {(t, i, j) for t, i, j in gold if any(o != (t, i, j) and o[1] <= i and j <= o[2] for o in gold)}


def nested_experiment(encoder: nn.Module, train: NerData, test: NerData, feats_train: torch.Tensor,
                      feats_test: torch.Tensor, cfg: NerConfig, seed: int = 0) -> NestedResult:
    """Train ``cfg.nested_heads`` on the silver nested ``train`` and measure recall of ``test``'s inner spans."""
    gold = [set(s) for s in test.spans]
    inner = [inner_spans(g) for g in gold]
    bound = entity_prf([bio_to_spans(spans_to_bio(sorted(g), cfg.max_len)) for g in gold], gold)
    runs = {h: fit_head(encoder, h, train, test, feats_train, feats_test, cfg, seed) for h in cfg.nested_heads}
    recall = {h: entity_prf([p & i for p, i in zip(r.pred, inner)], inner).recall for h, r in runs.items()}
    return NestedResult(runs, gold, inner, bound, recall)


# ---------------------------------------------------------------------------
# checks of the chapter's findings (they raise AssertionError when a finding fails)
# ---------------------------------------------------------------------------

#: The article's RoPE ablation on People's Daily, test F1 in points: 95.51 with RoPE,
#: 62.59 without (dev: 96.25 and 54.35, a larger drop).
ARTICLE_ROPE_GAP = 95.51 - 62.59


def check_rope_gap(gap: float, article_gap: float = ARTICLE_ROPE_GAP, margin: float = 10.0) -> float:
    """Check that RoPE helps (``gap > 0``) by at least ``margin`` points less than the article's gap.

    ``gap`` is GlobalPointer's F1 minus the F1 without RoPE, in points. Returns
    the shortfall ``article_gap - gap``; raises AssertionError when RoPE does not
    help or when the gap comes within ``margin`` points of ``article_gap`` (then
    the article's drop is, within the margin, reproduced).
    """
    checks.positive_float("margin", margin)
    if not gap > 0:
        raise AssertionError(f"RoPE does not help: gap {gap:+.2f} points")
    if not gap < article_gap - margin:
        raise AssertionError(f"the RoPE gap {gap:.2f} is within {margin:g} points of the article's {article_gap:.2f}")
    return article_gap - gap


def bio_round_trip(spans: Sequence[Span], length: int) -> set[Span]:
    """``spans`` written as BIO tags of a ``length``-token text and read back (the CRF's view of a gold set)."""
    return bio_to_spans(spans_to_bio(sorted(spans), length))


def check_bio_loses_inner_spans(gold: Sequence[set[Span]], length: int,
                                round_trip: Callable[[Sequence[Span], int], set[Span]] = bio_round_trip) -> int:
    """Count the gold spans a BIO round trip loses and check that they are exactly the nested inner spans.

    Returns the number lost; raises AssertionError when none is lost (no
    nesting in ``gold``, or a ``round_trip`` that keeps nested spans) or when
    the lost spans are not :func:`inner_spans` of their sentence.
    """
    lost = [set(g) - round_trip(sorted(g), length) for g in gold]
    n_lost = sum(map(len, lost))
    if n_lost == 0:
        raise AssertionError("the round trip lost no span")
    if lost != [inner_spans(set(g)) for g in gold]:
        raise AssertionError("the spans lost are not the nested inner spans")
    return n_lost


# ---------------------------------------------------------------------------
# the chapter's run
# ---------------------------------------------------------------------------

def run(cfg: NerConfig, seed: int = 0) -> RunResult:
    """The chapter's experiment: every head of ``cfg.heads`` on MSRA, then ``cfg.nested_heads`` on the silver set.

    The subsets are drawn with ``seed``; the heads share the encoder's cached
    features (the same sentences serve the nested experiment). ``metrics``
    hold each head's test P/R/F1, the gaps the chapter discusses and the
    nested inner-span recalls; ``artifacts`` hold the :class:`HeadResult` s
    (``runs``), the test gold, the data sizes and the :class:`NestedResult`.
    """
    device = get_device()
    bert, tok = load_zh_char_bert(device=device)
    msra_train, msra_test = load_msra("train"), load_msra("test")
    i_tr, i_te = select_rows(cfg, seed, len(msra_train), len(msra_test))
    ex_tr, ex_te = [msra_train[i] for i in i_tr], [msra_test[i] for i in i_te]
    train = prepare_ner(ex_tr, tok, cfg.max_len, ENTITY_TYPES)
    test = prepare_ner(ex_te, tok, cfg.max_len, ENTITY_TYPES)
    probe = NerModel(bert.encoder, "gp", len(ENTITY_TYPES), cfg.head_size, train_encoder=cfg.finetune,
                     train_top=cfg.train_top)
    f_tr, f_te = cache_features(probe, train), cache_features(probe, test)
    runs = {h: fit_head(bert.encoder, h, train, test, f_tr, f_te, cfg, seed) for h in cfg.heads}

    metrics: dict[str, float] = {}
    for h, r in runs.items():
        metrics.update({f"{h}_f1": r.prf.f1, f"{h}_precision": r.prf.precision, f"{h}_recall": r.prf.recall})
    f1 = {h: r.prf.f1 for h, r in runs.items()}
    for name, (a, b) in {"gp_minus_crf": ("gp", "crf"), "rope_gain": ("gp", "gp_norope"),
                         "egp_minus_gp": ("egp", "gp")}.items():
        if a in f1 and b in f1:
            metrics[name] = f1[a] - f1[b]
    data = {"msra_train": fingerprint(ex_tr), "msra_test": fingerprint(ex_te)}
    nested = None
    if cfg.nested_heads:
        silver_train, silver_test = load_silver_nested("train"), load_silver_nested("test")
        nx_tr, nx_te = [silver_train[i] for i in i_tr], [silver_test[i] for i in i_te]
        nested = nested_experiment(bert.encoder, prepare_ner(nx_tr, tok, cfg.max_len, ENTITY_TYPES),
                                   prepare_ner(nx_te, tok, cfg.max_len, ENTITY_TYPES), f_tr, f_te, cfg, seed)
        metrics["nested_bio_bound_recall"] = nested.bio_bound.recall
        for h, r in nested.runs.items():
            metrics[f"nested_{h}_f1"] = r.prf.f1
            metrics[f"nested_{h}_inner_recall"] = nested.inner_recall[h]
        data.update(silver_nested_train=fingerprint(nx_tr), silver_nested_test=fingerprint(nx_te))
    sizes = {"train_sentences": len(train.spans), "train_entities": sum(map(len, train.spans)),
             "test_sentences": len(test.spans), "test_entities": sum(map(len, test.spans))}
    artifacts = {"config": cfg, "runs": runs, "gold": [set(s) for s in test.spans], "sizes": sizes,
                 "types": ENTITY_TYPES, "nested": nested}
    return RunResult(metrics=metrics, artifacts=artifacts, data=data)
