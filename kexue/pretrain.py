"""MLM pretraining of a small Chinese character BERT: ``python -m kexue.pretrain``.

BERT's masked-language-model objective (Devlin et al., 2019) on the corpus of
:func:`kexue.data.load_pretraining_corpus`, tokenised one character per token
by :class:`kexue.tokenizer.CharTokenizer`:

* 15% of the real tokens of each sequence are selected; of those 80% become
  ``[MASK]``, 10% a random character and 10% stay as they are; the loss is the
  cross-entropy of the original token at the selected positions only (the MLM
  head runs on those positions only, which saves most of its cost);
* AdamW with linear warm-up then linear decay to zero, gradient clipping;
* length-grouped batches (sequences of similar length share a batch, so little
  is spent on padding); sentences longer than ``max_len - 2`` are cut into
  chunks;
* optional bf16 autocast (about 2x faster on this CPU, ``shared/FINDINGS.md``).

Determinism and resuming: every random draw of step ``k`` (data order of its
epoch, masking, dropout) is seeded from ``(seed, k)`` alone, so a run is a
pure function of its configuration, and a run resumed from a checkpoint
(``--resume``) reproduces the uninterrupted one exactly. The checkpoint
(``<out>/checkpoint/``) holds the weights and the AdamW state as safetensors
and the progress as JSON; it ignores itself in git.

Outputs in ``--out``: ``model.safetensors``, ``config.json`` (the
:class:`kexue.nn.TransformerConfig`), ``vocab.txt`` and
``training_record.json`` (data sizes, steps, losses, held-out MLM accuracy
next to the unigram baseline, wall time, device, git commit). Load them with
:func:`kexue.pretrained.load_zh_char_bert`.

See: the model card of the pretrained Chinese encoder (issue 3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model

from kexue.nn import MaskedLM, TransformerConfig, count_parameters
from kexue.tokenizer import SPECIAL_TOKENS, CharTokenizer
from kexue.utils import get_device, git_commit

__all__ = [
    "DEFAULT_OUT",
    "PretrainConfig",
    "MLMData",
    "mask_tokens",
    "mlm_logits_at",
    "mlm_loss",
    "lr_at",
    "heldout_split",
    "evaluate_mlm",
    "pretrain",
    "save_pretrained",
    "main",
]

DEFAULT_OUT = Path(__file__).resolve().parent / "pretrained" / "zh_char_bert"
CHECKPOINT_DIR = "checkpoint"
_N_SPECIAL = len(SPECIAL_TOKENS)


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (the CLI flags, one to one)."""

    out: str = str(DEFAULT_OUT)
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
    grad_clip: float = 1.0
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
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.max_len, int) or self.max_len < 4:
            raise ValueError(f"max_len must be an int >= 4, got {self.max_len!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive int or None, got {self.steps!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive or None, got {self.minutes!r}")
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps or minutes (or both)")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")

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


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ----------------------------------------------------------------------------- data
class MLMData:
    """Token sequences ``[CLS] chars [SEP]`` kept flat, with length-grouped batching.

    Sentences longer than ``max_len - 2`` characters are cut into chunks of at
    most that many. The batches of epoch ``e`` are a pure function of
    ``(seed, e)``: a seeded permutation, sorted by length inside windows of
    ``50 * batch_size`` sequences, cut into batches whose order is shuffled.
    """

    def __init__(self, tokenizer: CharTokenizer, sentences: Sequence[str], max_len: int, batch_size: int) -> None:
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
        self.batch_size = batch_size
        self.lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self.flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)
        window = 50 * batch_size
        n = len(rows)
        self.batches_per_epoch = sum(math.ceil(min(window, n - a) / batch_size) for a in range(0, n, window))
        self._epoch_cache: tuple[int, int, list[torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def epoch_batches(self, seed: int, epoch: int) -> list[torch.Tensor]:
        if self._epoch_cache is not None and self._epoch_cache[:2] == (seed, epoch):
            return self._epoch_cache[2]
        g = torch.Generator().manual_seed(_seed(seed, epoch, 2))
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

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(input_ids, mask)`` of the sequences ``index``."""
        lengths = self.lengths[index]
        width = int(lengths.max())
        mask = torch.arange(width) < lengths[:, None]
        ids = torch.zeros(len(index), width, dtype=torch.long)
        starts = self.offsets[index]
        gather = (starts[:, None] + torch.arange(width)).clamp(max=len(self.flat) - 1)
        ids[mask] = self.flat[gather][mask]
        return ids, mask

    def batch_for_step(self, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.batches_per_epoch)
        return self.batch(self.epoch_batches(seed, epoch)[i])


# ----------------------------------------------------------------------------- MLM pieces
def mask_tokens(
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
    n_special: int = _N_SPECIAL,
    replace: tuple[float, float] = (0.8, 0.1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: select ``mask_prob`` of the real non-special tokens,
    make ``replace[0]`` of them ``[MASK]``, ``replace[1]`` a random non-special
    token, and leave the rest. Returns ``(corrupted ids, selected)``; at least
    one token is selected when any is eligible. Draws happen on the CPU
    generator, so the result does not depend on the device.
    """
    if input_ids.shape != mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and mask {tuple(mask.shape)} must match")
    device = input_ids.device
    cpu_ids = input_ids.cpu()
    eligible = mask.cpu().bool() & (cpu_ids >= n_special)
    u = torch.rand(cpu_ids.shape, generator=generator)
    selected = eligible & (u < mask_prob)
    if not selected.any() and eligible.any():
        selected = eligible & (u == u.masked_fill(~eligible, 2.0).min())
    v = torch.rand(cpu_ids.shape, generator=generator)
    random_ids = torch.randint(n_special, vocab_size, cpu_ids.shape, generator=generator)
    corrupted = cpu_ids.clone()
    to_mask = selected & (v < replace[0])
    to_random = selected & (v >= replace[0]) & (v < replace[0] + replace[1])
    corrupted[to_mask] = mask_id
    corrupted[to_random] = random_ids[to_random]
    return corrupted.to(device), selected.to(device)


def mlm_logits_at(model: MaskedLM, input_ids: torch.Tensor, mask: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """``model(input_ids, mask)[selected]``, running the MLM head on ``selected`` only."""
    h = model.encoder(input_ids, mask)[selected]
    h = model.mlm_norm(F.gelu(model.mlm_transform(h)))
    return F.linear(h, model.encoder.token_embedding.weight, model.mlm_bias)


def mlm_loss(model: MaskedLM, corrupted: torch.Tensor, mask: torch.Tensor, selected: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the original tokens ``labels`` at ``selected``."""
    logits = mlm_logits_at(model, corrupted, mask, selected)
    return F.cross_entropy(logits.float(), labels)


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up over ``ceil(warmup * total)`` steps, then linear decay to 0 at ``total``."""
    n_warm = max(1, math.ceil(warmup * total)) if warmup > 0 else 0
    if step < n_warm:
        return peak * (step + 1) / n_warm
    return peak * max(0.0, (total - step) / max(1, total - n_warm))


def heldout_split(sentences: Sequence[str], n: int, seed: int = 1234) -> tuple[list[str], list[str]]:
    """``(train, heldout)``: ``n`` sentences drawn by ``seed``, removed from training."""
    if not 0 < n < len(sentences):
        raise ValueError(f"n must be in (0, {len(sentences)}), got {n}")
    g = torch.Generator().manual_seed(seed)
    pick = set(torch.randperm(len(sentences), generator=g)[:n].tolist())
    heldout = [s for i, s in enumerate(sentences) if i in pick]
    train = [s for i, s in enumerate(sentences) if i not in pick]
    return train, heldout


def _fingerprint(sentences: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()


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
    """
    data = MLMData(tokenizer, sentences, max_len, batch_size)
    g = torch.Generator().manual_seed(_seed(seed, 3))
    u = torch.rand(len(data.flat), generator=g)
    eligible = data.flat >= _N_SPECIAL
    chosen = eligible & (u < mask_prob)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = unigram = 0
    loss_sum = 0.0
    order = torch.argsort(data.lengths, descending=True, stable=True)
    for index in order.split(batch_size):
        ids, mask = data.batch(index)
        width = ids.shape[1]
        gather = (data.offsets[index][:, None] + torch.arange(width)).clamp(max=len(data.flat) - 1)
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
    out = {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1), "n_masked": float(total)}
    if unigram_id is not None:
        out["unigram_accuracy"] = unigram / max(total, 1)
    return out


# ----------------------------------------------------------------------------- checkpoints
def save_pretrained(
    model: MaskedLM, tokenizer: CharTokenizer, out: str | Path, record: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors``, ``config.json``, ``vocab.txt`` (and
    ``training_record.json`` when ``record`` is given) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "kexue": "MaskedLM"})
    (out / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    tokenizer.save(out)
    if record is not None:
        (out / "training_record.json").write_text(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return out


def _save_checkpoint(ckpt: Path, model: MaskedLM, opt: torch.optim.Optimizer, tokenizer: CharTokenizer, state: dict[str, Any]) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / ".gitignore").write_text("*\n", encoding="utf-8")
    save_model(model, str(tmp / "model.safetensors"))
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{pid}.{key}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    tokenizer.save(tmp)
    payload = dict(state, param_groups=sd["param_groups"])
    (tmp / "state.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if ckpt.exists():
        old = ckpt.with_name(ckpt.name + ".old")
        if old.exists():
            _rmtree(old)
        ckpt.rename(old)
        tmp.rename(ckpt)
        _rmtree(old)
    else:
        tmp.rename(ckpt)


def _rmtree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _load_checkpoint(ckpt: Path, model: MaskedLM, opt: torch.optim.Optimizer) -> dict[str, Any]:
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    load_model(model, str(ckpt / "model.safetensors"), strict=True)
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        pid, key = name.split(".", 1)
        opt_state.setdefault(int(pid), {})[key] = t
    opt.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    return state


# ----------------------------------------------------------------------------- training
def _make_optimizer(model: MaskedLM, config: PretrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 else decay).append(p)  # biases and LayerNorm: no decay
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def _train_step(
    model: MaskedLM, opt: torch.optim.Optimizer, data: MLMData, config: PretrainConfig, step: int, total: int, device: torch.device
) -> tuple[float, int]:
    torch.manual_seed(_seed(config.seed, step, 1))  # dropout
    ids, mask = data.batch_for_step(config.seed, step)
    g = torch.Generator().manual_seed(_seed(config.seed, step, 0))
    corrupted, selected = mask_tokens(
        ids, mask, mask_id=data.tokenizer.mask_id, vocab_size=data.tokenizer.vocab_size, mask_prob=config.mask_prob, generator=g
    )
    labels = ids[selected].to(device)
    corrupted, mask, selected = corrupted.to(device), mask.to(device), selected.to(device)
    lr = lr_at(step, total, config.lr, config.warmup)
    for group in opt.param_groups:
        group["lr"] = lr
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
        loss = mlm_loss(model, corrupted, mask, selected, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    opt.step()
    return float(loss.detach()), int(mask.sum())


def _estimate_total_steps(config: PretrainConfig, data: MLMData, vocab_size: int, device: torch.device) -> int:
    """Steps that fit in ``config.minutes``, timed on a throwaway model (no effect on the run)."""
    probe = MaskedLM(config.model_config(vocab_size)).to(device)
    opt = _make_optimizer(probe, config)
    rng = torch.get_rng_state()
    n_warm, n_timed = 3, 8
    tokens = 0
    for k in range(n_warm + n_timed):
        if k == n_warm:
            t0 = time.perf_counter()
            tokens = 0
        _, n = _train_step(probe, opt, data, config, 10_000_000 + k * 37, 10**9, device)
        tokens += n
    seconds_per_token = (time.perf_counter() - t0) / tokens
    torch.set_rng_state(rng)
    tokens_per_step = data.n_tokens / data.batches_per_epoch
    budget = 0.95 * config.minutes * 60.0  # type: ignore[operator]
    return max(1, int(budget / (seconds_per_token * tokens_per_step)))


def _subsample(points: list[list[float]], k: int = 300) -> list[list[float]]:
    if len(points) <= k:
        return points
    idx = sorted({round(i * (len(points) - 1) / (k - 1)) for i in range(k)})
    return [points[i] for i in idx]


def _prepare_data(config: PretrainConfig, sentences: Sequence[str] | None) -> tuple[list[str], list[str], dict[str, Any]]:
    if sentences is None:
        from kexue.data import CORPUS_SOURCES, load_pretraining_corpus

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
    info["heldout_sha256"] = _fingerprint(heldout)
    info["heldout_rule"] = f"kexue.pretrain.heldout_split(corpus, {n_held}, seed={config.heldout_seed})"
    info["train_sentences"] = len(train)
    info["train_characters"] = sum(map(len, train))
    return train, heldout, info


def pretrain(
    config: PretrainConfig,
    sentences: Sequence[str] | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) MLM pretraining; write the outputs to ``config.out``.

    ``sentences`` defaults to the pretraining corpus (a seeded slice of it with
    ``config.tiny``). ``resume`` is a checkpoint directory (``"auto"``:
    ``<out>/checkpoint`` if it exists); a resumed run takes its configuration
    from the checkpoint, except the time budget ``minutes`` and ``stop_at``.
    Returns the training record (also written to ``training_record.json``).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    out = Path(config.out)
    ckpt = out / CHECKPOINT_DIR
    resume_dir: Path | None = None
    if resume is not None:
        resume_dir = ckpt if str(resume) == "auto" else Path(resume)
        if not (resume_dir / "state.json").is_file():
            if str(resume) != "auto":
                raise FileNotFoundError(f"resume: no checkpoint (state.json) in {resume_dir}")
            resume_dir = None
    saved: dict[str, Any] | None = None
    if resume_dir is not None:
        saved = json.loads((resume_dir / "state.json").read_text(encoding="utf-8"))
        keep = {"minutes": config.minutes, "stop_at": config.stop_at, "out": config.out}
        config = PretrainConfig(**{**saved["config"], **keep})

    device = get_device()
    train, heldout, info = _prepare_data(config, sentences)
    if resume_dir is not None:
        tokenizer = CharTokenizer.load(resume_dir)
        if saved["data"]["heldout_sha256"] != info["heldout_sha256"]:  # type: ignore[index]
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
    counts[:_N_SPECIAL] = 0
    unigram_id = int(counts.argmax())

    torch.manual_seed(_seed(config.seed, -1))
    model = MaskedLM(config.model_config(tokenizer.vocab_size)).to(device)
    opt = _make_optimizer(model, config)
    if saved is not None:
        state = _load_checkpoint(resume_dir, model, opt)  # type: ignore[arg-type]
        step, total = state["step"], state["total_steps"]
        losses, evals = state["losses"], state["evals"]
        elapsed_before, tokens_seen = state["train_seconds"], state["tokens_seen"]
        sessions = state["sessions"] + 1
        window_loss, window_n = state["window"]
    else:
        total = config.steps
        if total is None:
            total = _estimate_total_steps(config, data, tokenizer.vocab_size, device)
        step, losses, evals, elapsed_before, tokens_seen, sessions = 0, [], [], 0.0, 0, 1
        window_loss, window_n = 0.0, 0
        if config.steps is None:
            config.steps = total
    stop = total if config.stop_at is None else min(total, config.stop_at)
    deadline = None if config.minutes is None else t_start + 60.0 * config.minutes

    def progress_state() -> dict[str, Any]:
        return {
            "config": asdict(config),
            "step": step,
            "total_steps": total,
            "losses": losses,
            "evals": evals,
            "train_seconds": elapsed_before + train_seconds,
            "tokens_seen": tokens_seen,
            "sessions": sessions,
            "window": [window_loss, window_n],
            "data": info,
        }

    model.train()
    train_seconds = 0.0
    last_save = time.perf_counter()
    bar = tqdm(total=total, initial=step, disable=not progress, desc="MLM", unit="step", dynamic_ncols=True)
    session_tokens, session_t0 = 0, time.perf_counter()
    while step < stop:
        if deadline is not None and time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        loss, n_tok = _train_step(model, opt, data, config, step, total, device)
        train_seconds += time.perf_counter() - t0
        if not math.isfinite(loss):
            raise FloatingPointError(f"MLM loss became {loss} at step {step}; lower --lr")
        step += 1
        tokens_seen += n_tok
        session_tokens += n_tok
        window_loss += loss
        window_n += 1
        if window_n == config.log_every or step == total:
            losses.append([step, window_loss / window_n])
            window_loss, window_n = 0.0, 0
        if config.eval_every and step % config.eval_every == 0 and step < total:
            res = evaluate_mlm(model, tokenizer, heldout, max_len=config.max_len, mask_prob=config.mask_prob, seed=config.heldout_seed, unigram_id=unigram_id)
            evals.append([step, res["accuracy"], res["loss"]])
        rate = session_tokens / max(time.perf_counter() - session_t0, 1e-9)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
        bar.update(1)
        if time.perf_counter() - last_save > 60.0 * config.save_every_minutes and step < stop:
            _save_checkpoint(ckpt, model, opt, tokenizer, progress_state())
            last_save = time.perf_counter()
    bar.close()
    _save_checkpoint(ckpt, model, opt, tokenizer, progress_state())

    res = evaluate_mlm(model, tokenizer, heldout, max_len=config.max_len, mask_prob=config.mask_prob, seed=config.heldout_seed, unigram_id=unigram_id)
    if not evals or evals[-1][0] != step:
        evals.append([step, res["accuracy"], res["loss"]])
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
            "mlm_accuracy": res["accuracy"],
            "mlm_loss": res["loss"],
            "unigram_accuracy": res["unigram_accuracy"],
            "unigram_token": tokenizer.id_to_token[unigram_id],
            "masked_positions": int(res["n_masked"]),
            "mask_prob": config.mask_prob,
            "mask_seed": config.heldout_seed,
            "protocol": "kexue.pretrain.evaluate_mlm: every chosen position replaced by [MASK], top-1, float32",
        },
        "train_seconds": elapsed_before + train_seconds,
        "wall_seconds_this_session": time.perf_counter() - t_start,
        "tokens_per_second": tokens_seen / max(elapsed_before + train_seconds, 1e-9),
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
    d = PretrainConfig(steps=1)
    p = argparse.ArgumentParser(
        prog="python -m kexue.pretrain",
        description="MLM pretraining of a small Chinese character BERT (kexue.nn.MaskedLM).",
    )
    p.add_argument("--out", default=d.out, help="output directory (default: %(default)s)")
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
    record = pretrain(config, resume=args.resume, progress=not args.no_progress)
    held = record["heldout"]
    print(
        f"steps {record['steps']}/{record['total_steps']}  final MLM loss {record['final_mlm_loss']:.3f}  "
        f"held-out MLM accuracy {held['mlm_accuracy']:.3f} (unigram {held['unigram_accuracy']:.3f})  "
        f"{record['tokens_per_second']:,.0f} tokens/s  -> {config.out}",
        file=sys.stderr,
    )
    return record


if __name__ == "__main__":
    main()
