"""The experiments layer's shared parts: the training loop, the config pattern, records, the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from kexue.experiments import CHAPTERS
from kexue.experiments.__main__ import main as cli_main
from kexue.experiments.config import Profiles, config_dict, config_hash
from kexue.experiments.loop import History, fit, lr_factor
from kexue.experiments.records import fingerprint, load_record, record_path, run_record, summarize


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(64, generator=g)

    def batch_at(step: int):
        idx = torch.randperm(64, generator=torch.Generator().manual_seed(step))[:16]
        return x[idx], y[idx]

    def loss_fn(model, batch):
        xb, yb = batch
        return nn.functional.mse_loss(model(xb).squeeze(-1), yb)

    return batch_at, loss_fn


def _model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(4, 1))


def test_fit_lowers_the_loss_and_records_evals():
    batch_at, loss_fn = _problem()
    model = _model()
    hist = fit(model, batch_at, loss_fn, steps=60, lr=0.05, warmup=5, eval_every=20,
               evaluate=lambda m: {"w0": m[1].weight[0, 0].item()}, eval_at_start=True, progress=False)
    assert isinstance(hist, History)
    assert len(hist.losses) == 60 and hist.steps[-1] == 60
    assert hist.losses[-1] < 0.5 * hist.losses[0]
    assert [e["step"] for e in hist.evals] == [0, 20, 40, 60]
    assert hist.lrs[0] == pytest.approx(0.05 / 5) and hist.lrs[4] == pytest.approx(0.05)
    assert hist.lrs[-1] < 1e-3  # cosine decays towards 0


def test_fit_is_deterministic_under_a_seed_with_dropout():
    batch_at, loss_fn = _problem()
    runs = []
    for _ in range(2):
        model = _model(dropout=0.3)
        runs.append(fit(model, batch_at, loss_fn, steps=10, lr=0.01, seed=3, progress=False).losses)
    assert runs[0] == runs[1]


def test_resume_matches_an_uninterrupted_run(tmp_path):
    batch_at, loss_fn = _problem()
    whole = _model(dropout=0.3)
    h_whole = fit(whole, batch_at, loss_fn, steps=12, lr=0.01, seed=1, progress=False)
    part = _model(dropout=0.3)
    h1 = fit(part, batch_at, loss_fn, steps=12, lr=0.01, seed=1, stop_at=5, checkpoint_dir=tmp_path,
             progress=False)
    assert h1.last_step == 5
    again = _model(dropout=0.3)  # a fresh process would rebuild the model the same way
    h2 = fit(again, batch_at, loss_fn, steps=12, lr=0.01, seed=1, checkpoint_dir=tmp_path, progress=False)
    assert h2.resumed_at == [5]
    assert h2.losses == h_whole.losses
    for a, b in zip(again.parameters(), whole.parameters()):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_run(tmp_path):
    batch_at, loss_fn = _problem()
    fit(_model(), batch_at, loss_fn, steps=4, lr=0.01, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(_model(), batch_at, loss_fn, steps=8, lr=0.01, checkpoint_dir=tmp_path, progress=False)


def test_step_fn_clipping_and_bf16():
    batch_at, loss_fn = _problem()
    model = _model()
    norms = []

    def step_fn(m, batch):
        loss = loss_fn(m, batch) * 100.0
        loss.backward()
        return loss

    def evaluate(m):
        return {}

    hist = fit(model, batch_at, step_fn=step_fn, steps=3, lr=0.01, clip_norm=1e-3, progress=False,
               evaluate=evaluate)
    assert len(hist.losses) == 3
    norms.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())
    assert norms[0] <= 1e-3 * (1 + 1e-4)
    hist = fit(_model(), batch_at, loss_fn, steps=3, lr=0.01, bf16=True, progress=False)
    assert all(torch.isfinite(torch.tensor(hist.losses)))


def test_fit_rejects_bad_arguments():
    batch_at, loss_fn = _problem()
    with pytest.raises(ValueError, match="steps"):
        fit(_model(), batch_at, loss_fn, steps=0)
    with pytest.raises(ValueError, match="exactly one"):
        fit(_model(), batch_at, loss_fn, step_fn=lambda m, b: 0.0, steps=1)
    with pytest.raises(ValueError, match="schedule"):
        fit(_model(), batch_at, loss_fn, steps=1, schedule="step")
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(_model(), batch_at, lambda m, b: torch.tensor(float("nan"), requires_grad=True), steps=1,
            progress=False)


def test_lr_factor_shapes():
    assert lr_factor(0, 10, 0, "constant") == 1.0
    assert lr_factor(0, 10, 0, "cosine") == 1.0
    assert lr_factor(10, 10, 0, "cosine") == pytest.approx(0.0)
    assert lr_factor(5, 10, 0, "linear") == pytest.approx(0.5)
    assert lr_factor(1, 10, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 0, "cosine", floor=0.1) == pytest.approx(0.1)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    a: int = 1
    b: tuple[int, ...] = (1, 2)


def test_profiles_are_read_only_and_complete(monkeypatch):
    table = Profiles(smoke=_Cfg(), book=_Cfg(a=2), full=_Cfg(a=3))
    monkeypatch.setenv("KEXUE_PROFILE", "book")
    assert table.get() == _Cfg(a=2)
    assert table.get("full").a == 3 and list(table) == ["smoke", "book", "full"]
    cfg = table.get("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.a = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        table._table = {}  # type: ignore[misc]
    assert table.get("smoke").a == 1
    with pytest.raises(ValueError, match="profile"):
        table.get("large")
    monkeypatch.setenv("KEXUE_PROFILE", "huge")
    with pytest.raises(ValueError, match="KEXUE_PROFILE"):
        table.get()


def test_profiles_refuse_mutable_or_mixed_configs():
    @dataclasses.dataclass
    class Mutable:
        a: int = 1

    with pytest.raises(TypeError, match="frozen"):
        Profiles(smoke=Mutable(), book=Mutable(), full=Mutable())
    with pytest.raises(TypeError, match="one class"):
        Profiles(smoke=_Cfg(), book=_Cfg(), full=Mutable())


def test_config_hash_follows_the_values():
    assert config_hash(_Cfg()) == config_hash(_Cfg())
    assert config_hash(_Cfg()) != config_hash(_Cfg(a=2))
    assert config_dict(_Cfg()) == {"class": "_Cfg", "a": 1, "b": [1, 2]}


def test_summary_interval():
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    assert s["ci95"][0] == pytest.approx(2.0 - 4.302652729911275 / 3**0.5)
    one = summarize([0.5])
    assert one["std"] is None and one["ci95"] is None
    with pytest.raises(ValueError):
        summarize([])


def test_run_record_and_paths(tmp_path):
    rec = run_record("chx", "smoke", _Cfg(), [0, 1], [{"f1": 0.5}, {"f1": 0.7}], seconds=1.0,
                     data={"train": fingerprint(["a", "b"])})
    assert rec["summary"]["f1"]["n"] == 2 and rec["config_hash"] == config_hash(_Cfg())
    assert rec["data"]["train"]["size"] == 2
    json.dumps(rec)
    with pytest.raises(ValueError):
        run_record("chx", "smoke", _Cfg(), [0], [], seconds=1.0)
    with pytest.raises(ValueError):
        record_path("../etc/passwd")
    with pytest.raises(FileNotFoundError, match="no_such_record"):
        load_record("no_such_record")


def test_every_shipped_record_loads():
    root = record_path("x").parent
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.json"))
    assert names, "no records shipped"
    for name in names:
        assert isinstance(load_record(name), dict)


def test_cli_dry_run(capsys):
    first = next(iter(CHAPTERS.values()))
    try:
        __import__(f"kexue.experiments.{first}")
    except ModuleNotFoundError:
        pytest.skip("chapter module not written yet")
    for name in (first, "01", "ch01", first.split("_", 1)[1]):
        assert cli_main([name, "--profile", "smoke", "--dry-run"]) == 0
        assert "record:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["nonexistent"])


@pytest.mark.parametrize("number", sorted(CHAPTERS))
def test_every_chapter_module_has_the_same_surface(number):
    """``CONFIGS`` (a Profiles table of one frozen config) and ``run(cfg, seed=...)``."""
    import importlib
    import inspect

    module = importlib.import_module(f"kexue.experiments.{CHAPTERS[number]}")
    assert isinstance(module.CONFIGS, Profiles)
    assert list(module.CONFIGS) == ["smoke", "book", "full"]
    params = inspect.signature(module.run).parameters
    assert list(params)[0] == "cfg" and "seed" in params
    for cfg in module.CONFIGS.values():
        config_hash(cfg)  # every config is plain data
    assert len({config_hash(c) for c in module.CONFIGS.values()}) == 3, "profiles must differ"


def test_a_session_past_its_time_budget_still_takes_one_step(tmp_path):
    """max_seconds=0 stops each session after one step, so repeated calls finish the run."""
    batch_at, loss_fn = _problem()
    whole = fit(_model(), batch_at, loss_fn, steps=4, lr=0.01, seed=2, progress=False)
    model, sessions = _model(), 0
    while True:
        hist = fit(model, batch_at, loss_fn, steps=4, lr=0.01, seed=2, max_seconds=0.0,
                   checkpoint_dir=tmp_path, progress=False)
        sessions += 1
        if hist.last_step == 4:
            break
        model = _model()
    assert sessions == 4 and hist.resumed_at == [1, 2, 3]
    assert hist.losses == whole.losses


def test_checkpoint_loads_without_pickle_and_restores_every_generator(tmp_path):
    """The loop's checkpoint holds only tensors and plain values; resuming restores Python's,
    NumPy's and torch's generators exactly."""
    import random

    import numpy as np

    from kexue.experiments.loop import CHECKPOINT_FILE, _set_rng_state

    batch_at, loss_fn = _problem()
    fit(_model(), batch_at, loss_fn, steps=4, lr=0.01, seed=5, stop_at=2, checkpoint_dir=tmp_path,
        progress=False)
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    draws_then = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    _set_rng_state(saved["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == draws_then


def test_two_processes_recording_seeds_of_one_record_keep_both(tmp_path, monkeypatch):
    """A seed finishing while another process wrote the record is merged, not overwritten.

    The fake chapter's seed 0, while it runs, records seed 1 through a second CLI
    call (standing in for a parallel process). The record must end with both.
    """
    import dataclasses
    import sys
    import types

    from kexue.experiments import __main__ as cli
    from kexue.experiments import records
    from kexue.experiments.records import RunResult

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        width: int = 1

    module = types.ModuleType("kexue.experiments.fake_chapter")
    module.CONFIGS = {"book": Cfg()}

    def run(cfg, seed):
        if seed == 0:
            cli_main(["fake_chapter", "--seeds", "1"])
        return RunResult(metrics={"score": float(seed)})

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli, "EXTRA_EXPERIMENTS", {"fake_chapter": "00"})
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    assert cli_main(["fake_chapter", "--seeds", "0"]) == 0
    rec = load_record("fake_chapter_book")
    assert sorted(zip(rec["seeds"], (m["score"] for m in rec["per_seed"]))) == [(0, 0.0), (1, 1.0)]
    # The inner call finished seed 1 first; running it again is a no-op.
    assert cli_main(["fake_chapter", "--seeds", "1"]) == 0
    assert load_record("fake_chapter_book")["seeds"] == rec["seeds"]
