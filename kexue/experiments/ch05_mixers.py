"""Chapter 05 experiment: one small encoder, every token mixer swapped in.

The same pre-LN encoder (:class:`kexue.nn.TransformerEncoder`, learned
positions, ``TransformerConfig(mixer=name)``) is trained with each mixer of
:data:`kexue.mixers.MIXERS` on two tasks: the sklearn digits cut into patches
(classification, mean pooling) and MSRA character tagging (BIO over PER, LOC
and ORG, padded and masked batches). :func:`run` trains both for every mixer
of the config and also measures how each trained tagger's outputs move when a
sentence is fed without its training padding (:func:`padding_shift`).

Also here, the chapter's analysis helpers: :func:`probe` measures what a mixer
gives up (longer inputs, permutation equivariance, causality, padding) and
:func:`plot_scaling` draws the benchmark's forward times.

See: book chapter 05 (``book/05_token_mixers.md``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kexue.data import ENTITY_TYPES, NerExample, load_digits, load_msra
from kexue.experiments.config import Profiles
from kexue.experiments.loop import History, fit
from kexue.experiments.records import RunResult, fingerprint
from kexue.metrics import entity_prf
from kexue.mixers import MIXERS
from kexue.nn import TransformerConfig, TransformerEncoder, count_parameters, patchify
from kexue.plot import PALETTE, figure
from kexue.spans import bio_tag_names, bio_to_spans, spans_to_bio
from kexue.utils import get_device, seed_everything

__all__ = [
    "MixersConfig",
    "CONFIGS",
    "MSRA_TAGS",
    "encoder_config",
    "PatchClassifier",
    "CharTagger",
    "digits_data",
    "char_vocab",
    "msra_tensors",
    "msra_data",
    "run_digits",
    "run_msra",
    "msra_predict",
    "msra_scores",
    "padding_shift",
    "run",
    "probe",
    "prediction_agreement",
    "plot_scaling",
]


@dataclass(frozen=True)
class MixersConfig:
    """One profile of the chapter's experiment (the same values for both tasks where shared)."""

    mixers: tuple[str, ...] = tuple(MIXERS)  # which mixers to train
    dim: int = 32  # hidden size of every encoder
    depth: int = 2  # blocks per encoder
    heads: int = 4  # heads of softmax attention, both Synthesizers and External Attention
    ffn_dim: int = 64  # inner width of each block's feed-forward network
    slots: int = 32  # External Attention memory rows S
    dropout: float = 0.0  # hidden dropout (0 in the smoke run: too few steps to matter)
    lr: float = 3e-3  # AdamW peak learning rate (linear warm-up over 5% of the steps, then cosine to 0)
    weight_decay: float = 0.01  # AdamW weight decay
    batch_size: int = 64  # training batch size for both tasks
    patch: int = 2  # digits: side of a square patch; 8x8 images give (8/patch)^2 tokens of patch^2 pixels
    digits_test: int = 497  # digits: images held out after a seeded shuffle (1,300 remain for training)
    digits_epochs: int = 6  # digits: passes over the training images
    msra_train: int = 3000  # MSRA: first sentences of the official train split used for training
    msra_test: int = 1000  # MSRA: first sentences of the official test split used for evaluation
    msra_len: int = 64  # MSRA: sentences are cut to this many characters; every tagger's max_len
    msra_epochs: int = 3  # MSRA: passes over the training sentences
    shift_sentences: int = 32  # MSRA: test sentences fed with and without padding (padding_shift)

    def __post_init__(self) -> None:
        unknown = [m for m in self.mixers if m not in MIXERS]
        if unknown or not self.mixers:
            raise ValueError(f"mixers must be a non-empty tuple of {sorted(MIXERS)}, got {self.mixers!r}")

    def options_for(self, name: str) -> dict[str, Any]:
        """The options ``MIXERS[name]`` is built with inside the encoder."""
        if name in ("synthesizer_random", "synthesizer_dense"):
            return {"heads": self.heads}
        if name == "external_attention":
            return {"heads": self.heads, "slots": self.slots}
        return {}


#: ``smoke``: all nine mixers and both tasks in about a minute of CPU; ``book``: a
#: wider encoder on all of MSRA cut to 64 characters (about 20 minutes of one CPU
#: thread per seed; record seeds 0 1 2: the MSRA differences between mixers are
#: small); ``full``: a larger encoder, length 128 and 10 epochs, meant for a GPU.
CONFIGS: Profiles[MixersConfig] = Profiles(
    smoke=MixersConfig(depth=1, slots=16, lr=1e-2, digits_epochs=10, msra_train=2000, msra_test=500,
                       msra_len=32, msra_epochs=4),
    book=MixersConfig(dim=64, depth=2, ffn_dim=128, slots=32, lr=3e-3, digits_epochs=40,
                      msra_train=50_711, msra_test=4_578, msra_len=64, msra_epochs=3),
    full=MixersConfig(dim=128, depth=4, ffn_dim=512, slots=64, dropout=0.1, lr=1e-3, batch_size=128,
                      digits_epochs=100, msra_train=50_711, msra_test=4_578, msra_len=128, msra_epochs=10),
)


def encoder_config(name: str, cfg: MixersConfig, *, vocab_size: int, max_len: int) -> TransformerConfig:
    """The shared encoder's config with token mixer ``name`` (pre-LN, learned positions)."""
    if name not in MIXERS:
        raise ValueError(f"name must be one of {sorted(MIXERS)}, got {name!r}")
    return TransformerConfig(vocab_size=vocab_size, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                             ffn_dim=cfg.ffn_dim, max_len=max_len, dropout=cfg.dropout, attention_dropout=0.0,
                             norm="pre", position="learned", mixer=name, mixer_options=cfg.options_for(name))


class PatchClassifier(nn.Module):
    """Linear patch embedding, the shared encoder, mean pooling, a linear classifier."""

    def __init__(self, config: TransformerConfig, patch_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(patch_dim, config.dim)
        self.encoder = TransformerEncoder(config)
        self.head = nn.Linear(config.dim, num_classes)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs_embeds=self.embed(patches)).mean(dim=1))


#: BIO tags over MSRA's three entity types, in id order; index 0 is "O".
MSRA_TAGS: tuple[str, ...] = bio_tag_names(ENTITY_TYPES)
_TYPE_ID = {t: i for i, t in enumerate(ENTITY_TYPES)}


class CharTagger(nn.Module):
    """The shared encoder over characters and a linear tag classifier per position."""

    def __init__(self, config: TransformerConfig, num_tags: int = len(MSRA_TAGS)) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(config)
        self.head = nn.Linear(config.dim, num_tags)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(ids, mask))


# --------------------------------------------------------------------------- data


def digits_data(cfg: MixersConfig, seed: int = 0) -> dict[str, Any]:
    """Seeded train/test split of the 1,797 digits as patch sequences (plus its fingerprints)."""
    images, labels = load_digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, y = images[order], labels[order]
    x = patchify(images, cfg.patch)
    k = len(y) - cfg.digits_test
    pairs = [(img.tolist(), int(label)) for img, label in zip(images, y)]
    return {"x_train": x[:k], "y_train": y[:k], "x_test": x[k:], "y_test": y[k:],
            "fingerprints": {"digits_train": fingerprint(pairs[:k]), "digits_test": fingerprint(pairs[k:])}}


def char_vocab(texts: Iterable[str], min_count: int = 1) -> dict[str, int]:
    """Characters seen at least ``min_count`` times; id 0 is [PAD], 1 is [UNK]."""
    counts = Counter(ch for text in texts for ch in text)
    chars = sorted(ch for ch, c in counts.items() if c >= min_count)
    return {"[PAD]": 0, "[UNK]": 1, **{ch: i + 2 for i, ch in enumerate(chars)}}


def msra_tensors(examples: Sequence[NerExample], vocab: dict[str, int], length: int) -> dict[str, torch.Tensor]:
    """Padded ``ids``, BIO ``tags`` (-100 at padding) and ``lengths`` of sentences cut to ``length``.

    MSRA spans are ``(start, end, type name)``; :func:`kexue.spans.spans_to_bio`
    takes ``(type index, start, end)`` and drops spans cut off by ``length``.
    """
    n = len(examples)
    ids = torch.zeros(n, length, dtype=torch.long)
    tags = torch.full((n, length), -100, dtype=torch.long)
    lengths = torch.zeros(n, dtype=torch.long)
    for row, ex in enumerate(examples):
        text = ex.text[:length]
        spans = [(_TYPE_ID[kind], start, end) for start, end, kind in ex.spans]
        ids[row, : len(text)] = torch.tensor([vocab.get(ch, 1) for ch in text], dtype=torch.long)
        tags[row, : len(text)] = torch.tensor(spans_to_bio(spans, len(text)), dtype=torch.long)
        lengths[row] = len(text)
    return {"ids": ids, "tags": tags, "lengths": lengths}


def msra_data(cfg: MixersConfig) -> dict[str, Any]:
    """The first ``msra_train`` / ``msra_test`` sentences of MSRA as padded tensors, and the vocabulary."""
    train, test = load_msra("train")[: cfg.msra_train], load_msra("test")[: cfg.msra_test]
    vocab = char_vocab(ex.text for ex in train)
    return {"vocab": vocab, "train": msra_tensors(train, vocab, cfg.msra_len),
            "test": msra_tensors(test, vocab, cfg.msra_len),
            "fingerprints": {"msra_train": fingerprint(train), "msra_test": fingerprint(test)}}


# --------------------------------------------------------------------------- training


def _train(model: nn.Module, loss_fn, num_examples: int, epochs: int, cfg: MixersConfig, seed: int,
           device: torch.device, desc: str) -> History:
    """Shuffled mini-batches of example indices, ``epochs`` passes, through :func:`fit`.

    AdamW at ``cfg.lr`` with linear warm-up over 5% of the steps, then cosine to 0.
    """
    generator = torch.Generator().manual_seed(seed)
    batches = [idx for _ in range(epochs)
               for idx in torch.randperm(num_examples, generator=generator).split(cfg.batch_size)]
    steps = len(batches)
    history = fit(model, lambda step: batches[step].to(device), loss_fn, steps=steps, lr=cfg.lr,
                  weight_decay=cfg.weight_decay, warmup=max(1, steps // 20), schedule="cosine", seed=seed,
                  desc=desc)
    model.eval()
    return history


def _mixer_parameters(model: nn.Module) -> int:
    return sum(p.numel() for block in model.encoder.blocks for p in block.attention.parameters() if p.requires_grad)


def run_digits(name: str, cfg: MixersConfig, data: dict[str, torch.Tensor], *, seed: int = 0,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train one patch classifier with mixer ``name``; report test accuracy and sizes."""
    device = torch.device(device)
    seed_everything(seed)
    x_train, y_train = data["x_train"].to(device), data["y_train"].to(device)
    tokens, patch_dim = x_train.shape[1:]
    model = PatchClassifier(encoder_config(name, cfg, vocab_size=1, max_len=tokens), patch_dim, 10).to(device)
    history = _train(model, lambda m, i: F.cross_entropy(m(x_train[i]), y_train[i]), len(y_train),
                     cfg.digits_epochs, cfg, seed, device, f"digits {name}")
    with torch.no_grad():
        pred = model(data["x_test"].to(device)).argmax(-1).cpu()
    return {"mixer": name, "accuracy": (pred == data["y_test"]).double().mean().item(), "losses": history.losses,
            "parameters": count_parameters(model), "mixer_parameters": _mixer_parameters(model), "model": model}


def msra_predict(model: CharTagger, split: dict[str, torch.Tensor], *, frame: str = "fixed",
                 batch_size: int = 256) -> list[list[int]]:
    """Predicted tag ids of every sentence (real characters only).

    ``frame="fixed"`` pads every batch to the training length (as in training);
    ``frame="tight"`` sorts sentences by length and pads each batch only to its
    longest sentence, so the same sentence is seen with less padding.
    """
    if frame not in ("fixed", "tight"):
        raise ValueError(f"frame must be 'fixed' or 'tight', got {frame!r}")
    device = next(model.parameters()).device
    ids, lengths = split["ids"], split["lengths"]
    order = torch.argsort(lengths, descending=True, stable=True) if frame == "tight" else torch.arange(len(lengths))
    preds: list[list[int]] = [[] for _ in range(len(lengths))]
    with torch.no_grad():
        for chunk in order.split(batch_size):
            width = int(lengths[chunk].max()) if frame == "tight" else ids.shape[1]
            batch = ids[chunk, :width].to(device)
            mask = torch.arange(width, device=device)[None] < lengths[chunk].to(device)[:, None]
            tags = model(batch, mask).argmax(-1).cpu()
            for row, i in enumerate(chunk.tolist()):
                preds[i] = tags[row, : int(lengths[i])].tolist()
    return preds


def msra_scores(preds: list[list[int]], split: dict[str, torch.Tensor]) -> dict[str, float]:
    """Token accuracy over the real characters and exact-match entity P/R/F1 (:func:`kexue.metrics.entity_prf`)."""
    golds = [split["tags"][i, : int(split["lengths"][i])].tolist() for i in range(len(preds))]
    correct = sum(int(p == g) for pred, gold in zip(preds, golds) for p, g in zip(pred, gold))
    total = sum(len(gold) for gold in golds)
    prf = entity_prf([bio_to_spans(p) for p in preds], [bio_to_spans(g) for g in golds])
    return {"token_accuracy": correct / total if total else 0.0, "precision": prf.precision,
            "recall": prf.recall, "f1": prf.f1}


def run_msra(name: str, cfg: MixersConfig, data: dict[str, Any], *, seed: int = 0,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train one character tagger with mixer ``name`` on padded, masked batches."""
    device = torch.device(device)
    seed_everything(seed)
    train = {k: v.to(device) for k, v in data["train"].items()}
    config = encoder_config(name, cfg, vocab_size=len(data["vocab"]), max_len=cfg.msra_len)
    model = CharTagger(config).to(device)
    mask = train["tags"] != -100

    def loss_fn(m: nn.Module, i: torch.Tensor) -> torch.Tensor:
        logits = m(train["ids"][i], mask[i])
        return F.cross_entropy(logits.flatten(0, 1), train["tags"][i].flatten(), ignore_index=-100)

    history = _train(model, loss_fn, len(train["ids"]), cfg.msra_epochs, cfg, seed, device, f"MSRA {name}")
    scores = msra_scores(msra_predict(model, data["test"]), data["test"])
    return {"mixer": name, **scores, "losses": history.losses, "parameters": count_parameters(model),
            "mixer_parameters": _mixer_parameters(model), "model": model}


def padding_shift(model: CharTagger, split: dict[str, torch.Tensor], count: int = 32) -> dict[str, float]:
    """How a trained tagger's outputs move when a sentence is fed without its training padding.

    For each of the first ``count`` sentences, compare the logits at the real
    characters when the sentence is padded to the training length (masked) and
    when it is fed alone at its own length. Returns the largest absolute logit
    difference and the fraction of characters whose predicted tag is unchanged.
    """
    device = next(model.parameters()).device
    worst, same, total = 0.0, 0, 0
    with torch.no_grad():
        for i in range(min(count, len(split["lengths"]))):
            n = int(split["lengths"][i])
            ids = split["ids"][i : i + 1].to(device)
            mask = torch.arange(ids.shape[1], device=device)[None] < n
            padded = model(ids, mask)[0, :n]
            alone = model(ids[:, :n])[0]
            worst = max(worst, (padded - alone).abs().max().item())
            same += int((padded.argmax(-1) == alone.argmax(-1)).sum())
            total += n
    return {"max_logit_change": worst, "same_prediction": same / max(total, 1)}


def run(cfg: MixersConfig, seed: int = 0, *, device: torch.device | str | None = None) -> RunResult:
    """Train a digits classifier and an MSRA tagger with every mixer of ``cfg``; the chapter's experiment.

    ``metrics`` holds, per mixer, ``digits_accuracy_<mixer>``, ``msra_f1_<mixer>``,
    ``msra_token_accuracy_<mixer>`` and the padding shift of the trained tagger
    (``msra_max_logit_change_<mixer>``, ``msra_same_prediction_<mixer>``), plus the
    always-``O`` token accuracy ``msra_all_o_accuracy``. ``artifacts`` holds the data
    (``digits``, ``msra``), the per-mixer runs with their models and loss curves
    (``digits_runs``, ``msra_runs``) and ``padding_shift``.
    """
    device = get_device() if device is None else torch.device(device)
    digits, msra = digits_data(cfg, seed), msra_data(cfg)
    digit_runs = {name: run_digits(name, cfg, digits, seed=seed, device=device) for name in cfg.mixers}
    msra_runs = {name: run_msra(name, cfg, msra, seed=seed, device=device) for name in cfg.mixers}
    shifts = {name: padding_shift(r["model"], msra["test"], cfg.shift_sentences) for name, r in msra_runs.items()}
    tags = msra["test"]["tags"]
    metrics = {"msra_all_o_accuracy": (tags == 0).sum().item() / (tags != -100).sum().item()}
    for name in cfg.mixers:
        metrics[f"digits_accuracy_{name}"] = digit_runs[name]["accuracy"]
        metrics[f"msra_f1_{name}"] = msra_runs[name]["f1"]
        metrics[f"msra_token_accuracy_{name}"] = msra_runs[name]["token_accuracy"]
        metrics[f"msra_max_logit_change_{name}"] = shifts[name]["max_logit_change"]
        metrics[f"msra_same_prediction_{name}"] = shifts[name]["same_prediction"]
    artifacts = {"digits": digits, "msra": msra, "digits_runs": digit_runs, "msra_runs": msra_runs,
                 "padding_shift": shifts}
    return RunResult(metrics=metrics, artifacts=artifacts, data={**digits["fingerprints"], **msra["fingerprints"]})


# --------------------------------------------------------------------------- what each mixer gives up


def probe(name: str, *, dim: int = 8, seq_len: int = 10, seed: int = 0) -> dict[str, Any]:
    """Measure, on a random float64 mixer, what ``MIXERS[name]`` gives up.

    * ``longer_input``: does it run on ``seq_len + 4`` tokens (or raise ``ValueError``)?
    * ``permutation_equivariant``: does permuting the tokens permute the outputs?
    * ``causal``: can it be built with ``causal=True``?
    * ``padding``: ``"exact"`` if a sequence of 5 padded to 9 (masked) gives the same
      outputs as the unpadded sequence, ``"content"`` if only the padding's content
      is ignored, ``"leaks"`` if even that changes the outputs.
    """
    seed_everything(seed)
    cls = MIXERS[name]
    module = cls(dim, seq_len).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 7, dim, dtype=torch.float64)
    perm = torch.randperm(7)
    equivariant = bool((module(x[:, perm]) - module(x)[:, perm]).abs().max() < 1e-10)
    try:
        module(torch.randn(1, seq_len + 4, dim, dtype=torch.float64))
        longer = True
    except ValueError:
        longer = False
    try:
        cls(dim, seq_len, causal=True)
        causal = True
    except ValueError:
        causal = False
    short = torch.randn(2, 5, dim, dtype=torch.float64)
    mask = torch.arange(9)[None].expand(2, -1) < 5
    padded = torch.cat([short, torch.randn(2, 4, dim, dtype=torch.float64)], dim=1)
    other = torch.cat([short, 50 * torch.randn(2, 4, dim, dtype=torch.float64)], dim=1)
    y = module(padded, mask)[:, :5]
    if (y - module(short)).abs().max() < 1e-10:
        padding = "exact"
    elif (y - module(other, mask)[:, :5]).abs().max() < 1e-10:
        padding = "content"
    else:
        padding = "leaks"
    return {"mixer": name, "longer_input": longer, "permutation_equivariant": equivariant, "causal": causal,
            "padding": padding, "complexity": cls.complexity}


def prediction_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of characters whose predicted tag is the same in ``a`` and ``b``."""
    same = sum(int(x == y) for pa, pb in zip(a, b) for x, y in zip(pa, pb))
    total = sum(len(pa) for pa in a)
    return same / total if total else 1.0


# --------------------------------------------------------------------------- plots


def plot_scaling(results: dict[str, Any], ax=None):
    """Forward time against sequence length from the ``benchmarks/mixers`` record (log-log)."""
    if ax is None:
        _, ax = figure(1, 1, width=6.0, height=4.0)
    for i, (name, rows) in enumerate(results["scaling"]["times"].items()):
        pts = [(r["seq_len"], r["ms"]) for r in rows if r.get("ms") is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", color=PALETTE[i % len(PALETTE)], label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("forward time (ms)")
    ax.legend()
    return ax
