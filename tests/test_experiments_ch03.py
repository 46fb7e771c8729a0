"""Tests for chapter 03's experiment (kexue.experiments.ch03_rope): configs, the ViT, training, run()."""

from __future__ import annotations

import dataclasses
import gzip
import struct

import pytest
import torch

from kexue.data import load_fashion_mnist
from kexue.experiments import ch03_rope as ch03
from kexue.experiments.config import Profiles
from kexue.experiments.loop import History
from kexue.experiments.records import RunResult
from kexue.nn import patchify




TINY = dict(dim=32, heads=2, ffn_dim=32, depth=1)


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------
def test_configs_are_three_frozen_profiles():
    assert isinstance(ch03.CONFIGS, Profiles) and set(ch03.CONFIGS) == {"smoke", "book", "full"}
    for cfg in ch03.CONFIGS.values():
        assert (cfg.dim // cfg.heads) % 4 == 0 and cfg.image_size % cfg.patch == 0
        assert all(s % cfg.patch == 0 for s in cfg.test_sizes) and max(cfg.test_sizes) > cfg.image_size
        assert cfg.image_size in cfg.test_sizes
    with pytest.raises(dataclasses.FrozenInstanceError):
        ch03.CONFIGS["smoke"].epochs = 1  # type: ignore[misc]
    smoke, book = ch03.CONFIGS["smoke"], ch03.CONFIGS["book"]
    assert book.dataset == "fashion_mnist" and book.epochs >= smoke.epochs


def test_profile_lookup(monkeypatch):
    monkeypatch.setenv("KEXUE_PROFILE", "full")
    assert ch03.CONFIGS.get() is ch03.CONFIGS["full"]
    with pytest.raises(ValueError, match="profile"):
        ch03.CONFIGS["huge"]


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(dataset="cifar"), "dataset"),
        (dict(image_size=9), "divisible by patch"),
        (dict(dim=40, heads=4), "divisible by 4"),
        (dict(test_sizes=(8, 13)), "multiple of patch"),
        (dict(test_modes=("crop",)), "test mode"),
        (dict(positions=("sinusoidal",)), "position"),
        (dict(warmup_fraction=1.5), "warmup_fraction"),
        (dict(epochs=0), "epochs"),
        (dict(test_limit=0), "test_limit"),
    ],
)
def test_bad_config_raises(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(ch03.CONFIGS["smoke"], **change)


# ---------------------------------------------------------------------------
# every profile: its model builds and takes one training step
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["smoke", "book", "full"])
@pytest.mark.parametrize("position", ch03.POSITIONS)
def test_every_profile_builds_and_takes_one_step(profile, position):
    cfg = dataclasses.replace(ch03.CONFIGS[profile], batch_size=2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, cfg.image_size, cfg.image_size, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    model, history = ch03.train_vit(cfg, position, (x, y), max_steps=1, progress=False)
    assert history.steps == [1] and torch.isfinite(torch.tensor(history.losses)).all()
    assert model.grid == cfg.image_size // cfg.patch and not model.training
    assert sum(p.numel() for p in model.parameters()) > cfg.dim * cfg.dim * cfg.depth
    # the step moved the weights away from the seeded initialisation
    torch.manual_seed(0)
    fresh = ch03.PatchViT(cfg, position)
    moved = [not torch.equal(a, b) for a, b in zip(model.head.parameters(), fresh.head.parameters())]
    assert any(moved)
    logits = model(ch03.resize_images(x[:2], max(cfg.test_sizes)))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("position", ch03.POSITIONS)
def test_vit_runs_at_train_and_larger_resolution(position):
    cfg = dataclasses.replace(ch03.CONFIGS["smoke"], **TINY)
    model = ch03.PatchViT(cfg, position)
    for size in (8, 16):
        for interpolate in (False, True):
            logits = model(torch.rand(3, size, size), interpolate=interpolate)
            assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="patch"):
        model(torch.rand(3, 9, 9))
    with pytest.raises(ValueError, match="position"):
        ch03.PatchViT(cfg, "sinusoidal")


def test_vit_tokens_are_nn_patchify_patches():
    cfg = dataclasses.replace(ch03.CONFIGS["smoke"], **TINY)
    model = ch03.PatchViT(cfg, "rotary2d").eval()
    images = torch.rand(2, 8, 8)
    seen = {}
    model.patch_embed.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    model(images)
    # token r * 4 + c holds the 2x2 pixels of grid cell (r, c), row-major
    assert seen["x"].shape == (2, 16, 4)
    torch.testing.assert_close(seen["x"][:, 1 * 4 + 2], images[:, 2:4, 4:6].reshape(2, 4))


def test_interpolation_changes_rope_outputs_only_off_the_training_grid():
    cfg = dataclasses.replace(ch03.CONFIGS["smoke"], **TINY)
    model = ch03.PatchViT(cfg, "rotary2d").eval()
    at_train, bigger = torch.rand(2, 8, 8), torch.rand(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(at_train, interpolate=True), model(at_train))
        assert (model(bigger, interpolate=True) - model(bigger)).abs().max() > 1e-6


def test_resize_modes():
    x = torch.rand(2, 8, 8)
    up = ch03.resize_images(x, 16)
    assert up.shape == (2, 16, 16)
    torch.testing.assert_close(up.mean((1, 2)), x.mean((1, 2)), rtol=1e-5, atol=1e-5)
    pad = ch03.resize_images(x, 12, "pad")
    assert torch.equal(pad[:, 2:10, 2:10], x)
    torch.testing.assert_close(pad.sum(), x.sum())
    with pytest.raises(ValueError, match="mode"):
        ch03.resize_images(x, 12, "crop")
    with pytest.raises(ValueError, match="size"):
        ch03.resize_images(x, 4, "pad")


@pytest.mark.parametrize("side,size,patch", [(8, 12, 2), (8, 16, 2), (28, 40, 4), (28, 56, 4)])
def test_image_patch_mask_marks_exactly_the_image_patches(side, size, patch):
    x = torch.rand(3, side, side) + 0.1  # no blank pixel inside the image
    padded = ch03.resize_images(x, size, "pad", align=patch)
    mask = ch03.image_patch_mask((side, side), size, patch)
    assert mask.shape == ((size // patch) ** 2,) and int(mask.sum()) == (side // patch) ** 2
    # the marked patches are the image's own patches, in order; the others are blank
    tokens = patchify(padded, patch)
    torch.testing.assert_close(tokens[:, mask], patchify(x, patch), rtol=0, atol=0)
    assert tokens[:, ~mask].abs().max() == 0


def test_unaligned_padding_cuts_the_image_into_other_patches():
    # 28 -> 40 centres the image at offset 6, not a multiple of the patch 4: without
    # align the padded image is cut differently, which the aligned protocol avoids
    x = torch.rand(2, 28, 28) + 0.1
    unaligned = patchify(ch03.resize_images(x, 40, "pad"), 4)
    mask = ch03.image_patch_mask((28, 28), 40, 4)
    assert int(mask.sum()) == 49 and not torch.equal(unaligned[:, mask], patchify(x, 4))
    with pytest.raises(ValueError, match="align"):
        ch03.resize_images(x, 40, "pad", align=0)
    with pytest.raises(ValueError, match="multiple of patch"):
        ch03.image_patch_mask((28, 28), 42, 4)


def _padded_logits(model, x, size, **kwargs):
    padded = ch03.resize_images(x, size, "pad", align=model.cfg.patch)
    mask = ch03.image_patch_mask(tuple(x.shape[-2:]), size, model.cfg.patch)
    return model(padded, patch_mask=mask, **kwargs)


@pytest.mark.parametrize("position", ch03.POSITIONS)
def test_hiding_blank_patches_leaves_only_2d_rope_unchanged(position):
    # pad_keys: the image's patches see only each other at shifted positions; 2D RoPE is
    # relative, so its logits are those at the training size. Flattened 1D RoPE (the row
    # width changes) and the learned table (it is resized) are not. Without hiding the
    # blank patches as keys (pad_pool), none is unchanged.
    cfg = dataclasses.replace(ch03.CONFIGS["smoke"], **TINY)
    torch.manual_seed(0)
    model = ch03.PatchViT(cfg, position).eval()
    with torch.no_grad():  # a random model has a near-zero head: make the logits spread
        model.head.weight.mul_(50.0)
    x = torch.rand(4, 8, 8)
    with torch.no_grad():
        ref = model(x)
        scale = ref.abs().max().item()  # float32 rounding is relative to it
        for size in (12, 16):
            keys_gap = (_padded_logits(model, x, size, mask_keys=True) - ref).abs().max().item()
            pool_gap = (_padded_logits(model, x, size) - ref).abs().max().item()
            assert pool_gap > 1e-3 * scale
            if position == "rotary2d":
                assert keys_gap < 1e-5 * scale
            else:
                assert keys_gap > 1e-3 * scale


def test_patch_mask_is_validated():
    cfg = dataclasses.replace(ch03.CONFIGS["smoke"], **TINY)
    model = ch03.PatchViT(cfg, "rotary2d").eval()
    x = torch.rand(2, 12, 12)  # a 6x6 grid
    with pytest.raises(ValueError, match="patch_mask"):
        model(x, patch_mask=torch.ones(16, dtype=torch.bool))
    with pytest.raises(ValueError, match="patch_mask"):
        model(x, patch_mask=torch.ones(36))
    with pytest.raises(ValueError, match="patch_mask"):
        model(x, patch_mask=torch.zeros(36, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs a patch_mask"):
        model(x, mask_keys=True)
    # an all-true mask is the plain path, bit for bit
    with torch.no_grad():
        every = torch.ones(36, dtype=torch.bool)
        assert torch.equal(model(x, patch_mask=every, mask_keys=True), model(x))
    with pytest.raises(ValueError, match="mode"):
        ch03.evaluate_vit(model, x, torch.zeros(2, dtype=torch.long), 12, mode="crop")


def _metrics(cfg, value=0.5, train=0.9):
    metrics = {}
    for position in cfg.positions:
        for mode, size, interp in ch03.evaluations(cfg, position):
            metrics[ch03.acc_key(position, mode, size, interp)] = train if size == cfg.image_size else value
    return metrics


def test_verdicts_follow_the_metrics():
    cfg = ch03.CONFIGS["smoke"]
    base = _metrics(cfg)
    verdicts = ch03.verdicts(cfg, base)
    assert len(verdicts) == 8 and all(isinstance(v, bool) for v in verdicts.values())
    beats_1d = "upsample@12: 2D RoPE beats flattened 1D RoPE"
    assert verdicts[beats_1d] is False  # ties are not wins
    assert ch03.verdicts(cfg, {**base, "acc/rotary2d/upsample/12": 0.6})[beats_1d] is True
    assert ch03.verdicts(cfg, {**base, "acc/rotary/upsample/12": 0.6})[beats_1d] is False
    train = "at training size, 2D RoPE within 5 points of the best"
    assert verdicts[train] is True
    worse = {**base, **{f"acc/rotary2d/{m}/8": 0.8 for m in ch03.TEST_MODES}}
    assert ch03.verdicts(cfg, worse)[train] is False
    pad = "pad@16: every model ends more than 30 points below its training accuracy"
    assert verdicts[pad] is True  # 0.5 is 40 points below 0.9
    one_high = {**base, "acc/learned/pad/16": 0.7}  # one model only 20 points below
    assert ch03.verdicts(cfg, one_high)[pad] is False
    keys = "pad_keys@16: 2D RoPE beats flattened 1D RoPE and learned"
    assert ch03.verdicts(cfg, {**base, "acc/rotary2d/pad_keys/16": 0.9})[keys] is True
    with pytest.raises(ValueError, match="every"):
        ch03.verdicts(dataclasses.replace(cfg, positions=("rotary2d",)), base)


# ---------------------------------------------------------------------------
# training and the whole run
# ---------------------------------------------------------------------------
def test_training_lowers_the_loss_and_is_deterministic():
    cfg = dataclasses.replace(ch03.CONFIGS["smoke"], dim=32, heads=2, ffn_dim=64, depth=1, epochs=40,
                              train_limit=32, batch_size=32, lr=3e-3)
    tx, ty, _, _ = ch03.load_images(cfg)
    _, history = ch03.train_vit(cfg, "rotary2d", (tx, ty), progress=False)
    assert len(history.losses) == 40
    assert sum(history.losses[-5:]) / 5 < 0.75 * sum(history.losses[:5]) / 5
    # warm-up over 10% of the steps, then cosine decay to zero
    assert history.lrs[3] == pytest.approx(cfg.lr) and history.lrs[0] == pytest.approx(cfg.lr / 4)
    assert history.lrs[-1] < 0.01 * cfg.lr
    _, again = ch03.train_vit(cfg, "rotary2d", (tx, ty), progress=False, max_steps=5)
    assert again.losses == history.losses[:5]


def test_batches_cover_each_epoch_once_and_the_schedule_is_warmup_cosine(monkeypatch):
    cfg = dataclasses.replace(ch03.CONFIGS["smoke"], **TINY, batch_size=4, epochs=2)
    x = torch.arange(10, dtype=torch.float32)[:, None, None].expand(10, 8, 8).clone()  # image i is all i
    y = torch.zeros(10, dtype=torch.long)
    seen, options = [], {}

    def fake_fit(model, batch_at, loss_fn, *, steps, **kwargs):
        seen.extend(batch_at(s)[0][:, 0, 0].long().tolist() for s in range(steps))
        options.update(kwargs)
        return History()

    monkeypatch.setattr(ch03, "fit", fake_fit)
    ch03.train_vit(cfg, "learned", (x, y))
    assert [len(b) for b in seen] == [4, 4, 2, 4, 4, 2]  # the last batch of an epoch is smaller
    first, second = sum(seen[:3], []), sum(seen[3:], [])
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second  # a fresh shuffle per epoch
    assert options["warmup"] == 1 and options["schedule"] == "cosine"  # 10% of 6 steps
    assert options["lr"] == cfg.lr and options["weight_decay"] == cfg.weight_decay


def test_run_reports_every_evaluation():
    cfg = dataclasses.replace(ch03.CONFIGS["smoke"], **TINY, epochs=1, train_limit=64, batch_size=32)
    result = ch03.run(cfg, seed=0, device=torch.device("cpu"))
    assert isinstance(result, RunResult)
    for position in cfg.positions:
        for mode, size, interp in ch03.evaluations(cfg, position):
            acc = result.metrics[ch03.acc_key(position, mode, size, interp)]
            assert 0.0 <= acc <= 1.0
        assert len(result.artifacts["losses"][position]) == 2
        assert result.metrics[f"loss/{position}"] > 0
    assert ch03.acc_key("rotary2d", "upsample", 16) == "acc/rotary2d/upsample/16"
    assert "acc/rotary2d/upsample/16/interp" in result.metrics
    assert "acc/learned/upsample/16/interp" not in result.metrics
    assert "acc/rotary2d/upsample/8/interp" not in result.metrics  # no interpolation at the training size
    # every test mode agrees at the training size (the images and the pool are unchanged)
    for mode in ("pad", "pad_pool", "pad_keys"):
        assert result.metrics[f"acc/rotary/{mode}/8"] == result.metrics["acc/rotary/upsample/8"]
    assert "acc/rotary2d/pad_keys/16/interp" in result.metrics
    table = result.artifacts["table"]
    assert table["columns"] == [f"{m}@{s}" for m in cfg.test_modes for s in cfg.test_sizes]
    assert [(r["position"], r["interpolate"]) for r in table["rows"]] == [
        ("learned", False), ("rotary", False), ("rotary", True), ("rotary2d", False), ("rotary2d", True)
    ]
    assert table["rows"][2]["upsample@16"] == result.metrics["acc/rotary/upsample/16/interp"]
    assert table["rows"][2]["upsample@8"] == result.metrics["acc/rotary/upsample/8"]
    assert result.artifacts["train_shape"] == (64, 8, 8) and result.artifacts["test_shape"][1:] == (8, 8)
    assert set(result.data) == {"digits/train", "digits/test"} and result.data["digits/train"]["size"] == 64
    # the run is reproducible: same seed, same metrics
    again = ch03.run(dataclasses.replace(cfg, positions=("rotary2d",)), seed=0, device=torch.device("cpu"))
    assert again.metrics["acc/rotary2d/upsample/16"] == result.metrics["acc/rotary2d/upsample/16"]


def test_digits_split_is_fixed_by_split_seed():
    cfg = ch03.CONFIGS["smoke"]
    tx, ty, vx, vy = ch03.load_images(cfg)
    assert len(tx) + len(vx) == 1797 and len(vx) == round(0.2 * 1797)
    tx2, *_ = ch03.load_images(cfg)
    assert torch.equal(tx, tx2)
    other, *_ = ch03.load_images(dataclasses.replace(cfg, split_seed=1))
    assert not torch.equal(tx, other)
    limited = ch03.load_images(dataclasses.replace(cfg, train_limit=100, test_limit=50))
    assert [len(t) for t in limited] == [100, 100, 50, 50] and torch.equal(limited[2], vx[:50])


def _write_idx(path, array: torch.Tensor) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.dim()) + b"".join(struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.to(torch.uint8).numpy().tobytes())


def test_fashion_mnist_loader_reads_idx_and_names_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    images = torch.randint(0, 256, (5, 28, 28))
    labels = torch.randint(0, 10, (5,))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.dtype == torch.float32 and x.shape == (5, 28, 28)
    torch.testing.assert_close(x, images.float() / 255)
    assert torch.equal(y, labels.long())
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val", root=tmp_path)
