"""Chapter 03's experiment: a small ViT with learned, flattened-1D or 2D RoPE positions.

Book chapter 03 (``03_rope_2d``), section "Experiment". Each position encoding
trains a :class:`PatchViT` at one resolution (AdamW through
:func:`kexue.experiments.loop.fit`: linear warm-up over the first 10% of the
steps, then cosine decay to zero) and is evaluated at every test side and test
mode of the config, RoPE models also with position interpolation::

    from kexue.experiments import ch03_rope as ch03

    result = ch03.run(ch03.CONFIGS.get())
    result.metrics["acc/rotary2d/upsample/16"]          # integer positions
    result.metrics["acc/rotary2d/upsample/16/interp"]   # interpolated positions

or ``python -m kexue.experiments 03 --profile book --seeds 0 1 2``.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kexue import checks
from kexue.data import load_digits, load_fashion_mnist
from kexue.experiments.config import Profiles
from kexue.experiments.loop import History, fit
from kexue.experiments.records import RunResult, fingerprint
from kexue.nn import TransformerConfig, TransformerEncoder, patchify
from kexue.rope import flat_positions, grid_positions
from kexue.utils import get_device, seed_everything

__all__ = [
    "ViTConfig",
    "CONFIGS",
    "POSITIONS",
    "RESIZE_MODES",
    "TEST_MODES",
    "PatchViT",
    "resize_images",
    "image_patch_mask",
    "load_images",
    "train_vit",
    "evaluate_vit",
    "acc_key",
    "evaluations",
    "verdicts",
    "run",
]

#: the position encodings compared
POSITIONS: tuple[str, ...] = ("learned", "rotary", "rotary2d")
#: how a test image reaches a larger side (see :func:`resize_images`)
RESIZE_MODES: tuple[str, ...] = ("upsample", "pad")
#: the test protocols: the two resize modes (all patches attend and are pooled), and two
#: that pad as ``"pad"`` but set the blank patches aside (see :func:`image_patch_mask`):
#: ``"pad_pool"`` mean-pools only the patches that hold the image (blank patches still
#: attend and are attended to); ``"pad_keys"`` also removes them from attention (keys)
TEST_MODES: tuple[str, ...] = (*RESIZE_MODES, "pad_pool", "pad_keys")


@dataclass(frozen=True)
class ViTConfig:
    """The position-encoding comparison: train at one size, test at larger ones."""

    dataset: str = "digits"  # "digits" (sklearn 8x8) or "fashion_mnist" (28x28)
    image_size: int = 8  # training resolution (pixels per side)
    test_sizes: tuple[int, ...] = (8, 12, 16)  # evaluation sides in pixels (see test_modes)
    test_modes: tuple[str, ...] = TEST_MODES  # how test images reach a larger side (and are pooled)
    patch: int = 2  # patch side in pixels; grid side = image_size // patch
    dim: int = 64  # model width
    depth: int = 2  # transformer blocks
    heads: int = 4  # attention heads (head size must be divisible by 4 for 2D RoPE)
    ffn_dim: int = 128  # FFN inner width
    rope_base: float = 100.0  # RoPE base; small grids want a small base (rope-vit uses 10-100)
    epochs: int = 8  # passes over the training set
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # AdamW peak learning rate
    warmup_fraction: float = 0.1  # linear warm-up over this fraction of the steps, then cosine decay
    weight_decay: float = 0.05  # AdamW weight decay
    dropout: float = 0.0  # hidden dropout
    test_fraction: float = 0.2  # digits only: held-out fraction
    train_limit: int | None = None  # cap on training images (None: all)
    test_limit: int | None = None  # cap on test images (None: all)
    split_seed: int = 0  # digits only: the train/test split (fixed across run seeds)
    positions: tuple[str, ...] = POSITIONS  # encodings compared

    def __post_init__(self) -> None:
        checks.choice("dataset", self.dataset, ("digits", "fashion_mnist"))
        for name in ("image_size", "patch", "dim", "depth", "heads", "ffn_dim", "epochs", "batch_size"):
            checks.positive_int(name, getattr(self, name))
        if self.image_size % self.patch:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch ({self.patch})")
        if self.dim % self.heads or (self.dim // self.heads) % 4:
            raise ValueError(f"dim / heads must be an int divisible by 4 (2D RoPE), got {self.dim} / {self.heads}")
        for size in self.test_sizes:
            checks.positive_int("test size", size)
            if size % self.patch:
                raise ValueError(f"test size {size} must be a multiple of patch ({self.patch})")
        for mode in self.test_modes:
            checks.choice("test mode", mode, TEST_MODES)
        for position in self.positions:
            checks.choice("position", position, POSITIONS)
        checks.float_in("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        checks.float_in("test_fraction", self.test_fraction, 0.0, 1.0)
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None:
                checks.positive_int(name, getattr(self, name))

    @property
    def grid(self) -> int:
        """Patches per side at the training resolution."""
        return self.image_size // self.patch


CONFIGS: Profiles[ViTConfig] = Profiles(
    # digits at 8x8 (a 4x4 grid): the notebook's run, a few minutes on one CPU thread
    smoke=ViTConfig(),
    # Fashion-MNIST at 28x28 (a 7x7 grid): 10k training and 2k test images, a narrow
    # 4-block model, 790 steps per encoding (estimated 20-30 minutes per seed on a CPU)
    book=ViTConfig(
        dataset="fashion_mnist", image_size=28, test_sizes=(28, 40, 56), patch=4, dim=64, depth=4, heads=4,
        ffn_dim=128, epochs=10, batch_size=128, lr=2e-3, train_limit=10_000, test_limit=2_000,
    ),
    # all of Fashion-MNIST and a ViT-Tiny-sized model: a GPU run
    full=ViTConfig(
        dataset="fashion_mnist", image_size=28, test_sizes=(28, 40, 56), patch=4, dim=192, depth=6, heads=6,
        ffn_dim=768, rope_base=100.0, epochs=30, batch_size=128, lr=1e-3, dropout=0.1,
    ),
)


def resize_images(images: torch.Tensor, size: int, mode: str = "upsample", *, align: int = 1) -> torch.Tensor:
    """Make ``(n, h, w)`` images ``(n, size, size)``.

    ``mode="upsample"``: bilinear resize (same content, finer grid; the usual
    "test at a higher resolution" protocol). ``mode="pad"``: centre the image on
    a larger zero canvas (same scale, larger field of view), its top-left offset
    rounded down to a multiple of ``align`` (pass the patch side, so that every
    patch of the original image is a patch of the padded one).
    """
    if images.dim() != 3:
        raise ValueError(f"images must have shape (n, h, w), got {tuple(images.shape)}")
    checks.choice("mode", mode, RESIZE_MODES)
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if mode == "upsample":
        return F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    checks.positive_int("align", align)
    if size < h or size < w:
        raise ValueError(f"mode='pad' needs size >= the image sides {(h, w)}, got {size}")
    top, left = (size - h) // 2 // align * align, (size - w) // 2 // align * align
    return F.pad(images, (left, size - w - left, top, size - h - top))


def image_patch_mask(side: tuple[int, int], size: int, patch: int) -> torch.Tensor:
    """Which patches of a ``size x size`` canvas hold an image of sides ``side`` padded onto it.

    The canvas is the one ``resize_images(images, size, "pad", align=patch)``
    makes. Returns a boolean ``((size // patch) ** 2,)`` mask over the row-major
    patch grid, true where a patch overlaps the image.
    """
    h, w = side
    checks.positive_int("patch", patch)
    if size % patch or size < h or size < w:
        raise ValueError(f"size ({size}) must be a multiple of patch ({patch}) and >= the image sides {side}")
    top, left = (size - h) // 2 // patch * patch, (size - w) // 2 // patch * patch
    cells = torch.arange(size // patch)
    rows = (cells * patch < top + h) & ((cells + 1) * patch > top)
    cols = (cells * patch < left + w) & ((cells + 1) * patch > left)
    return (rows[:, None] & cols[None, :]).flatten()


def load_images(cfg: ViTConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)`` of ``cfg.dataset`` at its native resolution."""
    if cfg.dataset == "digits":
        x, y = load_digits()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.split_seed))
        n_test = int(round(cfg.test_fraction * len(x)))
        test, train = order[:n_test], order[n_test:]
        tx, ty, vx, vy = x[train], y[train], x[test], y[test]
    else:
        tx, ty = load_fashion_mnist("train")
        vx, vy = load_fashion_mnist("test")
    if cfg.train_limit is not None:
        tx, ty = tx[: cfg.train_limit], ty[: cfg.train_limit]
    if cfg.test_limit is not None:
        vx, vy = vx[: cfg.test_limit], vy[: cfg.test_limit]
    return tx, ty, vx, vy


class PatchViT(nn.Module):
    """Patchify -> linear embedding -> :class:`kexue.nn.TransformerEncoder` -> mean pool -> linear.

    ``position`` is passed to the encoder: ``"learned"`` (absolute table over
    the flattened training grid, bilinearly interpolated to larger grids),
    ``"rotary"`` (1D RoPE of the flattened index ``row * w + col``) or
    ``"rotary2d"`` (2D RoPE of ``(row, col)``). There is no CLS token: mean
    pooling keeps every token a patch with a position.
    """

    def __init__(self, cfg: ViTConfig, position: str, num_classes: int = 10) -> None:
        super().__init__()
        checks.choice("position", position, POSITIONS)
        self.cfg, self.position = cfg, position
        self.grid = cfg.grid
        tcfg = TransformerConfig(
            vocab_size=1, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, ffn_dim=cfg.ffn_dim,
            max_len=4096, dropout=cfg.dropout, attention_dropout=0.0, norm="pre",
            position="none" if position == "learned" else position, rope_base=cfg.rope_base,
        )
        self.patch_embed = nn.Linear(cfg.patch * cfg.patch, cfg.dim)
        self.pos_table = (
            nn.Parameter(0.02 * torch.randn(1, cfg.dim, self.grid, self.grid)) if position == "learned" else None
        )
        self.encoder = TransformerEncoder(tcfg)
        # BERT's N(0, 0.02) suits width 768; at width 64 it leaves the blocks near
        # zero for hundreds of steps, so use a fan-in scaled init instead.
        for module in self.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        self.head = nn.Linear(cfg.dim, num_classes)

    def forward(
        self, images: torch.Tensor, *, interpolate: bool = False, patch_mask: torch.Tensor | None = None,
        mask_keys: bool = False,
    ) -> torch.Tensor:
        """``images`` ``(batch, H, W)`` with ``H, W`` multiples of the patch -> logits ``(batch, classes)``.

        On a grid larger than the training grid, RoPE positions are integers
        (extrapolation) unless ``interpolate=True``, which scales them by
        ``train_grid / grid`` (position interpolation, as EVA-02 does). The learned
        table is always bilinearly interpolated (it has no entries to extrapolate).
        ``patch_mask`` (boolean, one entry per patch, row-major) restricts the mean
        pool to the marked patches; the others still take part in attention unless
        ``mask_keys=True``, which also hides them as attention keys (the encoder's
        padding mask).
        """
        x = self.patch_embed(patchify(images, self.cfg.patch))  # (b, h*w, dim)
        h, w = images.shape[-2] // self.cfg.patch, images.shape[-1] // self.cfg.patch
        grid = grid_positions(h, w, device=images.device)  # (h*w, 2)
        if interpolate and (h, w) != (self.grid, self.grid):
            grid = grid * torch.tensor([self.grid / h, self.grid / w], device=images.device)
        positions = None
        if self.position == "learned":
            table = self.pos_table
            if (h, w) != (self.grid, self.grid):
                table = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False)
            x = x + table.flatten(2).transpose(1, 2)
        elif self.position == "rotary":
            positions = flat_positions(grid, self.grid if interpolate else w)  # (h*w,)
        else:
            positions = grid[None]  # (1, h*w, 2)
        if patch_mask is not None:
            if patch_mask.dtype != torch.bool or patch_mask.shape != (x.shape[1],) or not patch_mask.any():
                raise ValueError(f"patch_mask must be a non-empty boolean ({x.shape[1]},) mask over the patches")
            patch_mask = None if patch_mask.all() else patch_mask.to(x.device)  # all: the plain path
        elif mask_keys:
            raise ValueError("mask_keys=True needs a patch_mask")
        keys = patch_mask.expand(x.shape[0], -1) if mask_keys and patch_mask is not None else None
        x = self.encoder(inputs_embeds=x, mask=keys, positions=positions)
        if patch_mask is not None:
            x = x[:, patch_mask]
        return self.head(x.mean(dim=1))


def train_vit(
    cfg: ViTConfig, position: str, data: tuple[torch.Tensor, torch.Tensor], *, seed: int = 0,
    device: torch.device | None = None, max_steps: int | None = None, progress: bool | None = None,
) -> tuple[PatchViT, History]:
    """Train a :class:`PatchViT` on ``data`` (images at any side, resized to ``cfg.image_size``).

    ``cfg.epochs`` passes in batches of ``cfg.batch_size`` (a fresh shuffle per
    epoch, drawn from ``seed``; the last batch of an epoch may be smaller), AdamW
    with a linear warm-up over ``cfg.warmup_fraction`` of the steps and cosine
    decay. ``max_steps`` stops early on the same schedule (for tests). Returns
    the model in eval mode and the loop's history.
    """
    device = device or torch.device("cpu")
    x, y = data
    x = resize_images(x, cfg.image_size)
    seed_everything(seed)
    model = PatchViT(cfg, position).to(device)
    per_epoch = math.ceil(len(x) / cfg.batch_size)
    steps = cfg.epochs * per_epoch
    orders: dict[int, torch.Tensor] = {}

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, per_epoch)
        if epoch not in orders:
            orders.clear()
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            orders[epoch] = torch.randperm(len(x), generator=g)
        idx = orders[epoch][i * cfg.batch_size: (i + 1) * cfg.batch_size]
        return x[idx].to(device), y[idx].to(device)

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    history = fit(
        model, batch_at, loss_fn, steps=steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
        warmup=round(cfg.warmup_fraction * steps), schedule="cosine", seed=seed, stop_at=max_steps,
        progress=progress, desc=position,
    )
    model.eval()
    return model, history


@torch.no_grad()
def evaluate_vit(model: PatchViT, images: torch.Tensor, labels: torch.Tensor, size: int,
                 *, mode: str = "upsample", interpolate: bool = False, batch_size: int = 512) -> float:
    """Accuracy of ``model`` on ``images`` brought to ``size x size`` by test mode ``mode``.

    ``"upsample"`` and ``"pad"`` are :func:`resize_images` modes (padding aligned
    to the patch grid), mean-pooled over all patches. ``"pad_pool"`` pads the same
    way and pools only over the patches that hold the image
    (:func:`image_patch_mask`); ``"pad_keys"`` also hides the blank patches as
    attention keys, so the image's patches see only each other.
    """
    checks.choice("mode", mode, TEST_MODES)
    model.eval()
    device = next(model.parameters()).device
    patch = model.cfg.patch
    padded = mode in ("pad_pool", "pad_keys")
    x = resize_images(images, size, "pad" if padded else mode, align=patch)
    mask = image_patch_mask(tuple(images.shape[-2:]), size, patch) if padded else None
    correct = 0
    for start in range(0, len(x), batch_size):
        batch = x[start: start + batch_size].to(device)
        logits = model(batch, interpolate=interpolate, patch_mask=mask, mask_keys=mode == "pad_keys")
        correct += (logits.argmax(-1).cpu() == labels[start: start + batch_size]).sum().item()
    return correct / len(x)


def acc_key(position: str, mode: str, size: int, interpolate: bool = False) -> str:
    """The metric name of one evaluation: ``acc/<position>/<mode>/<size>[/interp]``."""
    return f"acc/{position}/{mode}/{size}" + ("/interp" if interpolate else "")


def evaluations(cfg: ViTConfig, position: str) -> list[tuple[str, int, bool]]:
    """``(mode, size, interpolate)`` of every evaluation of ``position``.

    RoPE models are evaluated with and without position interpolation at every
    size other than the training size; the learned table only one way (it is
    always resized).
    """
    return [
        (mode, size, interp)
        for mode in cfg.test_modes
        for size in cfg.test_sizes
        for interp in ((False, True) if position != "learned" and size != cfg.image_size else (False,))
    ]


def verdicts(cfg: ViTConfig, metrics: dict[str, float]) -> dict[str, bool]:
    """The comparisons the chapter states, each computed from one run's ``metrics``.

    ``mid`` and ``big`` are the second-smallest and the largest test side. The
    claims are about one run (one seed); a record over several seeds shows how
    often each holds. Needs ``cfg.positions`` to be all of :data:`POSITIONS` and
    ``cfg.test_modes`` all of :data:`TEST_MODES`.
    """
    if set(cfg.positions) != set(POSITIONS) or set(cfg.test_modes) != set(TEST_MODES):
        raise ValueError("verdicts need every position encoding and every test mode")
    sizes = sorted(cfg.test_sizes)
    mid, big = sizes[1], sizes[-1]

    def acc(position: str, mode: str, size: int, interp: bool = False) -> float:
        return metrics[acc_key(position, mode, size, interp)]

    train = {p: acc(p, "upsample", cfg.image_size) for p in POSITIONS}
    return {
        "at training size, 2D RoPE within 5 points of the best": train["rotary2d"] >= max(train.values()) - 0.05,
        f"upsample@{mid}: 2D RoPE beats flattened 1D RoPE": acc("rotary2d", "upsample", mid)
        > acc("rotary", "upsample", mid),
        f"upsample@{mid}: 2D RoPE beats learned (resized table)": acc("rotary2d", "upsample", mid)
        > acc("learned", "upsample", mid),
        f"upsample@{big}: 2D RoPE + interpolation beats learned": acc("rotary2d", "upsample", big, True)
        > acc("learned", "upsample", big),
        f"upsample@{big}: interpolation helps 2D RoPE": acc("rotary2d", "upsample", big, True)
        > acc("rotary2d", "upsample", big),
        f"pad@{big}: every model ends more than 30 points below its training accuracy": all(
            acc(p, "pad", big) < train[p] - 0.3 for p in POSITIONS
        ),
        f"pad_pool@{big}: so does every model when only the image's patches are pooled": all(
            acc(p, "pad_pool", big) < train[p] - 0.3 for p in POSITIONS
        ),
        f"pad_keys@{big}: 2D RoPE beats flattened 1D RoPE and learned": acc("rotary2d", "pad_keys", big)
        > max(acc("rotary", "pad_keys", big), acc("learned", "pad_keys", big)),
    }


def _image_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    items = [
        hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest()[:16] + f":{int(label)}"
        for img, label in zip(images, labels)
    ]
    return fingerprint(items)


def run(cfg: ViTConfig, seed: int = 0, *, device: torch.device | None = None) -> RunResult:
    """Train one :class:`PatchViT` per position encoding of ``cfg`` and evaluate each at every test size and mode.

    ``metrics``: ``acc_key(position, mode, size, interpolate)`` for every entry
    of :func:`evaluations`, and ``loss/<position>`` (mean of the last 10
    training losses). ``artifacts``: ``losses`` and ``seconds`` per position,
    the trained ``models`` (eval mode), ``table`` (one row per position and
    interpolation setting, one column per ``"<mode>@<size>"``), and the
    ``train_shape`` / ``test_shape`` of the images.
    """
    device = device or get_device()
    train_x, train_y, test_x, test_y = load_images(cfg)
    metrics: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    models: dict[str, PatchViT] = {}
    for position in cfg.positions:
        start = time.perf_counter()
        model, history = train_vit(cfg, position, (train_x, train_y), seed=seed, device=device)
        for mode, size, interp in evaluations(cfg, position):
            acc = evaluate_vit(model, test_x, test_y, size, mode=mode, interpolate=interp)
            metrics[acc_key(position, mode, size, interp)] = acc
        losses[position] = history.losses
        metrics[f"loss/{position}"] = sum(history.losses[-10:]) / len(history.losses[-10:])
        seconds[position] = time.perf_counter() - start
        models[position] = model.cpu()
    columns = [f"{mode}@{size}" for mode in cfg.test_modes for size in cfg.test_sizes]
    rows = []
    for position in cfg.positions:
        for interp in (False, True) if position != "learned" else (False,):
            row: dict[str, Any] = {"position": position, "interpolate": interp}
            for mode in cfg.test_modes:
                for size in cfg.test_sizes:
                    key = acc_key(position, mode, size, interp)
                    row[f"{mode}@{size}"] = metrics.get(key, metrics[acc_key(position, mode, size)])
            rows.append(row)
    return RunResult(
        metrics=metrics,
        artifacts={
            "losses": losses, "seconds": seconds, "models": models,
            "table": {"columns": columns, "rows": rows},
            "train_shape": tuple(train_x.shape), "test_shape": tuple(test_x.shape),
        },
        data={
            f"{cfg.dataset}/train": _image_fingerprint(train_x, train_y),
            f"{cfg.dataset}/test": _image_fingerprint(test_x, test_y),
        },
    )
