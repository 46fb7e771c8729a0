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
:func:`plot_scaling` draws the benchmark's forward times; and the independent
checks: :func:`value_jacobian_matrix` (a Synthesizer's matrix read off ``forward``
by autograd), :func:`synthesizer_dense_matrix` (Eq. ``ch05-synth-dense`` from the
parameters), :func:`ea_cross_jacobian` (External Attention's cross-token Jacobian
through its column normalisers) and :class:`MadeTokenMLP` with
:func:`future_dependence` (a causal MLP-Mixer token MLP, Eq. ``ch05-made``).

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
    "matched_ffn_dim",
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
    "value_jacobian_matrix",
    "synthesizer_dense_matrix",
    "ea_cross_jacobian",
    "MadeTokenMLP",
    "future_dependence",
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
    #: when set, each mixer's feed-forward width is chosen so that its encoder has as many parameters
    #: as this mixer's encoder at ``ffn_dim`` (see :func:`matched_ffn_dim`); ``None``: equal widths
    match_parameters: str | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.mixers if m not in MIXERS]
        if unknown or not self.mixers:
            raise ValueError(f"mixers must be a non-empty tuple of {sorted(MIXERS)}, got {self.mixers!r}")
        if self.match_parameters is not None and self.match_parameters not in MIXERS:
            raise ValueError(f"match_parameters must be None or one of {sorted(MIXERS)}, "
                             f"got {self.match_parameters!r}")

    def options_for(self, name: str) -> dict[str, Any]:
        """The options ``MIXERS[name]`` is built with inside the encoder."""
        if name in ("synthesizer_random", "synthesizer_dense"):
            return {"heads": self.heads}
        if name == "external_attention":
            return {"heads": self.heads, "slots": self.slots}
        return {}


#: ``smoke``: all nine mixers and both tasks in about a minute of CPU; ``book``: a
#: wider encoder on 15,000 MSRA sentences cut to 64 characters (several minutes of one
#: CPU thread per seed; recorded with seeds 0 1 2: the MSRA differences between mixers
#: are small); ``full``: a larger encoder, length 128 and 10 epochs, meant for a GPU.
CONFIGS: Profiles[MixersConfig] = Profiles(
    smoke=MixersConfig(depth=1, slots=16, lr=1e-2, digits_epochs=10, msra_train=2000, msra_test=500,
                       msra_len=32, msra_epochs=4),
    book=MixersConfig(dim=64, depth=2, ffn_dim=128, slots=32, lr=3e-3, digits_epochs=40,
                      msra_train=15_000, msra_test=4_578, msra_len=64, msra_epochs=3,
                      match_parameters="attention"),
    full=MixersConfig(dim=128, depth=4, ffn_dim=512, slots=64, dropout=0.1, lr=1e-3, batch_size=128,
                      digits_epochs=100, msra_train=50_711, msra_test=4_578, msra_len=128, msra_epochs=10,
                      match_parameters="attention"),
)


def _encoder_config(name: str, cfg: MixersConfig, ffn_dim: int, vocab_size: int, max_len: int) -> TransformerConfig:
    return TransformerConfig(vocab_size=vocab_size, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                             ffn_dim=ffn_dim, max_len=max_len, dropout=cfg.dropout, attention_dropout=0.0,
                             norm="pre", position="learned", mixer=name, mixer_options=cfg.options_for(name))


def _encoder_parameters(config: TransformerConfig) -> int:
    """Parameters of a :class:`TransformerEncoder` built on the meta device (no memory, no random draws)."""
    with torch.device("meta"):
        return count_parameters(TransformerEncoder(config))


def matched_ffn_dim(name: str, cfg: MixersConfig, max_len: int) -> int:
    """The feed-forward width that gives mixer ``name``'s encoder the parameter count of ``cfg.match_parameters``'s.

    An encoder's parameter count is linear in the feed-forward width ``f``
    (each block's two FFN layers hold ``2 * dim * f + f + dim``), so the width is
    solved for and rounded: the counts then differ by less than half of
    ``depth * (2 * dim + 1)``. Mixers whose size depends on the sequence
    length (Synthesizer-Random's logits, MLP-Mixer's token MLP) are matched at
    ``max_len``. Returns ``cfg.ffn_dim`` when ``cfg.match_parameters`` is ``None``;
    raises ``ValueError`` when the mixer alone outgrows the target (no width
    of at least 1 would match).
    """
    if cfg.match_parameters is None:
        return cfg.ffn_dim
    target = _encoder_parameters(_encoder_config(cfg.match_parameters, cfg, cfg.ffn_dim, 1, max_len))
    here = _encoder_parameters(_encoder_config(name, cfg, cfg.ffn_dim, 1, max_len))
    slope = _encoder_parameters(_encoder_config(name, cfg, cfg.ffn_dim + 1, 1, max_len)) - here
    width = cfg.ffn_dim + round((target - here) / slope)
    if width < 1:
        raise ValueError(f"mixer {name!r} has more parameters than {cfg.match_parameters!r}'s whole encoder "
                         f"at max_len={max_len}: no feed-forward width matches")
    return width


def encoder_config(name: str, cfg: MixersConfig, *, vocab_size: int, max_len: int) -> TransformerConfig:
    """The shared encoder's config with token mixer ``name`` (pre-LN, learned positions).

    The feed-forward width is ``cfg.ffn_dim``, or with ``cfg.match_parameters``
    the :func:`matched_ffn_dim` of ``name`` at ``max_len``.
    """
    if name not in MIXERS:
        raise ValueError(f"name must be one of {sorted(MIXERS)}, got {name!r}")
    return _encoder_config(name, cfg, matched_ffn_dim(name, cfg, max_len), vocab_size, max_len)


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


# --------------------------------------------------------------------------- independent checks


def value_jacobian_matrix(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The token matrix read off ``forward`` by autograd, without calling ``token_matrix``.

    For a Synthesizer (``O = W_o merge_h(A^h V^h) + b_o``, ``V = value(X)``) the
    Jacobian of output token ``i`` with respect to value token ``j`` is
    ``W_o blockdiag_h(A^h_ij I)``. A forward hook turns ``value``'s output into a
    leaf; ``W_o^{-1} J_ij`` gives ``A^h_ij`` as the mean of head ``h``'s diagonal block.
    Returns ``(A (batch, heads, n, n), residual)``: the largest entry of
    ``J - W_o blockdiag(A I)``, zero when the output is linear in ``V`` through one
    matrix per head.
    """
    b, n, d = x.shape
    h = module.heads
    leaf = {}

    def hook(mod, inputs, out):
        leaf["v"] = out.detach().requires_grad_(True)
        return leaf["v"]

    handle = module.value.register_forward_hook(hook)
    try:
        out = module(x)
    finally:
        handle.remove()
    rows = []
    for flat in range(b * n * d):
        (g,) = torch.autograd.grad(out.reshape(-1)[flat], leaf["v"], retain_graph=True)
        rows.append(g)
    jac = torch.stack(rows).reshape(b, n, d, b, n, d)
    jac = torch.stack([jac[k, :, :, k] for k in range(b)])  # (b, n_out, d_out, n_in, d_in)
    w_inv = torch.linalg.inv(module.output.weight.to(x.dtype))
    core = torch.einsum("po,bioje->bijpe", w_inv, jac)  # W_o^{-1} J_ij: block-diagonal (d, d)
    dh = d // h
    blocks = core.unflatten(-1, (h, dh)).unflatten(-3, (h, dh))  # (b, i, j, h, dh, h', dh')
    a = torch.stack([blocks[..., k, :, k, :].diagonal(dim1=-2, dim2=-1).mean(-1) for k in range(h)], dim=1)
    eye = torch.eye(dh, dtype=x.dtype)
    rebuilt = torch.einsum("bhij,hk,pq->bijhpkq", a, torch.eye(h, dtype=x.dtype), eye).reshape(b, n, n, d, d)
    residual = (core - rebuilt).abs().max().item()
    return a, residual


def synthesizer_dense_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eq. ``ch05-synth-dense`` from the parameters alone: ``softmax(relu(x W_1 + b_1) W_2 + b_2)``.

    Written with explicit products (no call to the module), for an unmasked input:
    ``(batch, heads, n, n)``.
    """
    n = x.shape[1]
    w1, b1 = module.hidden_layer.weight, module.hidden_layer.bias
    w2, b2 = module.logit_layer.weight, module.logit_layer.bias
    logits = torch.clamp(x @ w1.T + b1, min=0.0) @ w2.T + b2  # (b, n, h * L)
    logits = logits.reshape(x.shape[0], n, module.heads, module.seq_len)[..., :n]
    e = torch.exp(logits - logits.amax(-1, keepdim=True))
    return (e / e.sum(-1, keepdim=True)).permute(0, 2, 1, 3)


def ea_cross_jacobian(module: nn.Module, x: torch.Tensor, i: int, j: int) -> dict[str, torch.Tensor]:
    """How External Attention (one head, double normalisation, no mask) couples tokens.

    Output token ``i`` depends on the other tokens only through the ``S`` column
    log-normalisers ``z_s = log sum_k exp(alpha~_ks)`` (Eq. ``ch05-ea``). Returns the
    autograd Jacobian ``d O_i / d x_j`` of the module (``"direct"``, ``(d, d)``) and
    the same Jacobian by the chain rule through ``z`` only
    (``"through_z" = dO_i/dz . dz/dx_j``), both for one sample ``x`` of shape ``(n, d)``.
    """
    if module.heads != 1 or module.normalisation != "double":
        raise ValueError("ea_cross_jacobian expects one head and normalisation='double'")
    mk, mv = module.memory_key[0], module.memory_value[0]

    def logits(xx):
        return (xx @ module.query.weight.T + module.query.bias) @ mk.T  # (n, S) or (S,)

    def out_i(xi, z):  # output token i from its own input and the column normalisers
        hat = torch.exp(logits(xi) - z)
        alpha = hat / (module.eps + hat.sum())
        return alpha @ mv @ module.output.weight.T + module.output.bias

    def z_of(xx):
        return torch.logsumexp(logits(xx), dim=0)  # (S,)

    direct = torch.autograd.functional.jacobian(lambda xj: module(_replace_row(x, j, xj)[None])[0, i], x[j])
    z = z_of(x)
    d_out_dz = torch.autograd.functional.jacobian(lambda zz: out_i(x[i], zz), z)  # (d, S)
    d_z_dxj = torch.autograd.functional.jacobian(lambda xj: z_of(_replace_row(x, j, xj)), x[j])  # (S, d)
    return {"direct": direct, "through_z": d_out_dz @ d_z_dxj, "d_out_dz": d_out_dz}


def _replace_row(x: torch.Tensor, j: int, row: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[:j], row[None], x[j + 1:]], dim=0)


class MadeTokenMLP(nn.Module):
    """A causal MLP-Mixer token MLP: MADE masks on ``W_1`` and ``W_2`` (Eq. ``ch05-made``).

    Hidden unit ``k`` gets a degree ``m_k`` in ``1..L``; ``W_1`` keeps the entries with
    input position ``j <= m_k``, ``W_2`` those with ``m_k <= i``, so output ``i`` reads
    input ``j`` only through units with ``j <= m_k <= i``: never a later position.
    ``masked=False`` drops the masks (the plain, non-causal token MLP).
    """

    def __init__(self, seq_len: int, hidden: int, *, masked: bool = True, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        degree = torch.randint(1, seq_len + 1, (hidden,), generator=g)
        pos = torch.arange(1, seq_len + 1)
        ones = torch.ones(hidden, seq_len)
        self.register_buffer("mask1", (pos[None, :] <= degree[:, None]).float() if masked else ones)
        self.register_buffer("mask2", (degree[None, :] <= pos[:, None]).float() if masked else ones.T)
        self.w1 = nn.Parameter(torch.randn(hidden, seq_len) / seq_len**0.5)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(seq_len, hidden) / hidden**0.5)
        self.b2 = nn.Parameter(torch.zeros(seq_len))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, L, dim) -> (batch, L, dim)``: ``W_2 GELU(W_1 X + b_1) + b_2`` with masked weights."""
        h = F.gelu(torch.einsum("kj,bjc->bkc", self.w1 * self.mask1, x) + self.b1[:, None])
        return torch.einsum("ik,bkc->bic", self.w2 * self.mask2, h) + self.b2[:, None]


def future_dependence(module: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Autograd Jacobian of ``module`` over tokens: ``(max |dO_i/dx_j|, j > i; same, j <= i)``."""
    jac = torch.autograd.functional.jacobian(module, x[:1])[0, :, :, 0]  # (n, d, n, d)
    per_pair = jac.abs().amax(dim=(1, 3))  # (n_out, n_in)
    later = torch.ones_like(per_pair, dtype=torch.bool).triu(1)
    return per_pair[later].max().item(), per_pair[~later].max().item()


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
