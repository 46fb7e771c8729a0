"""MLM pretraining of the small Chinese character BERT: ``python -m kexue.pretrain``.

The recipe of the shipped encoder (see the book's model card). BERT's
masked-language-model objective (:mod:`kexue.mlm`) on the corpus of
:func:`kexue.data.load_pretraining_corpus`, one character per token
(:class:`kexue.tokenizer.CharTokenizer`):

* 15% of the real tokens of each sequence are selected; 80% of those become
  ``[MASK]``, 10% a random character, 10% stay; the loss is the cross-entropy
  at the selected positions (:func:`kexue.mlm.mask_tokens`,
  :func:`kexue.mlm.mlm_loss`);
* AdamW (betas 0.9/0.98, eps 1e-6, weight decay on matrices only) with linear
  warm-up over ``ceil(warmup * steps)`` steps then linear decay to zero,
  gradient clipping, optional bf16 autocast, all through the one training loop
  :func:`kexue.experiments.loop.fit` (``schedule="linear"``);
* length-grouped batches (sequences of similar length share a batch, so little
  is spent on padding); sentences longer than ``max_len - 2`` are cut into
  chunks.

Determinism and resuming: every random draw of step ``k`` (data order of its
epoch, masking, dropout) is seeded from ``(seed, k)`` alone, so a run is a
pure function of its configuration, and a resumed run (``--resume``)
reproduces the uninterrupted one exactly. A run saves its checkpoint (the
loop's state, plus the weights, ``config.json`` and ``vocab.txt`` that
:func:`kexue.pretrained.load_zh_char_bert` reads) in ``<out>/checkpoint/``
every ``save_every_minutes`` and when it stops; the folder ignores itself in
git.

Outputs in ``out``: ``model.safetensors``, ``config.json`` (the
:class:`kexue.nn.TransformerConfig`), ``vocab.txt`` and
``training_record.json`` (data sizes, steps, losses, held-out MLM accuracy
next to the unigram baseline, wall time, device, git commit). ``out`` defaults
to a run folder outside the package, ``runs/pretrain`` (``runs/pretrain_tiny``
with ``tiny``), relative to the working directory. Nothing writes into the
package by default: refreshing the shipped checkpoint
(``kexue/pretrained/zh_char_bert``) takes ``refresh_shipped=True``
(``--refresh-shipped``), which a ``tiny`` run refuses, and any other ``out``
inside the package is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

import kexue
from kexue import checks
from kexue.data import CORPUS_SOURCES, load_pretraining_corpus
from kexue.experiments.loop import History, fit, lr_factor
from kexue.mlm import N_SPECIAL, MLMBatch, PackedSequences, corrupt, evaluate_mlm, mlm_loss, seed_from
from kexue.nn import MaskedLM, TransformerConfig, count_parameters
from kexue.pretrained import ZH_CHAR_BERT, save_pretrained
from kexue.tokenizer import CharTokenizer
from kexue.utils import get_device, git_commit

__all__ = [
    "DEFAULT_OUT",
    "TINY_OUT",
    "SHIPPED_OUT",
    "PretrainConfig",
    "MLMData",
    "warmup_steps",
    "lr_at",
    "heldout_split",
    "text_sha256",
    "pretrain",
    "main",
]

DEFAULT_OUT = Path("runs") / "pretrain"  # relative to the working directory, never inside the package
TINY_OUT = Path("runs") / "pretrain_tiny"
SHIPPED_OUT = ZH_CHAR_BERT  # written only with refresh_shipped (--refresh-shipped)
PACKAGE_DIR = Path(kexue.__file__).resolve().parent
CHECKPOINT_DIR = "checkpoint"
RUN_FILE = "run.json"  # in the checkpoint: the run's configuration, data summary and session count
MIN_SESSION_SECONDS = 1.0  # a session between two saves runs at least this long (so it takes a step)


def _is_shipped(out: str | Path) -> bool:
    return Path(out).resolve() == SHIPPED_OUT.resolve()


def _inside_package(out: str | Path) -> bool:
    return Path(out).resolve().is_relative_to(PACKAGE_DIR)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretraining run (the CLI flags, one to one)."""

    out: str | None = None  # None: runs/pretrain (runs/pretrain_tiny with tiny; the shipped one with refresh_shipped)
    refresh_shipped: bool = False  # write the shipped checkpoint kexue/pretrained/zh_char_bert (never by default)
    minutes: float | None = None  # wall-clock budget of this invocation
    steps: int | None = None  # total optimisation steps (sets the LR schedule)
    dim: int = 256
    depth: int = 4
    heads: int = 4
    ffn_dim: int = 1024
    batch_size: int = 128
    max_len: int = 128
    lr: float = 7e-4
    warmup: float = 0.05  # fraction of the steps spent warming up
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # 0: no clipping
    dropout: float = 0.1
    mask_prob: float = 0.15
    seed: int = 0
    bf16: bool = False
    min_count: int = 3  # vocabulary: characters seen at least this often
    heldout: int = 2000  # held-out sentences for MLM accuracy
    heldout_seed: int = 1234  # fixes the held-out sample, whatever the training seed
    tiny: bool = False  # a few hundred sentences, for tests
    tiny_sentences: int = 400
    eval_every: int = 1000  # steps between held-out evaluations (0: only at the end)
    save_every_minutes: float = 5.0
    log_every: int = 10  # steps per point of the loss curve
    stop_at: int | None = None  # stop (checkpointed) after this step, for split runs

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "ffn_dim", "batch_size", "heldout", "log_every", "tiny_sentences"):
            checks.positive_int(name, getattr(self, name))
        checks.int_at_least("max_len", self.max_len, 4)
        if self.steps is not None:
            checks.positive_int("steps", self.steps)
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive or None, got {self.minutes!r}")
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps or minutes (or both)")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob!r}")
        checks.float_in("warmup", self.warmup, 0.0, 1.0)
        checks.positive_float("save_every_minutes", self.save_every_minutes)
        checks.positive_float("lr", self.lr)
        checks.float_in("weight_decay", self.weight_decay, 0.0, math.inf)
        checks.float_in("grad_clip", self.grad_clip, 0.0, math.inf)
        checks.nonnegative_int("eval_every", self.eval_every)
        checks.positive_int("min_count", self.min_count)
        checks.nonnegative_int("seed", self.seed)
        checks.nonnegative_int("heldout_seed", self.heldout_seed)
        if self.stop_at is not None:
            checks.positive_int("stop_at", self.stop_at)
        checks.boolean("refresh_shipped", self.refresh_shipped)
        checks.boolean("tiny", self.tiny)
        checks.boolean("bf16", self.bf16)
        if self.tiny and self.refresh_shipped:
            raise ValueError(
                f"a tiny run must not overwrite the shipped checkpoint {SHIPPED_OUT}: drop refresh_shipped"
            )
        if self.out is None:
            default = SHIPPED_OUT if self.refresh_shipped else TINY_OUT if self.tiny else DEFAULT_OUT
            object.__setattr__(self, "out", str(default))
        if not isinstance(self.out, (str, Path)):
            raise TypeError(f"out must be a str or path, got {type(self.out).__name__}")
        object.__setattr__(self, "out", str(self.out))
        if self.refresh_shipped and not _is_shipped(self.out):
            raise ValueError(
                f"refresh_shipped writes the shipped checkpoint {SHIPPED_OUT}, but out is {self.out}: drop one of them"
            )
        if _is_shipped(self.out) and not self.refresh_shipped:
            if self.tiny:
                raise ValueError(f"a tiny run must not overwrite the shipped checkpoint {SHIPPED_OUT}; give another out")
            raise ValueError(
                f"overwriting the shipped checkpoint {SHIPPED_OUT} takes refresh_shipped (--refresh-shipped); "
                "give another out"
            )
        if _inside_package(self.out) and not _is_shipped(self.out):
            raise ValueError(f"out must not be inside the kexue package ({PACKAGE_DIR}), got {self.out}")

    def model_config(self, vocab_size: int) -> TransformerConfig:
        """The BERT-shaped (post-LN, learned positions) encoder this run trains."""
        return TransformerConfig(
            vocab_size=vocab_size,
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            ffn_dim=self.ffn_dim,
            max_len=self.max_len,
            dropout=self.dropout,
            attention_dropout=self.dropout,
            norm="post",
            position="learned",
        )


# ----------------------------------------------------------------------------- data
class MLMData(PackedSequences):
    """The training sequences with length-grouped batching.

    The batches of epoch ``e`` are a pure function of ``(seed, e)``: a seeded
    permutation, sorted by length inside windows of ``50 * batch_size``
    sequences, cut into batches whose order is shuffled.
    """

    def __init__(self, tokenizer: CharTokenizer, sentences: Sequence[str], max_len: int, batch_size: int) -> None:
        super().__init__(tokenizer, sentences, max_len)
        self.batch_size = batch_size
        window = 50 * batch_size
        n = len(self)
        self.batches_per_epoch = sum(math.ceil(min(window, n - a) / batch_size) for a in range(0, n, window))
        self._epoch_cache: tuple[int, int, list[torch.Tensor]] | None = None

    def epoch_batches(self, seed: int, epoch: int) -> list[torch.Tensor]:
        if self._epoch_cache is not None and self._epoch_cache[:2] == (seed, epoch):
            return self._epoch_cache[2]
        g = torch.Generator().manual_seed(seed_from(seed, epoch, 2))
        perm = torch.randperm(len(self), generator=g)
        window = 50 * self.batch_size
        batches: list[torch.Tensor] = []
        for a in range(0, len(perm), window):
            chunk = perm[a : a + window]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            batches.extend(chunk.split(self.batch_size))
        order = torch.randperm(len(batches), generator=g)
        batches = [batches[i] for i in order.tolist()]
        self._epoch_cache = (seed, epoch, batches)
        return batches

    def index_for_step(self, seed: int, step: int) -> torch.Tensor:
        """The sequences of step ``step`` (0-based)."""
        epoch, i = divmod(step, self.batches_per_epoch)
        return self.epoch_batches(seed, epoch)[i]

    def batch_for_step(self, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(self.index_for_step(seed, step))


def warmup_steps(total: int, warmup: float) -> int:
    """Warm-up length of a ``total``-step run: ``ceil(warmup * total)`` (at least 1 when ``warmup > 0``)."""
    return max(1, math.ceil(warmup * total)) if warmup > 0 else 0


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up over :func:`warmup_steps`, then linear decay to 0 at ``total`` (the loop's ``"linear"``)."""
    return peak * lr_factor(step, total, warmup_steps(total, warmup), "linear")


def heldout_split(sentences: Sequence[str], n: int, seed: int = 1234) -> tuple[list[str], list[str]]:
    """``(train, heldout)``: ``n`` sentences drawn by ``seed``, removed from training."""
    if not 0 < n < len(sentences):
        raise ValueError(f"n must be in (0, {len(sentences)}), got {n}")
    g = torch.Generator().manual_seed(seed)
    pick = set(torch.randperm(len(sentences), generator=g)[:n].tolist())
    heldout = [s for i, s in enumerate(sentences) if i in pick]
    train = [s for i, s in enumerate(sentences) if i not in pick]
    return train, heldout


def text_sha256(sentences: Sequence[str]) -> str:
    """SHA-256 of the sentences joined by newlines (the record's ``heldout_sha256``)."""
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()


def _prepare_data(config: PretrainConfig, sentences: Sequence[str] | None) -> tuple[list[str], list[str], dict[str, Any]]:
    if sentences is None:
        corpus = load_pretraining_corpus()
        info: dict[str, Any] = {"sources": list(CORPUS_SOURCES)}
        if config.tiny:
            g = torch.Generator().manual_seed(config.heldout_seed)
            pick = torch.randperm(len(corpus), generator=g)[: config.tiny_sentences].sort().values
            corpus = [corpus[i] for i in pick.tolist()]
            info["tiny"] = True
    else:
        corpus = list(sentences)
        info = {"sources": "given"}
    info["corpus_sentences"] = len(corpus)
    info["corpus_characters"] = sum(map(len, corpus))
    n_held = min(config.heldout, max(1, len(corpus) // 8))
    train, heldout = heldout_split(corpus, n_held, config.heldout_seed)
    info["heldout_sentences"] = len(heldout)
    info["heldout_sha256"] = text_sha256(heldout)
    info["heldout_rule"] = f"kexue.experiments.pretrain.heldout_split(corpus, {n_held}, seed={config.heldout_seed})"
    info["train_sentences"] = len(train)
    info["train_characters"] = sum(map(len, train))
    return train, heldout, info


# ----------------------------------------------------------------------------- one step
def _batches(config: PretrainConfig, data: MLMData, device: torch.device) -> Callable[[int], MLMBatch]:
    """``batch_at(step)`` for :func:`fit`: ``(corrupted, mask, selected, labels)`` of step ``step``.

    It also seeds the global generator for the step's dropout, so every draw of
    step ``k`` depends on ``(seed, k)`` only.
    """
    tokenizer = data.tokenizer

    def batch_at(step: int) -> MLMBatch:
        torch.manual_seed(seed_from(config.seed, step, 1))  # dropout
        ids, mask = data.batch_for_step(config.seed, step)
        g = torch.Generator().manual_seed(seed_from(config.seed, step, 0))
        return corrupt(ids, mask, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                       mask_prob=config.mask_prob, generator=g, device=device)

    return batch_at


def _loss(model: MaskedLM, batch: MLMBatch) -> torch.Tensor:
    return mlm_loss(model, *batch)


def _make_optimizer(model: MaskedLM, config: PretrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() < 2 else decay).append(p)  # biases and LayerNorm: no decay
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def _fit(model: MaskedLM, config: PretrainConfig, batch_at: Callable[[int], MLMBatch], steps: int, **kwargs: Any) -> History:
    """:func:`fit` with this recipe's optimiser, schedule, clipping and autocast."""
    return fit(
        model, batch_at, _loss, steps=steps, optimizer=_make_optimizer(model, config),
        warmup=warmup_steps(steps, config.warmup), schedule="linear",
        clip_norm=config.grad_clip if config.grad_clip > 0 else None, bf16=config.bf16, **kwargs,
    )


def _estimate_total_steps(config: PretrainConfig, data: MLMData, vocab_size: int, device: torch.device) -> int:
    """Steps that fit in ``config.minutes``, timed on a throwaway model (no effect on the run)."""
    probe = MaskedLM(config.model_config(vocab_size)).to(device)
    n_warm, n_timed = 3, 8
    batches = _batches(config, data, device)
    timing = {"t0": 0.0, "tokens": 0}

    def batch_at(k: int) -> MLMBatch:
        batch = batches(10_000_000 + k * 37)
        if k == n_warm:
            timing["t0"] = time.perf_counter()
        if k >= n_warm:
            timing["tokens"] += int(batch[1].sum())
        return batch

    rng = torch.get_rng_state()
    _fit(probe, config, batch_at, n_warm + n_timed, progress=False)
    seconds_per_token = (time.perf_counter() - timing["t0"]) / timing["tokens"]
    torch.set_rng_state(rng)
    tokens_per_step = data.n_tokens / data.batches_per_epoch
    budget = 0.95 * config.minutes * 60.0  # type: ignore[operator]
    return max(1, int(budget / (seconds_per_token * tokens_per_step)))


# ----------------------------------------------------------------------------- the run
def _subsample(points: list[list[float]], k: int = 300) -> list[list[float]]:
    if len(points) <= k:
        return points
    idx = sorted({round(i * (len(points) - 1) / (k - 1)) for i in range(k)})
    return [points[i] for i in idx]


def _loss_curve(losses: Sequence[float], log_every: int, total: int) -> list[list[float]]:
    """``[step, mean loss]`` over windows of ``log_every`` steps (a last short window only at ``total``)."""
    curve = []
    for a in range(0, len(losses), log_every):
        window = losses[a : a + log_every]
        end = a + len(window)
        if len(window) == log_every or end == total:
            curve.append([end, sum(window) / len(window)])
    return curve


def _resume_dir(out: Path, resume: str | Path | None) -> Path | None:
    if resume is None:
        return None
    auto = str(resume) == "auto"
    where = out / CHECKPOINT_DIR if auto else Path(resume)
    if (where / RUN_FILE).is_file():
        return where
    if auto:
        return None
    raise FileNotFoundError(f"resume: no checkpoint ({RUN_FILE}) in {where}")


def pretrain(
    config: PretrainConfig,
    sentences: Sequence[str] | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run (or resume) MLM pretraining; write the outputs to ``config.out``.

    ``sentences`` defaults to the pretraining corpus (a seeded slice of it with
    ``config.tiny``). ``resume`` is a checkpoint directory (``"auto"``:
    ``<out>/checkpoint`` if it holds one); a resumed run takes its
    configuration from the checkpoint, except ``minutes``, ``stop_at`` and
    ``out``. Without ``resume`` an old ``<out>/checkpoint`` is replaced.
    ``progress`` draws a progress bar (default: see
    :func:`kexue.experiments.loop.progress_enabled`). Returns the training
    record (also written to ``training_record.json``).
    """
    t_start = time.perf_counter()
    if not isinstance(config, PretrainConfig):
        raise TypeError(f"config must be a PretrainConfig, got {type(config).__name__}")
    out = Path(config.out)  # type: ignore[arg-type]
    if _is_shipped(out) and (sentences is not None or not config.refresh_shipped):
        raise ValueError(
            f"only a run on the pretraining corpus with refresh_shipped=True may overwrite the shipped checkpoint "
            f"{SHIPPED_OUT}"
        )
    if sentences is not None and (isinstance(sentences, str) or not isinstance(sentences, Sequence)):
        raise TypeError(f"sentences must be a sequence of str, got {type(sentences).__name__}")
    ckpt = out / CHECKPOINT_DIR
    source = _resume_dir(out, resume)
    saved: dict[str, Any] | None = None
    if source is not None:
        saved = json.loads((source / RUN_FILE).read_text(encoding="utf-8"))
        keep = {"minutes": config.minutes, "stop_at": config.stop_at, "out": config.out,
                "refresh_shipped": config.refresh_shipped}
        config = PretrainConfig(**{**saved["config"], **keep})
    if source is None or source.resolve() != ckpt.resolve():
        if ckpt.exists():
            shutil.rmtree(ckpt)
        if source is not None:
            shutil.copytree(source, ckpt)

    device = get_device()
    train, heldout, info = _prepare_data(config, sentences)
    if saved is not None:
        tokenizer = CharTokenizer.load(ckpt)
        if saved["data"]["heldout_sha256"] != info["heldout_sha256"]:
            raise ValueError("resume: the corpus or held-out sample differs from the checkpoint's")
    else:
        tokenizer = CharTokenizer.build(train, min_count=1 if config.tiny else config.min_count)
    data = MLMData(tokenizer, train, config.max_len, config.batch_size)
    info.update(
        vocab_size=tokenizer.vocab_size,
        train_sequences=len(data),
        train_tokens=data.n_tokens,
        batches_per_epoch=data.batches_per_epoch,
    )
    counts = torch.bincount(data.flat, minlength=tokenizer.vocab_size)
    counts[:N_SPECIAL] = 0
    unigram_id = int(counts.argmax())

    torch.manual_seed(seed_from(config.seed, -1))
    model = MaskedLM(config.model_config(tokenizer.vocab_size)).to(device)
    if config.steps is None:
        config = replace(config, steps=_estimate_total_steps(config, data, tokenizer.vocab_size, device))
    total: int = config.steps  # type: ignore[assignment]
    stop = total if config.stop_at is None else min(total, config.stop_at)
    sessions = 1 if saved is None else saved["sessions"] + 1
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / ".gitignore").write_text("*\n", encoding="utf-8")
    (ckpt / RUN_FILE).write_text(
        json.dumps({"config": asdict(config), "data": info, "sessions": sessions}, indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    tokenizer.save(ckpt)

    def evaluate(m: MaskedLM) -> dict[str, float]:
        t0 = time.perf_counter()
        res = evaluate_mlm(m, tokenizer, heldout, max_len=config.max_len, mask_prob=config.mask_prob,
                           seed=config.heldout_seed, unigram_id=unigram_id)
        return {**res, "seconds": time.perf_counter() - t0}

    # sessions of save_every_minutes: each ends with the loop's checkpoint, and the
    # next call of fit resumes from it (bit-exact), until stop or the time budget
    deadline = None if config.minutes is None else t_start + 60.0 * config.minutes
    batch_at = _batches(config, data, device)
    while True:
        budget = max(MIN_SESSION_SECONDS, 60.0 * config.save_every_minutes)
        if deadline is not None:
            budget = max(0.0, min(budget, deadline - time.perf_counter()))
        history = _fit(
            model, config, batch_at, total, evaluate=evaluate, eval_every=config.eval_every or None,
            stop_at=stop, max_seconds=budget, checkpoint_dir=ckpt, progress=progress, desc="MLM",
        )
        save_pretrained(model, tokenizer, ckpt)
        if history.last_step >= stop or (deadline is not None and time.perf_counter() >= deadline):
            break

    step = history.last_step
    evals = [[int(e["step"]), e["accuracy"], e["loss"]] for e in history.evals]
    final = history.evals[-1] if history.evals and history.evals[-1]["step"] == step else None
    if final is None:
        final = evaluate(model)
        evals.append([step, final["accuracy"], final["loss"]])
    tokens_seen = sum(int(data.lengths[data.index_for_step(config.seed, k)].sum()) for k in range(step))
    train_seconds = history.seconds - sum(e.get("seconds", 0.0) for e in history.evals)
    losses = _loss_curve(history.losses, config.log_every, total)
    tail = [l for _, l in losses[-5:]]
    record = {
        "model": "kexue.nn.MaskedLM",
        "parameters": count_parameters(model),
        "config": asdict(config),
        "data": info,
        "steps": step,
        "total_steps": total,
        "complete": step >= total,
        "tokens_seen": tokens_seen,
        "epochs": tokens_seen / max(data.n_tokens, 1),
        "final_mlm_loss": sum(tail) / max(len(tail), 1) if tail else None,
        "heldout": {
            "mlm_accuracy": final["accuracy"],
            "mlm_loss": final["loss"],
            "unigram_accuracy": final["unigram_accuracy"],
            "unigram_token": tokenizer.id_to_token[unigram_id],
            "masked_positions": int(final["n_masked"]),
            "mask_prob": config.mask_prob,
            "mask_seed": config.heldout_seed,
            "protocol": "kexue.mlm.evaluate_mlm: every chosen position replaced by [MASK], top-1, float32",
        },
        "train_seconds": train_seconds,
        "wall_seconds_this_session": time.perf_counter() - t_start,
        "tokens_per_second": tokens_seen / max(train_seconds, 1e-9),
        "sessions": sessions,
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "bf16_autocast": config.bf16,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loss_curve": _subsample(losses),
        "heldout_curve": evals,
    }
    save_pretrained(model, tokenizer, out, record)
    return record


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    d = SimpleNamespace(**{f.name: f.default for f in fields(PretrainConfig)})  # no validation of the cwd here
    p = argparse.ArgumentParser(
        prog="python -m kexue.pretrain",
        description="MLM pretraining of a small Chinese character BERT (kexue.nn.MaskedLM).",
    )
    p.add_argument("--out", default=None,
                   help=f"output directory (default: {DEFAULT_OUT}; with --tiny: {TINY_OUT}); never inside the package")
    p.add_argument("--refresh-shipped", action="store_true",
                   help=f"write the result into the shipped checkpoint {SHIPPED_OUT} "
                        "(refused with --tiny or another --out)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget; without --steps it also sets the step count")
    p.add_argument("--steps", type=int, default=None, help="total optimisation steps (the LR schedule's length)")
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--ffn-dim", type=int, default=d.ffn_dim)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-len", type=int, default=d.max_len)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=float, default=d.warmup, help="warm-up fraction of the steps")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (about 2x faster on CPU)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="DIR",
                   help="resume from DIR (default: OUT/checkpoint); the run keeps the checkpoint's settings")
    p.add_argument("--tiny", action="store_true", help="a few hundred sentences, for tests")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--save-every-minutes", type=float, default=d.save_every_minutes)
    p.add_argument("--stop-at", type=int, default=None, help="stop after this step (checkpointed), to split a run")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(PretrainConfig) if hasattr(args, f.name)}
    if args.resume is not None and args.steps is None and args.minutes is None:
        values["steps"] = 1  # placeholder: a resumed run takes its steps from the checkpoint
    try:
        config = PretrainConfig(**values)
    except ValueError as err:
        _parser().error(str(err))
    record = pretrain(config, resume=args.resume, progress=False if args.no_progress else None)
    held = record["heldout"]
    print(
        f"steps {record['steps']}/{record['total_steps']}  final MLM loss {record['final_mlm_loss']:.3f}  "
        f"held-out MLM accuracy {held['mlm_accuracy']:.3f} (unigram {held['unigram_accuracy']:.3f})  "
        f"{record['tokens_per_second']:,.0f} tokens/s  -> {config.out}",
        file=sys.stderr,
    )
    return record
