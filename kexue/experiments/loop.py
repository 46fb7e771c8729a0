"""The one training loop every experiment runs through.

:func:`fit` owns what all the chapters' runs share: the optimiser and its
warm-up plus decay schedule, gradient clipping, optional bf16 autocast, an
evaluation hook, a progress bar, seeding, and checkpoint/resume for long runs.
What differs between experiments comes in as functions:

* ``batch_at(step)`` returns the batch of one step. Indexing by step (rather
  than iterating) is what makes a resumed run draw exactly the batches an
  uninterrupted one would.
* ``loss_fn(model, batch)`` returns the scalar loss; the loop calls
  ``backward`` on it. An algorithm with its own backward (the two-pass step of
  chapter 07) passes ``step_fn(model, batch)`` instead, which must leave the
  gradients in ``.grad`` and return the loss.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from kexue import checks

__all__ = ["History", "fit", "lr_factor", "make_adamw", "progress_enabled", "step_cap"]

Schedule = Literal["cosine", "linear", "constant"]
CHECKPOINT_FILE = "loop_state.pt"
_STEP_CAP: list[int] = []  # the innermost active step_cap


@contextmanager
def step_cap(steps: int | None) -> Iterator[None]:
    """Within the block, every :func:`fit` call stops after at most ``steps`` steps.

    The schedule keeps its full length (the cap acts like ``stop_at``), so a
    capped run is the start of the uncapped one. ``None`` leaves runs as they
    are. ``python -m kexue.experiments --max-steps`` uses it to bound a run.
    """
    if steps is None:
        yield
        return
    checks.positive_int("steps", steps)
    _STEP_CAP.append(steps)
    try:
        yield
    finally:
        _STEP_CAP.pop()


@dataclass
class History:
    """What :func:`fit` records: the loss and learning rate of every step and each evaluation."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)  # each holds "step"
    seconds: float = 0.0  # training time, summed over resumed sessions
    resumed_at: list[int] = field(default_factory=list)  # the step of each resume

    @property
    def last_step(self) -> int:
        return self.steps[-1] if self.steps else 0

    def eval_series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one evaluated metric."""
        rows = [e for e in self.evals if key in e]
        return [int(e["step"]) for e in rows], [float(e[key]) for e in rows]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_factor(step: int, total: int, warmup: int, schedule: Schedule = "cosine", floor: float = 0.0) -> float:
    r"""Multiplier of the peak learning rate at 0-based ``step``.

    Linear warm-up :math:`(s+1)/w` over the first ``warmup`` steps, then
    ``cosine`` :math:`f + (1-f)\tfrac12(1+\cos\pi p)`, ``linear``
    :math:`f + (1-f)(1-p)` or ``constant`` 1, with :math:`p` the fraction of the
    post-warm-up steps done and :math:`f` = ``floor``.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - p)
    raise ValueError(f"schedule must be 'cosine', 'linear' or 'constant', got {schedule!r}")


def make_adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW over ``params`` (the default optimiser of :func:`fit`)."""
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, **kwargs)


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to draw a progress bar: ``progress`` if given, else ``KEXUE_PROGRESS`` (``0``/``1``),
    else only when stderr is a terminal. The book build sets ``KEXUE_PROGRESS=0``."""
    if progress is not None:
        return progress
    env = os.environ.get("KEXUE_PROGRESS", "").strip()
    if env:
        return env not in ("0", "false", "no")
    return sys.stderr.isatty()


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain Python values (loadable with ``weights_only``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(
    model: nn.Module,
    batch_at: Callable[[int], Any],
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    *,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
    warmup: int = 0,
    schedule: Schedule = "cosine",
    lr_floor: float = 0.0,
    clip_norm: float | None = None,
    bf16: bool = False,
    step_fn: Callable[[nn.Module, Any], Tensor | float] | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int | None = None,
    eval_at_start: bool = False,
    seed: int | None = None,
    stop_at: int | None = None,
    max_seconds: float | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> History:
    """Train ``model`` for ``steps`` optimiser steps and return its :class:`History`.

    Each step: ``batch = batch_at(step)``; the learning rate of every parameter
    group is set to its peak times :func:`lr_factor`; the loss is computed under
    bf16 autocast when ``bf16`` (on the model's device type); gradients are
    clipped to ``clip_norm`` when given; the optimiser steps. ``optimizer``
    defaults to :func:`make_adamw` over the trainable parameters with ``lr`` and
    ``weight_decay``; a given optimiser keeps each group's own ``lr`` as its peak.

    ``evaluate(model)`` runs every ``eval_every`` steps and after the last step
    (and at step 0 with ``eval_at_start``), with the model in eval mode and no
    gradients; its metrics are stored with their step in ``History.evals``.

    ``seed`` seeds Python, NumPy and torch before the first step, so a run is
    deterministic given deterministic ``batch_at`` and kernels. With
    ``checkpoint_dir``, the model, optimiser, RNG states and history are saved
    every ``checkpoint_every`` steps and at the end, and a later call with the
    same arguments resumes from the saved step and finishes the run bit-for-bit
    as an uninterrupted one would. ``stop_at`` and ``max_seconds`` end a session
    early (the checkpoint then lets the next call continue); a session always
    takes at least one step, so repeated calls always make progress.
    """
    checks.positive_int("steps", steps)
    checks.nonnegative_int("warmup", warmup)
    if (loss_fn is None) == (step_fn is None):
        raise ValueError("pass exactly one of loss_fn (the loop back-propagates) or step_fn (it does)")
    if eval_every is not None:
        checks.positive_int("eval_every", eval_every)
    if checkpoint_every is not None:
        checks.positive_int("checkpoint_every", checkpoint_every)
    if clip_norm is not None:
        checks.positive_float("clip_norm", clip_norm)
    lr_factor(0, steps, warmup, schedule, lr_floor)  # validates the schedule name
    if _STEP_CAP:
        stop_at = min(stop_at if stop_at is not None else steps, _STEP_CAP[-1])
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = make_adamw(params, checks.positive_float("lr", lr), weight_decay)
    peaks = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    for group, peak in zip(optimizer.param_groups, peaks):
        group["initial_lr"] = peak
    device = next(iter(params), torch.empty(0)).device
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)

    history = History()
    start = 0
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        # tensors and plain values only (no pickled objects); RNG states must stay on the CPU,
        # and load_state_dict moves parameters and optimiser state to the model's device
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        if saved["steps"] != steps:
            raise ValueError(f"checkpoint_dir holds a run of {saved['steps']} steps, not {steps}: use a new folder")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history = History(**saved["history"])
        start = saved["step"]
        _set_rng_state(saved["rng"])
        if start < steps:
            history.resumed_at.append(start)

    def save(step: int) -> None:
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "steps": steps, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "history": history.to_dict(), "rng": _rng_state(),
        }
        tmp = ckpt.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt)

    def run_eval(step: int) -> None:
        if evaluate is None:
            return
        was = model.training
        model.eval()
        with torch.no_grad():
            metrics = dict(evaluate(model))
        model.train(was)
        history.evals.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    )
    end = steps if stop_at is None else min(steps, stop_at)
    t0 = time.perf_counter()
    bar = None
    if progress_enabled(progress):
        bar = tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    model.train()
    if start == 0 and eval_at_start:
        run_eval(0)
    step = start
    try:
        while step < end:
            if max_seconds is not None and step > start and time.perf_counter() - t0 > max_seconds:
                break  # every session takes at least one step, so a resumed run always progresses
            factor = lr_factor(step, steps, warmup, schedule, lr_floor)
            for group, peak in zip(optimizer.param_groups, peaks):
                group["lr"] = peak * factor
            batch = batch_at(step)
            optimizer.zero_grad(set_to_none=True)
            if step_fn is not None:
                loss = step_fn(model, batch)
            else:
                with autocast:
                    loss = loss_fn(model, batch)  # type: ignore[misc]
                loss.backward()
            value = float(loss.detach() if isinstance(loss, Tensor) else loss)
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss became {value} at step {step}: lower lr or check the data")
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
            step += 1
            history.steps.append(step)
            history.losses.append(value)
            history.lrs.append(peaks[0] * factor)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                bar.update(1)
            if (eval_every is not None and step % eval_every == 0) or step == steps:
                run_eval(step)
            if checkpoint_every is not None and step % checkpoint_every == 0 and step < end:
                history.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                save(step)
    finally:
        if bar is not None:
            bar.close()
    history.seconds += time.perf_counter() - t0
    save(step)
    return history
