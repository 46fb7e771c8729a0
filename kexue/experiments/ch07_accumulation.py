"""Chapter 07's experiments: exact gradient accumulation for SimCSE on the character BERT.

* :func:`run`: unsupervised SimCSE fine-tuning of the shipped character BERT with
  a small batch (an ordinary full-batch step) and with a large batch whose
  gradient comes from :func:`kexue.accumulation.contrastive_backward`, scored by
  the Spearman correlation on the Chinese STS-B test pairs (section
  "Experiment: SimCSE with a large batch").
* :func:`activation_peak` and :func:`plot_memory`: the memory curve of section
  "Cost and memory".
* :func:`misscaled_gradient_updates`: what a gradient ``k`` times too large on one
  parameter does to Adam, SGD, gradient clipping and the logged norm (section "A
  parameter inside the loss").
* :func:`run_distributed_check`: the two-process gloo check of section "Many
  processes", with :func:`spawn_gloo`, a small harness for CPU process groups.

``python -m kexue.experiments 07 --profile full --seeds 0 1 2`` records the
experiment over three seeds.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from kexue import checks
from kexue.accumulation import (
    LogitScale,
    SavedTensorMeter,
    SentenceEncoder,
    all_gather_with_grad,
    contrastive_backward,
    distributed_contrastive_backward,
    full_batch_backward,
    simcse_loss,
)
from kexue.data import load_sts_b
from kexue.experiments.config import Profiles
from kexue.experiments.records import RunResult, fingerprint
from kexue.experiments.simcse_training import pair_rows, train_simcse
from kexue.nn import MaskedLM, TransformerConfig, TransformerEncoder
from kexue.plot import figure
from kexue.pretrained import load_zh_char_bert
from kexue.simcse import sts_spearman
from kexue.tokenizer import CharTokenizer
from kexue.utils import get_device

__all__ = [
    "AccumulationConfig",
    "CONFIGS",
    "run",
    "load_model",
    "load_sentence_encoder",
    "pair_rows",
    "sts_score",
    "activation_peak",
    "misscaled_gradient_updates",
    "plot_memory",
    "memory_curve",
    "plot_losses",
    "spawn_gloo",
    "build_check_model",
    "run_distributed_check",
]


@dataclass(frozen=True)
class AccumulationConfig:
    """Sizes of the chapter's experiment. Batches count *sentences*; each gives two rows (two dropout views).

    The model fields (``dim`` ... ``ffn_dim``) are those of the shipped character BERT
    (:func:`kexue.pretrained.load_zh_char_bert`); they are used when an encoder of the same
    shape is built from scratch (tests, the benchmark). The experiment fine-tunes the shipped
    weights with ``dropout`` / ``attention_dropout`` as SimCSE's augmentation, AdamW at a
    constant ``lr``.
    """

    dim: int = 256  # hidden size of the character BERT
    depth: int = 4  # Transformer blocks
    heads: int = 4  # attention heads
    ffn_dim: int = 1024  # feed-forward width
    dropout: float = 0.1  # hidden dropout: SimCSE's augmentation
    attention_dropout: float = 0.1  # dropout on attention probabilities
    max_chars: int = 20  # sentences are cut to this many tokens ([CLS] and [SEP] included)
    temperature: float = 0.05  # SimCSE's tau
    lr: float = 5e-5  # AdamW learning rate (constant)
    steps: int = 6  # optimiser steps per training run (both batch sizes)
    small_batch: int = 8  # sentences per step, plain full-batch training
    large_batch: int = 24  # sentences per step, through contrastive_backward
    micro_batch: int = 8  # sentences per micro-batch of the large run (2x rows; the last may be smaller)
    eval_pairs: int = 150  # STS-B test pairs scored (1361 = all)
    memory_batches: tuple[int, ...] = (4, 8, 16)  # sentences per batch in the memory curve
    memory_micro_batch: int = 4  # sentences per micro-batch in the memory curve

    def __post_init__(self) -> None:
        for name in ("steps", "small_batch", "large_batch", "micro_batch", "eval_pairs", "max_chars",
                     "memory_micro_batch"):
            checks.positive_int(name, getattr(self, name))
        if self.small_batch < 2 or self.large_batch < 2:
            raise ValueError("small_batch and large_batch must hold at least 2 sentences (in-batch negatives)")
        if any(b % self.memory_micro_batch for b in self.memory_batches):
            raise ValueError(
                f"memory_micro_batch ({self.memory_micro_batch}) must divide every memory batch {self.memory_batches}"
            )

    def encoder_config(self, vocab_size: int) -> dict[str, Any]:
        """Keyword arguments of :class:`kexue.nn.TransformerConfig` for an encoder of this shape."""
        return dict(vocab_size=vocab_size, dim=self.dim, depth=self.depth, heads=self.heads, ffn_dim=self.ffn_dim,
                    max_len=max(self.max_chars, 128), dropout=self.dropout, attention_dropout=self.attention_dropout)


#: ``smoke``: a minute on a CPU; ``book``: the whole test set, batch 32 vs 128, 120 steps
#: (recorded with seeds 0 1 2 on one CPU thread); ``full``:
#: SimCSE's batch 64 vs 512 on a GPU.
CONFIGS = Profiles(
    smoke=AccumulationConfig(),
    book=AccumulationConfig(max_chars=32, lr=3e-5, steps=120, small_batch=32, large_batch=128, micro_batch=32,
                            eval_pairs=1361, memory_batches=(8, 16, 32, 64, 128), memory_micro_batch=8),
    full=AccumulationConfig(max_chars=64, lr=3e-5, steps=500, small_batch=64, large_batch=512, micro_batch=64,
                            eval_pairs=1361, memory_batches=(64, 128, 256, 512, 1024, 2048), memory_micro_batch=64),
)


# ---------------------------------------------------------------------------
# the experiment: SimCSE fine-tuning of the character BERT, STS-B Spearman
# ---------------------------------------------------------------------------
def load_model(
    cfg: AccumulationConfig, path: str | Path | None = None, *, device: torch.device | str | None = None
) -> tuple[MaskedLM, CharTokenizer]:
    """The shipped character BERT with the config's dropout rates, and its tokenizer."""
    return load_zh_char_bert(path, device=device, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout)


def load_sentence_encoder(
    cfg: AccumulationConfig, path: str | Path | None = None, *, device: torch.device | str | None = None
) -> tuple[SentenceEncoder, CharTokenizer]:
    """The shipped character BERT as a mean-pooling :class:`SentenceEncoder` in train mode, and its tokenizer."""
    model, tokenizer = load_model(cfg, path, device=device)
    encoder = SentenceEncoder(model.encoder, pooling="mean", pad_token_id=tokenizer.pad_id).train()
    return encoder, tokenizer


def sts_score(
    model: MaskedLM | TransformerEncoder, tokenizer: CharTokenizer, pairs: Sequence[tuple[str, str, float]],
    max_chars: int,
) -> float:
    """Spearman correlation of the mean-pooled (``last-avg``) cosine with the gold scores, no whitening."""
    return sts_spearman(model, tokenizer, pairs, ("last-avg",), max_len=max_chars)["raw"]["last-avg"]


def train_sentences() -> list[str]:
    """The unlabelled training sentences: every distinct sentence of the STS-B training pairs, sorted."""
    return sorted({s for a, b, _ in load_sts_b("train") for s in (a, b)})


def run(cfg: AccumulationConfig, seed: int = 0) -> RunResult:
    """SimCSE with a small batch and with a large accumulated batch, same seed and step count.

    Metrics: ``spearman_before``, ``spearman_small``, ``spearman_large`` (test Spearman of
    the mean-pooled cosine), and the activation-memory curve of :func:`memory_curve`,
    ``memory_full_<b>`` and ``memory_twopass_<b>`` (MiB saved for backward, weights
    excluded) for each ``b`` of ``cfg.memory_batches``. Artifacts: ``spearman`` and
    ``losses`` keyed by run label, ``seconds`` per run.
    """
    device = get_device()
    sentences = train_sentences()
    test_pairs = load_sts_b("test")[: cfg.eval_pairs]
    model, tokenizer = load_model(cfg, device=device)
    spearman = {"before training": sts_score(model, tokenizer, test_pairs, cfg.max_chars)}
    losses: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    runs = [("small", f"batch {cfg.small_batch}", cfg.small_batch, None),
            ("large", f"batch {cfg.large_batch} (two-pass)", cfg.large_batch, cfg.micro_batch)]
    metrics = {"spearman_before": spearman["before training"]}
    for key, label, batch, micro in runs:
        model, _ = load_model(cfg, device=device)
        result = train_simcse(
            model, tokenizer, sentences, pooling="last-avg", batch_size=batch, steps=cfg.steps, lr=cfg.lr,
            temperature=cfg.temperature, max_len=cfg.max_chars, optimizer="adamw", micro_batch_size=micro,
            seed=seed,
        )
        losses[label], seconds[label] = result.losses, result.seconds
        spearman[label] = metrics[f"spearman_{key}"] = sts_score(model, tokenizer, test_pairs, cfg.max_chars)
    metrics.update(memory_curve(cfg, device=device))
    return RunResult(
        metrics=metrics,
        artifacts={"spearman": spearman, "losses": losses, "seconds": seconds},
        data={"sts_b_train_sentences": fingerprint(sentences), "sts_b_test": fingerprint(test_pairs)},
    )


# ---------------------------------------------------------------------------
# memory and plots
# ---------------------------------------------------------------------------
def activation_peak(
    method: Callable[..., Tensor], encoder: nn.Module, inputs: Tensor | Sequence[Tensor],
    loss_fn: Callable[..., Tensor], micro_batch_size: int,
) -> int:
    """Peak bytes saved for backward (weights excluded) during one ``method(...)`` call; grads are reset."""
    encoder.zero_grad(set_to_none=True)
    with SavedTensorMeter(exclude=encoder.parameters()) as meter:
        method(encoder, inputs, loss_fn, micro_batch_size)
    encoder.zero_grad(set_to_none=True)
    return meter.peak


def memory_curve(cfg: AccumulationConfig, *, device: torch.device | None = None) -> dict[str, float]:
    """Activation memory against batch size: ``memory_full_<b>`` and ``memory_twopass_<b>`` in MiB.

    For each ``b`` of ``cfg.memory_batches``, the peak bytes autograd saves for backward
    (weights excluded, :func:`activation_peak`) in one full-batch step and in one two-pass
    step with micro-batches of ``cfg.memory_micro_batch`` sentences, on the shipped encoder
    in float32, sentences padded to ``cfg.max_chars`` so only the row count changes.
    """
    encoder, tokenizer = load_sentence_encoder(cfg, device=device)
    sentences = train_sentences()
    out = {}
    for b in cfg.memory_batches:
        batch = pair_rows(tokenizer, sentences[:b], cfg.max_chars, pad_to_max=True).to(device or get_device())
        for key, method in (("full", full_batch_backward), ("twopass", contrastive_backward)):
            peak = activation_peak(method, encoder, batch, simcse_loss, 2 * cfg.memory_micro_batch)
            out[f"memory_{key}_{b}"] = peak / 2**20
    return out


def misscaled_gradient_updates(
    k: float, *, steps: int = 5, lr: float = 1e-2, clip_norm: float = 1.0, others: int = 32, seed: int = 0
) -> list[dict[str, Any]]:
    """Replay ``steps`` fixed float64 gradients for a scalar ``scale`` and ``others`` other
    parameters, once as they are and once with the scale's gradient times ``k``.

    One row per optimiser (Adam, SGD; each without and with ``clip_grad_norm_``):
    ``scale_update`` = scale's displacement with ``k`` / without, ``others_update`` =
    ``|displacement of the others with k| / |without|``, ``logged_norm`` = mean
    pre-clipping gradient norm with ``k`` / without. Adam divides each coordinate by the
    root of its own second moment, so a constant factor on one parameter cancels up to
    its ``eps``; SGD moves that parameter ``k`` times as far; clipping by the global norm
    lets the inflated gradient shrink every other parameter's step.
    """
    k = checks.positive_float("k", k)
    checks.positive_int("steps", steps)
    gen = torch.Generator().manual_seed(checks.nonnegative_int("seed", seed))
    grads = [(torch.randn(1, generator=gen, dtype=torch.float64),
              torch.randn(checks.positive_int("others", others), generator=gen, dtype=torch.float64))
             for _ in range(steps)]

    def replay(optimizer: str, factor: float, clip: bool) -> tuple[Tensor, Tensor, float]:
        scale = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        rest = torch.zeros(others, dtype=torch.float64, requires_grad=True)
        opt = (torch.optim.Adam if optimizer == "Adam" else torch.optim.SGD)([scale, rest], lr=lr)
        norms = []
        for g_scale, g_rest in grads:
            scale.grad, rest.grad = factor * g_scale, g_rest.clone()
            norms.append(float(torch.cat([scale.grad, rest.grad]).norm()))
            if clip:
                torch.nn.utils.clip_grad_norm_([scale, rest], clip_norm)
            opt.step()
        return scale.detach(), rest.detach(), sum(norms) / len(norms)

    rows = []
    for optimizer in ("Adam", "SGD"):
        for clip in (False, True):
            s1, r1, n1 = replay(optimizer, 1.0, clip)
            sk, rk, nk = replay(optimizer, k, clip)
            rows.append(dict(optimizer=optimizer, clip=clip, scale_update=float(sk / s1),
                             others_update=float(rk.norm() / r1.norm()), logged_norm=nk / n1))
    return rows


def plot_memory(batches: Sequence[int], curves: dict[str, Sequence[float]], micro_batch: int):
    """Activation MiB against sentences per batch, one line per method."""
    fig, ax = figure(1, 1, width=6.0, height=3.5)
    for name, values in curves.items():
        ax.plot(list(batches), list(values), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sentences per batch (two rows each)")
    ax.set_ylabel("peak saved activations (MiB)")
    ax.set_title(f"Activation memory, micro-batch = {micro_batch} sentences")
    ax.legend()
    return fig


def plot_losses(runs: dict[str, Sequence[float]]):
    """SimCSE training loss per step, one line per run."""
    fig, ax = figure(1, 1, width=6.0, height=3.5)
    for name, values in runs.items():
        ax.plot(range(1, len(values) + 1), list(values), marker=".", label=name)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("SimCSE loss (own batch)")
    ax.legend()
    return fig


# ---------------------------------------------------------------------------
# many processes: a gloo harness and the distributed check
# ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_entry(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn: Callable, world_size: int = 2, args: tuple = ()) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh CPU processes joined by gloo.

    The rendezvous is a free TCP port on 127.0.0.1. ``fn`` must be importable (a module-level
    function) and return tensors / plain containers; the list of per-rank results is returned.
    """
    checks.positive_int("world_size", world_size)
    with tempfile.TemporaryDirectory(prefix="kexue_gloo_") as out_dir:
        mp.spawn(_gloo_entry, args=(world_size, _free_port(), out_dir, fn, args), nprocs=world_size, join=True)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def _check_spec(spec: dict[str, Any]) -> None:
    needed = {"encoder_config", "ids", "micro_batch_size", "seed", "temperature"}
    missing = needed - set(spec)
    if missing:
        raise ValueError(f"spec is missing {sorted(missing)}")


def build_check_model(spec: dict[str, Any]) -> tuple[SentenceEncoder, LogitScale]:
    """The float64 encoder and logit scale of a distributed check, identical on every rank."""
    torch.manual_seed(spec["seed"])
    encoder = SentenceEncoder(TransformerEncoder(TransformerConfig(**spec["encoder_config"]))).double()
    scale = LogitScale(spec["temperature"], dtype=torch.float64)
    return encoder, scale


def _distributed_check_worker(rank: int, world_size: int, spec: dict[str, Any]) -> dict[str, Tensor]:
    """Per rank: the two-pass distributed gradient, and the all_gather_with_grad + averaging one."""
    encoder, scale = build_check_model(spec)
    ids: Tensor = spec["ids"]
    rows = ids.shape[0] // world_size
    shard = ids[rank * rows : (rank + 1) * rows]

    def loss_fn(h: Tensor) -> Tensor:
        return simcse_loss(h, scale.temperature())

    torch.manual_seed(spec["seed"] + 1 + rank)
    loss = distributed_contrastive_backward(encoder, shard, loss_fn, spec["micro_batch_size"])
    out = {"loss": loss, "log_scale_grad": scale.log_scale.grad.clone()}
    out.update({f"two_pass.{n}": p.grad.clone() for n, p in encoder.named_parameters()})

    # Princeton SimCSE's DDP recipe: local graph, gather with gradient, full loss, average grads over ranks.
    encoder.zero_grad(set_to_none=True)
    scale.zero_grad(set_to_none=True)
    torch.manual_seed(spec["seed"] + 1 + rank)
    local = torch.cat([encoder(c) for c in shard.split(spec["micro_batch_size"])])
    loss_fn(all_gather_with_grad(local)).backward()
    for n, p in encoder.named_parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        out[f"gather.{n}"] = p.grad / world_size
    return out


def run_distributed_check(spec: dict[str, Any], world_size: int = 2) -> list[dict[str, Tensor]]:
    """Spawn ``world_size`` gloo processes; each runs the distributed SimCSE step described by ``spec``.

    ``spec`` holds ``encoder_config`` (a :class:`kexue.nn.TransformerConfig` dict), ``ids``
    (the global batch of token ids, two views per sentence on adjacent rows), ``micro_batch_size``,
    ``seed`` and ``temperature``. Rank ``r`` seeds its RNG with ``seed + 1 + r`` before encoding.
    Returns one dict per rank: ``loss``, ``log_scale_grad``, ``two_pass.<param>`` and
    ``gather.<param>`` gradients.
    """
    _check_spec(spec)
    if spec["ids"].shape[0] % world_size:
        raise ValueError(f"the global batch ({spec['ids'].shape[0]}) must split evenly over {world_size} ranks")
    return spawn_gloo(_distributed_check_worker, world_size, (spec,))
