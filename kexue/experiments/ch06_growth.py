"""Chapter 06 experiment: does growing a Transformer pay off? (book section 10 of ``06_lossless_growth``)

Masked-character modelling (:mod:`kexue.mlm`) on the real Chinese STS-B
sentences: the train split for training, the validation split for a held-out
loss with fixed masks. A small ``MaskedLM`` trains for ``small_steps``; then,
at equal data order, four runs continue for ``big_steps``:

* ``small``: the small model itself;
* ``grown``: :func:`kexue.growth.widen` by ``factor``, no noise (exact);
* ``grown+noise``: ``widen(noise=...)``, exact and symmetry-breaking;
* ``net2net``: exact copies, then i.i.d. :func:`kexue.growth.perturb` (not exact);

and ``scratch``, the big model from random initialisation, trains for as many
steps as the grown runs' total FLOPs (:func:`flops_per_token`) pay for. Every
run is :func:`kexue.experiments.loop.fit` with AdamW (weight decay 0.01), a
10-step linear warm-up then a constant learning rate, and no dropout; the
evaluation hook records the held-out loss, the cumulative FLOPs and the
:func:`kexue.growth.symmetry_gap`.

The module also holds the helpers of the chapter's smaller checks:
:func:`unused_rope_rows` (the empty RoPE pairs of section 6), :func:`copy_coefficients`
and :func:`adam_twin_groups` (Adam after growth, section 9).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from kexue import checks
from kexue.data import load_sts_b
from kexue.experiments.config import Profiles
from kexue.experiments.loop import fit
from kexue.experiments.records import RunResult, fingerprint
from kexue.growth import Expansion, perturb, symmetry_gap, widen
from kexue.mlm import MLMBatch, corrupt, mean_mlm_loss, mlm_loss, seed_from
from kexue.nn import MaskedLM, TransformerConfig, TransformerEncoder
from kexue.tokenizer import CharTokenizer
from kexue.utils import get_device, seed_everything

__all__ = [
    "GrowthConfig",
    "CONFIGS",
    "flops_per_token",
    "GrowthData",
    "sts_b_sentences",
    "prepare_data",
    "model_configs",
    "TrainRecord",
    "train_mlm",
    "run",
    "unused_rope_rows",
    "copy_coefficients",
    "adam_twin_groups",
]


@dataclass(frozen=True)
class GrowthConfig:
    """The grow-then-train experiment (MLM on Chinese STS-B sentences)."""

    small_dim: int = 32  # hidden size of the small model; the big one is factor x larger
    depth: int = 2  # blocks (width growth keeps depth)
    heads: int = 2  # attention heads (heads="size": head size grows)
    factor: int = 2  # width factor k
    max_len: int = 32  # characters per sentence (longer ones are cut)
    batch_size: int = 64  # sentences per step
    small_steps: int = 100  # steps of the small model before growth
    big_steps: int = 100  # steps after growth (and of the small model's continuation)
    lr: float = 2e-3  # AdamW peak learning rate (constant after the warm-up)
    warmup: int = 10  # linear warm-up steps of every run
    weight_decay: float = 0.01
    noise: float = 0.1  # relative noise of widen(noise=...) and of Net2Net-style perturb
    eval_every: int = 20  # steps between validation evaluations
    eval_sentences: int = 256  # validation sentences (fixed masks)
    mask_rate: float = 0.15  # fraction of characters masked
    min_count: int = 2  # minimum character count for the vocabulary
    norm: str = "pre"
    position: str = "rotary"

    def __post_init__(self) -> None:
        for name in ("small_dim", "depth", "heads", "max_len", "batch_size", "small_steps", "big_steps",
                     "eval_every", "eval_sentences", "min_count"):
            checks.positive_int(name, getattr(self, name))
        checks.int_at_least("factor", self.factor, 2)
        checks.nonnegative_int("warmup", self.warmup)
        checks.positive_float("lr", self.lr)
        checks.float_in("noise", self.noise, 0.0, math.inf)
        checks.float_in("mask_rate", self.mask_rate, 0.0, 1.0)


#: smoke: the notebook's run (about half a minute on CPU); book: a 64 -> 128 run of 600 + 600
#: steps (several CPU minutes per seed), recorded with ``python -m kexue.experiments 06 --profile book --seeds 0 1 2``;
#: full: 128 -> 256, 3,000 + 3,000 steps (a GPU run).
CONFIGS: Profiles[GrowthConfig] = Profiles(
    smoke=GrowthConfig(),
    book=GrowthConfig(
        small_dim=64, max_len=48, small_steps=600, big_steps=600, lr=1e-3, eval_every=50, eval_sentences=1000,
    ),
    full=GrowthConfig(
        small_dim=128, depth=4, heads=4, max_len=64, batch_size=128, small_steps=3000, big_steps=3000,
        lr=7e-4, eval_every=100, eval_sentences=2000,
    ),
)


def flops_per_token(config: TransformerConfig, seq_len: int, *, mlm_head: bool = True) -> float:
    """Training FLOPs per token: 3 x (forward multiply-adds x 2).

    Forward per token and block: ``2 (4 d^2 + 2 d f)`` for the projections and
    ``2 (2 n d)`` for scores and the weighted sum; plus ``2 (d^2 + d V)`` for the MLM
    head. Backward is counted as twice the forward (the usual ``6 N`` rule).
    """
    d, f, n = config.dim, config.ffn_dim, seq_len
    forward = config.depth * (2 * (4 * d * d + 2 * d * f) + 4 * n * d)
    if mlm_head:
        forward += 2 * (d * d + d * config.vocab_size)
    return 3.0 * forward


# ----------------------------------------------------------------------------- data
@dataclass
class GrowthData:
    """Padded training sentences and the fixed, already corrupted validation batches."""

    ids: torch.Tensor  # (sentences, max_len) with [CLS] ... [SEP]
    mask: torch.Tensor
    eval_batches: list[MLMBatch]
    mask_id: int
    vocab_size: int


def sts_b_sentences() -> tuple[list[str], list[str]]:
    """The distinct sentences of the Chinese STS-B train and validation splits, sorted."""
    train = sorted({s for a, b, _ in load_sts_b("train") for s in (a, b)})
    valid = sorted({s for a, b, _ in load_sts_b("valid") for s in (a, b)})
    return train, valid


def prepare_data(
    cfg: GrowthConfig,
    train_sentences: Sequence[str],
    val_sentences: Sequence[str],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> GrowthData:
    """Character vocabulary from the training sentences; validation masks drawn from ``seed + 1000``."""
    tokenizer = CharTokenizer.build(train_sentences, min_count=cfg.min_count)
    ids, mask = tokenizer(list(train_sentences), cfg.max_len, pad_to_max=True)
    val_ids, val_mask = tokenizer(list(val_sentences)[: cfg.eval_sentences], cfg.max_len, pad_to_max=True)
    g = torch.Generator().manual_seed(seed + 1000)
    eval_batches = [
        corrupt(val_ids[i : i + 256], val_mask[i : i + 256], mask_id=tokenizer.mask_id,
                vocab_size=tokenizer.vocab_size, mask_prob=cfg.mask_rate, generator=g, device=device)
        for i in range(0, len(val_ids), 256)
    ]
    return GrowthData(ids, mask, eval_batches, tokenizer.mask_id, tokenizer.vocab_size)


def model_configs(cfg: GrowthConfig, vocab_size: int) -> tuple[TransformerConfig, TransformerConfig]:
    """``(small, big)``: the small model and the big one ``widen`` makes of it (no dropout)."""
    small = TransformerConfig(
        vocab_size=vocab_size, dim=cfg.small_dim, depth=cfg.depth, heads=cfg.heads,
        ffn_dim=4 * cfg.small_dim, max_len=cfg.max_len, dropout=0.0, attention_dropout=0.0,
        norm=cfg.norm, position=cfg.position,
    )
    k = cfg.factor
    return small, replace(small, dim=k * cfg.small_dim, ffn_dim=4 * k * cfg.small_dim)


# ----------------------------------------------------------------------------- training
@dataclass
class TrainRecord:
    """Validation MLM loss against optimisation steps and cumulative training FLOPs."""

    name: str
    steps: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    symmetry_gap: list[float] = field(default_factory=list)


def train_mlm(
    model: MaskedLM,
    data: GrowthData,
    cfg: GrowthConfig,
    *,
    steps: int,
    data_seed: int,
    record: TrainRecord,
    step_offset: int = 0,
    flops_offset: float = 0.0,
    eval_at_start: bool = True,
    gap: Callable[[nn.Module], float] | None = None,
) -> TrainRecord:
    """``steps`` MLM steps through :func:`fit`; appends the evaluations to ``record``.

    Step ``s`` draws ``batch_size`` training sentences (with replacement) and
    BERT's masks from a generator seeded by ``(data_seed, s)``, so runs with one
    ``data_seed`` see the same data in the same order. AdamW, ``cfg.warmup``
    linear warm-up steps, then the constant ``cfg.lr``. Evaluations (at step 0
    with ``eval_at_start``, every ``eval_every`` steps and at the end) record
    the held-out loss, the FLOPs so far (:func:`flops_per_token` on the real,
    unpadded tokens of each batch) and ``gap(model)`` when given.
    """
    device = next(model.parameters()).device
    step_flops: list[float] = []

    def batch_at(step: int) -> MLMBatch:
        g = torch.Generator().manual_seed(seed_from(data_seed, step))
        rows = torch.randint(0, data.ids.shape[0], (cfg.batch_size,), generator=g)
        mask = data.mask[rows]
        width = int(mask.sum(1).max())
        step_flops.append(flops_per_token(model.config, width) * float(mask.sum()))
        return corrupt(data.ids[rows, :width], mask[:, :width], mask_id=data.mask_id, vocab_size=data.vocab_size,
                       mask_prob=cfg.mask_rate, generator=g, device=device)

    def evaluate(m: nn.Module) -> dict[str, float]:
        out = {"val_loss": mean_mlm_loss(m, data.eval_batches), "flops": flops_offset + sum(step_flops)}
        if gap is not None:
            out["symmetry_gap"] = gap(m)
        return out

    history = fit(
        model, batch_at, lambda m, batch: mlm_loss(m, *batch), steps=steps, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup=cfg.warmup, schedule="constant", evaluate=evaluate,
        eval_every=cfg.eval_every, eval_at_start=eval_at_start, desc=record.name,
    )
    for e in history.evals:
        record.steps.append(step_offset + int(e["step"]))
        record.flops.append(e["flops"])
        record.val_loss.append(e["val_loss"])
        if "symmetry_gap" in e:
            record.symmetry_gap.append(e["symmetry_gap"])
    return record


def run(cfg: GrowthConfig, seed: int = 0) -> RunResult:
    """Small model, then four continuations, against a big model from scratch at equal FLOPs.

    ``artifacts``: ``records`` (name -> :class:`TrainRecord`), the trained
    ``models``, ``small_config`` and ``big_config``, ``vocab_size``,
    ``scratch_steps`` and the sentence counts. ``metrics``: each run's final
    held-out loss, how far the grown runs start from the small model's loss
    (zero for lossless growth), the symmetry gaps and, with rotary positions,
    the largest entry of the grown runs' empty RoPE rows (:func:`unused_rope_rows`).
    """
    device = get_device()
    train_sentences, val_sentences = sts_b_sentences()
    data = prepare_data(cfg, train_sentences, val_sentences, seed=seed, device=device)
    small_cfg, big_cfg = model_configs(cfg, data.vocab_size)
    k = cfg.factor

    def gap(m: nn.Module) -> float:
        return symmetry_gap(m, k)

    seed_everything(seed)
    small = MaskedLM(small_cfg).to(device)
    records = {"small": TrainRecord("small")}
    train_mlm(small, data, cfg, steps=cfg.small_steps, data_seed=seed, record=records["small"])
    snapshot = copy.deepcopy(small)
    grown_at = (records["small"].steps[-1], records["small"].flops[-1])
    start_loss = records["small"].val_loss[-1]
    continuation = dict(data_seed=seed + 1, step_offset=grown_at[0], flops_offset=grown_at[1])
    # the small model continues (does the big one ever beat it?) on the grown runs' data
    train_mlm(small, data, cfg, steps=cfg.big_steps, record=records["small"], eval_at_start=False, **continuation)
    models: dict[str, nn.Module] = {"small": small}
    variants = {
        "grown": lambda: widen(snapshot, k),
        "grown+noise": lambda: widen(snapshot, k, noise=cfg.noise, generator=torch.Generator().manual_seed(seed)),
        "net2net": lambda: perturb(widen(snapshot, k, convention="copy"), cfg.noise,
                                   torch.Generator().manual_seed(seed)),
    }
    for name, make in variants.items():
        models[name] = make()
        records[name] = train_mlm(models[name], data, cfg, steps=cfg.big_steps, record=TrainRecord(name),
                                  gap=gap if name != "net2net" else None, **continuation)
    # equal total compute: the small phase plus the grown phase, in big-model steps
    budget = records["grown"].flops[-1]
    per_step_big = (records["grown"].flops[-1] - records["grown"].flops[0]) / cfg.big_steps
    scratch_steps = max(cfg.big_steps, int(round(budget / per_step_big)))
    seed_everything(seed)
    models["scratch"] = MaskedLM(big_cfg).to(device)
    records["scratch"] = train_mlm(models["scratch"], data, cfg, steps=scratch_steps, data_seed=seed,
                                   record=TrainRecord("scratch"))
    metrics = {f"final_loss_{name.replace('+', '_')}": rec.val_loss[-1] for name, rec in records.items()}
    metrics.update(
        loss_at_growth=start_loss,
        start_gap_grown=abs(records["grown"].val_loss[0] - start_loss),
        start_gap_grown_noise=abs(records["grown+noise"].val_loss[0] - start_loss),
        max_symmetry_gap_grown=max(records["grown"].symmetry_gap),
        final_symmetry_gap_grown_noise=records["grown+noise"].symmetry_gap[-1],
        flops_budget=budget,
        scratch_steps=float(scratch_steps),
    )
    if cfg.position == "rotary":  # the empty RoPE pairs of widen(heads="size"): a saddle without noise
        for name in ("grown", "grown+noise"):
            rows = unused_rope_rows(models[name], k)
            metrics[f"max_unused_rope_row_{name.replace('+', '_')}"] = max(float(r.abs().max()) for r in rows.values())
    return RunResult(
        metrics=metrics,
        artifacts={
            "records": records,
            "models": models,
            "small_config": small_cfg,
            "big_config": big_cfg,
            "vocab_size": data.vocab_size,
            "scratch_steps": scratch_steps,
            "train_sentences": len(train_sentences),
            "val_sentences": len(val_sentences),
        },
        data={
            "sts_b_train_sentences": fingerprint(train_sentences),
            "sts_b_valid_sentences": fingerprint(list(val_sentences)[: cfg.eval_sentences]),
        },
    )


# ----------------------------------------------------------------------------- checks of sections 6, 7 and 9
def unused_rope_rows(model: TransformerEncoder | MaskedLM, factor: int) -> dict[str, torch.Tensor]:
    """The query and key rows that ``widen(heads="size")`` leaves empty under rotary positions.

    ``widen`` writes pair ``i`` of a small head into pair ``k i`` of the grown head
    (Eq. ``ch06-rope``); the other ``k - 1`` pairs of every ``k`` start with zero
    query and key rows. Returns detached copies of those rows (weights and
    biases, all blocks, flattened): ``{"query": ..., "key": ...}``.
    """
    encoder = model.encoder if isinstance(model, MaskedLM) else model
    if not isinstance(encoder, TransformerEncoder):
        raise ValueError(f"model must be a kexue.nn TransformerEncoder or MaskedLM, got {type(model).__name__}")
    factor = checks.int_at_least("factor", factor, 2)
    cfg = encoder.config
    if cfg.position != "rotary" or cfg.dim % (2 * factor) or cfg.mixer != "attention":
        raise ValueError(f"model must use rotary attention with dim divisible by 2 x factor={factor}")
    empty = Expansion((1.0,) + (0.0,) * (factor - 1), group=2).zero_mask(cfg.dim // factor)
    rows: dict[str, list[torch.Tensor]] = {"query": [], "key": []}
    for block in encoder.blocks:
        for name in rows:
            linear = getattr(block.attention, name)
            rows[name] += [linear.weight[empty].flatten(), linear.bias[empty]]
    return {name: torch.cat(parts).detach().clone() for name, parts in rows.items()}


def copy_coefficients(small: nn.Module, factor: int, **widen_options: Any) -> dict[str, tuple[float, int]]:
    """``(c, m)`` per parameter of ``small``: ``widen`` stores each entry as ``m`` copies ``c theta``.

    Read off ``widen`` itself (noise must be 0): a twin of ``small`` with every
    parameter set to 1 is widened; its non-zero entries are the coefficients.
    Raises ``ValueError`` if a tensor's copies carry unequal non-zero
    coefficients (then no single ``c`` exists). ``m c^2`` is
    :func:`kexue.growth.growth_gains`.
    """
    if widen_options.get("noise", 0.0):
        raise ValueError("copy_coefficients describes noiseless growth: do not pass noise")
    ones = copy.deepcopy(small)
    with torch.no_grad():
        for p in ones.parameters():
            p.fill_(1.0)
    grown = dict(widen(ones, factor, **widen_options).named_parameters())
    out: dict[str, tuple[float, int]] = {}
    for name, p in ones.named_parameters():
        values = grown[name].detach()[grown[name] != 0]
        c = float(values[0])
        if not torch.allclose(values, torch.full_like(values, c), rtol=1e-12, atol=0.0):
            raise ValueError(f"{name}: copies with unequal coefficients")
        out[name] = (c, values.numel() // p.numel())
    return out


def adam_twin_groups(
    small: nn.Module,
    factor: int,
    *,
    lr: float,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    **widen_options: Any,
) -> list[dict[str, Any]]:
    """AdamW parameter groups for ``small`` that reproduce ``AdamW(lr, eps, weight_decay)`` on its widening.

    Per tensor with copies ``c theta`` (``m`` of them): learning rate ``lr / c``,
    epsilon ``m c eps`` and weight decay ``c weight_decay`` (Eq. ``ch06-adam``).
    """
    coeffs = copy_coefficients(small, factor, **widen_options)
    groups = []
    for name, p in small.named_parameters():
        c, m = coeffs[name]
        groups.append({"params": [p], "lr": lr / c, "eps": m * c * eps, "weight_decay": c * weight_decay})
    return groups
