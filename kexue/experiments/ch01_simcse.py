"""Chapter 01's experiment: SimCSE against BERT-whitening on the Chinese STS-B.

:func:`run` scores the shipped character BERT raw and whitened for every pooling,
the same architecture with random weights (a control), a bag of characters
without any model (:func:`tfidf_spearman`), SimCSE for every pooling, a dropout
sweep and SimCSE on a frozen encoder under a linear layer, with how far that
layer moved from its orthogonal start (:func:`head_drift`). The training is
:func:`kexue.experiments.simcse_training.train_simcse` with the article's recipe
(Adam at a constant learning rate, batch 64, one epoch, dropout 0.3 on the hidden
dropouts only). Section "Experiment on the Chinese STS-B".

The SimCSE sentences are distinct sentences of the STS-B *training* pairs
(:func:`unlabelled_sentences`); the article's script instead pools both sides of
the train, valid and test pairs (duplicates kept), shuffles them and keeps the
first 10,000. The whitening statistics do pool all three splits, as its
whitening script does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from torch import nn

from kexue import checks
from kexue.data import load_sts_b
from kexue.experiments.config import Profiles
from kexue.experiments.records import RunResult, fingerprint
from kexue.experiments.simcse_training import SimCSEResult, train_simcse
from kexue.nn import MaskedLM
from kexue.pretrained import load_zh_char_bert
from kexue.simcse import POOLINGS, cosine_scores, encode, spearman, sts_spearman
from kexue.tokenizer import CharTokenizer
from kexue.utils import get_device, seed_everything

__all__ = [
    "SimCSEConfig", "CONFIGS", "run", "simcse_run", "tfidf_spearman", "unlabelled_sentences",
    "orthogonal_start", "head_drift",
]

Pairs = Sequence[tuple[str, str, float]]


@dataclass(frozen=True)
class SimCSEConfig:
    """Chapter 01's experiment.

    ``full`` is the article's recipe (one epoch, batch 64, lr 1e-5, dropout 0.3 on
    the hidden dropouts only) on every distinct sentence of the task's training
    pairs (9,424 of the asked 10k exist; the article drew its 10k from all splits).
    ``smoke`` and ``book`` train on fewer sentences and so use a larger lr. All three
    train the same shipped encoder. ``frozen_lr_factors`` reruns the frozen-encoder
    head at ``lr`` times each factor.
    """

    sentences: int = 1280  # unlabelled training sentences drawn from STS-B train
    batch_size: int = 64
    lr: float = 1e-4  # Adam, constant
    epochs: int = 1
    dropout: float = 0.3
    attention_dropout: float = 0.0
    temperature: float = 0.05
    max_len: int = 64
    dropout_sweep: tuple[float, ...] = (0.1, 0.2, 0.3)
    sweep_pooling: str = "last-avg"  # pooling of the dropout sweep and the frozen-encoder run
    # the frozen-encoder run at lr x each factor (1 = the recipe's lr): does a head that moves reach whitening?
    frozen_lr_factors: tuple[float, ...] = (1.0, 100.0)

    def __post_init__(self) -> None:
        checks.positive_int("sentences", self.sentences)
        checks.int_at_least("batch_size", self.batch_size, 2)
        checks.positive_int("epochs", self.epochs)
        checks.choice("sweep_pooling", self.sweep_pooling, POOLINGS)
        if 1.0 not in self.frozen_lr_factors:
            raise ValueError(f"frozen_lr_factors must contain 1.0 (the recipe's lr), got {self.frozen_lr_factors}")
        for factor in self.frozen_lr_factors:
            checks.positive_float("frozen_lr_factors", factor)
        if self.sentences < self.batch_size:
            raise ValueError(f"sentences ({self.sentences}) must be at least batch_size ({self.batch_size})")


#: ``smoke``: 20 steps per SimCSE run, five runs (its dropout sweep skips 0.2, to keep the
#: notebook under 3 minutes); ``book``: the recipe on twice the sentences (40 steps per run,
#: the whole sweep), recorded with 3 seeds; ``full``: the article's protocol.
CONFIGS = Profiles(
    smoke=SimCSEConfig(dropout_sweep=(0.1, 0.3)),
    book=SimCSEConfig(sentences=2560, lr=1e-4),
    full=SimCSEConfig(sentences=10_000, lr=1e-5),
)


def tfidf_spearman(pairs: Pairs, fit_texts: Sequence[str] | None = None) -> dict[str, float]:
    """The no-model control: bag-of-characters cosine, counts and TF-IDF.

    Uses scikit-learn's vectorisers with ``analyzer="char"``; the IDF is fitted on
    ``fit_texts`` (default: both sides of ``pairs``).
    """
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    fit = list(fit_texts) if fit_texts is not None else a + b
    out = {}
    for name, vec in (("count", CountVectorizer(analyzer="char")), ("tfidf", TfidfVectorizer(analyzer="char"))):
        vec.fit(fit)
        va = torch.from_numpy(vec.transform(a).toarray()).double()
        vb = torch.from_numpy(vec.transform(b).toarray()).double()
        out[name] = spearman(cosine_scores(va, vb), [p[2] for p in pairs])
    return out


def unlabelled_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct sentences of the STS-B training pairs (without scores), drawn with ``seed``."""
    train = sorted({s for a, b, _ in load_sts_b("train") for s in (a, b)})
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return [train[i] for i in pick]


def orthogonal_start(dim: int, seed: int = 0) -> torch.Tensor:
    """The ``(dim, dim)`` weight the frozen-encoder head starts from: the orthogonal draw that
    ``train_simcse(..., trainable="linear", seed=seed)`` makes (a test checks they agree)."""
    weight = torch.empty(checks.positive_int("dim", dim), dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nn.init.orthogonal_(weight)
    return weight


def head_drift(weight: torch.Tensor, start: torch.Tensor) -> dict[str, float]:
    """How far a linear head ``W`` moved from its start ``W0``, and how far it is from a rotation.

    ``moved`` = ||W - W0||_F / ||W0||_F; ``max_step`` = max |W_ij - W0_ij|; ``sigma_min`` and
    ``sigma_max`` are W's extreme singular values. An orthogonal W (both 1) leaves every cosine,
    hence every Spearman score, unchanged; whitening needs their ratio to be sqrt(cond(Cov)).
    """
    checks.floating_tensor("weight", weight)
    checks.floating_tensor("start", start)
    if weight.shape != start.shape:
        raise ValueError(
            f"weight and start must have the same shape, got {tuple(weight.shape)} and {tuple(start.shape)}"
        )
    w, w0 = weight.detach().double().cpu(), start.detach().double().cpu()
    sigma = torch.linalg.svdvals(w)
    return {
        "moved": float(torch.linalg.norm(w - w0) / torch.linalg.norm(w0)),
        "max_step": float((w - w0).abs().max()),
        "sigma_min": float(sigma.min()),
        "sigma_max": float(sigma.max()),
    }


def simcse_run(
    cfg: SimCSEConfig,
    tokenizer: CharTokenizer,
    sentences: Sequence[str],
    test: Pairs,
    pooling: str,
    *,
    dropout: float | None = None,
    trainable: str = "all",
    seed: int = 0,
    device: torch.device | None = None,
) -> tuple[float, SimCSEResult, tuple[torch.Tensor, torch.Tensor]]:
    """Train SimCSE from the shipped weights; return the test Spearman, the training result and the
    test vectors ``(a, b)`` (through the linear head for ``trainable="linear"``)."""
    model, _ = load_zh_char_bert(
        device=device, dropout=cfg.dropout if dropout is None else dropout, attention_dropout=cfg.attention_dropout
    )
    res = train_simcse(
        model, tokenizer, sentences, pooling=pooling, batch_size=cfg.batch_size, lr=cfg.lr, epochs=cfg.epochs,
        temperature=cfg.temperature, max_len=cfg.max_len, trainable=trainable, optimizer="adam", seed=seed,
    )
    a = encode(model, tokenizer, [p[0] for p in test], pooling, max_len=cfg.max_len)
    b = encode(model, tokenizer, [p[1] for p in test], pooling, max_len=cfg.max_len)
    if res.head is not None:
        head = res.head.cpu()
        with torch.no_grad():
            a, b = head(a), head(b)
    return spearman(cosine_scores(a, b), [p[2] for p in test]), res, (a, b)


def run(cfg: SimCSEConfig, seed: int = 0) -> RunResult:
    """Every score of section 5, as flat ``metrics`` (Spearman, not x100) and structured ``artifacts``.

    Metrics: ``{pretrained,random}_{raw,whitening}_<pooling>``, ``simcse_<pooling>``,
    ``bag_count``, ``bag_tfidf``, ``dropout_<rate>`` (on ``cfg.sweep_pooling``),
    ``frozen_linear`` (at ``cfg.lr``), ``frozen_linear_moved`` (its head's :func:`head_drift`
    ``moved``) and ``frozen_linear_lr<lr>`` (the other ``frozen_lr_factors``). Artifacts:
    ``baselines`` (``{"pretrained" | "random init": sts_spearman output}``), ``bag``, ``simcse``
    (per pooling), ``losses`` and ``seconds`` (per pooling), ``vectors`` (the SimCSE test
    vectors ``(a, b)`` per pooling), ``sweep``, ``frozen`` (the score at ``cfg.lr``) and
    ``frozen_heads`` (``{lr: {"spearman", "steps", **head_drift}}``).
    """
    device = get_device()
    test = load_sts_b("test")
    all_sents = sorted({s for split in ("train", "valid", "test") for a, b, _ in load_sts_b(split) for s in (a, b)})
    model, tokenizer = load_zh_char_bert(device=device)
    # whitening statistics pool every STS-B sentence, as the author's script pools its splits
    baselines = {"pretrained": sts_spearman(model, tokenizer, test, POOLINGS, whitening_texts=all_sents,
                                            max_len=cfg.max_len)}
    seed_everything(seed)
    random_model = MaskedLM(model.config).to(device).eval()
    baselines["random init"] = sts_spearman(random_model, tokenizer, test, POOLINGS, whitening_texts=all_sents,
                                            max_len=cfg.max_len)
    bag = tfidf_spearman(test, all_sents)

    unlabelled = unlabelled_sentences(cfg.sentences, seed)
    scores, runs, vectors = {}, {}, {}
    for pooling in POOLINGS:
        scores[pooling], runs[pooling], vectors[pooling] = simcse_run(
            cfg, tokenizer, unlabelled, test, pooling, seed=seed, device=device)
    sweep = {
        p: scores[cfg.sweep_pooling] if p == cfg.dropout
        else simcse_run(cfg, tokenizer, unlabelled, test, cfg.sweep_pooling, dropout=p, seed=seed, device=device)[0]
        for p in cfg.dropout_sweep
    }
    # the frozen-encoder head, at the recipe's lr and at larger ones: its score and how far it moved
    frozen_heads = {}
    start = orthogonal_start(model.config.dim, seed)
    for factor in cfg.frozen_lr_factors:
        lr = cfg.lr * factor
        score, res, _ = simcse_run(replace(cfg, lr=lr), tokenizer, unlabelled, test, cfg.sweep_pooling,
                                   trainable="linear", seed=seed, device=device)
        if res.head is None:
            raise RuntimeError("train_simcse(trainable='linear') returned no head")
        frozen_heads[lr] = {"spearman": score, "steps": len(res.losses), **head_drift(res.head.weight, start)}
    frozen = frozen_heads[cfg.lr]["spearman"]

    metrics = {f"{key}_{kind}_{p}": baselines[name][kind][p]
               for name, key in (("pretrained", "pretrained"), ("random init", "random"))
               for kind in ("raw", "whitening") for p in POOLINGS}
    metrics.update({f"simcse_{p}": v for p, v in scores.items()})
    metrics.update({f"bag_{k}": v for k, v in bag.items()})
    metrics.update({f"dropout_{p}": v for p, v in sweep.items()})
    metrics["frozen_linear"] = frozen
    metrics["frozen_linear_moved"] = frozen_heads[cfg.lr]["moved"]
    metrics.update({f"frozen_linear_lr{lr:g}": h["spearman"] for lr, h in frozen_heads.items() if lr != cfg.lr})
    return RunResult(
        metrics=metrics,
        artifacts={
            "baselines": baselines, "bag": bag, "simcse": scores, "losses": {p: r.losses for p, r in runs.items()},
            "seconds": {p: r.seconds for p, r in runs.items()}, "vectors": vectors, "sweep": sweep, "frozen": frozen,
            "frozen_heads": frozen_heads,
        },
        data={"sts_b_test": fingerprint(test), "unlabelled": fingerprint(unlabelled),
              "whitening_texts": fingerprint(all_sents)},
    )
