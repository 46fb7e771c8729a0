"""Tests for kexue.experiments.ch05_mixers: configs, data, models, scores, probes and the run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kexue.data import NerExample
from kexue.experiments import ch05_mixers as ch05
from kexue.experiments.__main__ import main as cli
from kexue.experiments.records import RunResult
from kexue.mixers import MIXERS
from kexue.nn import patchify
from kexue.spans import bio_to_spans
from kexue.utils import seed_everything

NAMES = sorted(MIXERS)




# --------------------------------------------------------------------------- configs


def test_profiles_are_one_frozen_class_growing_in_scale():
    smoke, book, full = (ch05.CONFIGS[p] for p in ("smoke", "book", "full"))
    assert type(smoke) is type(book) is type(full) is ch05.MixersConfig
    assert smoke.msra_train < book.msra_train <= full.msra_train
    assert smoke.dim < book.dim < full.dim
    for cfg in (smoke, book, full):
        assert set(cfg.mixers) == set(MIXERS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="mixers"):
        ch05.MixersConfig(mixers=("attention", "transformer"))
    with pytest.raises(ValueError, match="profile"):
        ch05.CONFIGS.get("medium")


def test_options_reach_the_encoder():
    cfg = ch05.CONFIGS["smoke"]
    config = ch05.encoder_config("external_attention", cfg, vocab_size=10, max_len=cfg.msra_len)
    assert config.mixer_options == {"heads": cfg.heads, "slots": cfg.slots}
    assert ch05.encoder_config("fnet", cfg, vocab_size=10, max_len=8).mixer_options == {}
    with pytest.raises(ValueError, match="name must be one of"):
        ch05.encoder_config("mlp", cfg, vocab_size=10, max_len=8)


@pytest.mark.parametrize("profile", ["book", "full"])
@pytest.mark.parametrize("max_len", [16, 64])
def test_book_and_full_compare_mixers_at_equal_parameter_count(profile, max_len):
    from kexue.nn import TransformerEncoder, count_parameters

    cfg = ch05.CONFIGS[profile]
    assert cfg.match_parameters == "attention"
    size = {n: count_parameters(TransformerEncoder(ch05.encoder_config(n, cfg, vocab_size=1, max_len=max_len)))
            for n in cfg.mixers}
    step = cfg.depth * (2 * cfg.dim + 1)  # parameters of one more feed-forward unit in every block
    assert all(abs(size[n] - size["attention"]) <= step / 2 for n in cfg.mixers), size
    # equal widths would not be equal sizes: FNet has no mixer parameters at all
    equal_width = dataclasses.replace(cfg, match_parameters=None)
    fnet = count_parameters(TransformerEncoder(ch05.encoder_config("fnet", equal_width, vocab_size=1,
                                                                   max_len=max_len)))
    assert size["attention"] - fnet > 10 * step


def test_parameter_matching_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="match_parameters"):
        ch05.MixersConfig(match_parameters="transformer")
    # Synthesizer-Random's n x n logits outgrow a tiny attention encoder at a long length
    tiny = ch05.MixersConfig(dim=8, depth=1, heads=2, ffn_dim=4, match_parameters="attention")
    with pytest.raises(ValueError, match="no feed-forward width"):
        ch05.encoder_config("synthesizer_random", tiny, vocab_size=1, max_len=512)
    # matching draws no random numbers (it builds on the meta device)
    state = torch.random.get_rng_state()
    ch05.encoder_config("fnet", ch05.CONFIGS["book"], vocab_size=1, max_len=64)
    assert torch.equal(state, torch.random.get_rng_state())


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> int:
    return sum(int(not torch.equal(before[k], v)) for k, v in model.state_dict().items())


@pytest.mark.parametrize("profile", ["smoke", "book", "full"])
@pytest.mark.parametrize("name", NAMES)
def test_profile_builds_both_models_and_takes_one_step(profile, name):
    """Each profile's digits classifier and character tagger build and take one fit step on tiny data."""
    base = ch05.CONFIGS[profile]
    cfg = dataclasses.replace(base, digits_epochs=1, msra_epochs=1)  # tiny data: one batch, one step
    images = torch.rand(6, 8, 8)
    x = patchify(images, cfg.patch)
    digits = {"x_train": x[:4], "y_train": torch.tensor([0, 1, 2, 3]), "x_test": x[4:], "y_test": torch.tensor([4, 5])}
    seed_everything(0)
    fresh = ch05.PatchClassifier(ch05.encoder_config(name, cfg, vocab_size=1, max_len=x.shape[1]), x.shape[2], 10)
    r = ch05.run_digits(name, cfg, digits, seed=0)
    assert len(r["losses"]) == 1 and torch.isfinite(torch.tensor(r["losses"])).all()
    assert 0.0 <= r["accuracy"] <= 1.0 and r["mixer_parameters"] < r["parameters"]
    assert r["model"].encoder.config.dim == base.dim and r["model"].encoder.config.depth == base.depth
    assert _changed(fresh.state_dict(), r["model"]) > len(fresh.state_dict()) // 2

    vocab = {"[PAD]": 0, "[UNK]": 1, **{chr(0x4E00 + i): i + 2 for i in range(20)}}
    examples = [NerExample("一丁七万丈三上", ((0, 1, "PER"), (4, 6, "LOC"))),
                NerExample("下不与丐丑", ((2, 4, "ORG"),))]
    split = ch05.msra_tensors(examples, vocab, cfg.msra_len)
    msra = {"vocab": vocab, "train": split, "test": split}
    seed_everything(0)
    fresh = ch05.CharTagger(ch05.encoder_config(name, cfg, vocab_size=len(vocab), max_len=cfg.msra_len))
    r = ch05.run_msra(name, cfg, msra, seed=0)
    assert len(r["losses"]) == 1 and torch.isfinite(torch.tensor(r["losses"])).all()
    assert 0.0 <= r["token_accuracy"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
    assert r["model"].encoder.config.max_len == base.msra_len
    assert _changed(fresh.state_dict(), r["model"]) > len(fresh.state_dict()) // 2


# --------------------------------------------------------------------------- data and scores


def test_patch_layout_is_row_major():
    img = torch.arange(64.0).reshape(1, 8, 8)
    p = patchify(img, 2)
    assert p.shape == (1, 16, 4)
    torch.testing.assert_close(p[0, 1], torch.tensor([2.0, 3.0, 10.0, 11.0]))
    torch.testing.assert_close(p[0, 4], torch.tensor([16.0, 17.0, 24.0, 25.0]))


def test_digits_split_is_seeded():
    cfg = ch05.CONFIGS["smoke"]
    a, b, c = ch05.digits_data(cfg, 0), ch05.digits_data(cfg, 0), ch05.digits_data(cfg, 1)
    assert a["x_train"].shape == (1797 - cfg.digits_test, 16, 4) and a["x_test"].shape == (cfg.digits_test, 16, 4)
    assert torch.equal(a["x_train"], b["x_train"]) and a["fingerprints"] == b["fingerprints"]
    assert not torch.equal(a["y_train"], c["y_train"]) and a["fingerprints"] != c["fingerprints"]


def test_msra_tags_are_the_shared_bio_names():
    assert ch05.MSRA_TAGS == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")


def test_char_vocab():
    vocab = ch05.char_vocab(["abca", "b"], min_count=2)
    assert vocab == {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3}


def test_msra_tensors_convert_span_layout_and_cut():
    vocab = ch05.char_vocab(["张三在北京大学"])
    ex = NerExample("张三在北京大学", ((0, 1, "PER"), (3, 6, "ORG")))
    t = ch05.msra_tensors([ex], vocab, 5)  # the ORG runs past 5 characters: dropped
    names = [ch05.MSRA_TAGS[i] for i in t["tags"][0].tolist()]
    assert names == ["B-PER", "I-PER", "O", "O", "O"]
    t = ch05.msra_tensors([ex], vocab, 9)
    names = [ch05.MSRA_TAGS[i] for i in t["tags"][0, :7].tolist()]
    assert names == ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG"]
    assert t["tags"][0, 7:].tolist() == [-100, -100] and t["lengths"].tolist() == [7]
    assert t["ids"][0, 7:].tolist() == [0, 0] and vocab["[UNK]"] not in t["ids"][0, :7].tolist()
    assert bio_to_spans(t["tags"][0, :7].tolist()) == {(0, 0, 1), (2, 3, 6)}


def test_msra_scores():
    gold = [1, 2, 0, 3, 4, 0, 5, 6, 6]  # PER 0-1, LOC 3-4, ORG 6-8
    split = {"tags": torch.tensor([gold]), "lengths": torch.tensor([9])}
    perfect = ch05.msra_scores([gold], split)
    assert perfect["f1"] == 1.0 and perfect["token_accuracy"] == 1.0
    pred = [1, 2, 0, 3, 0, 0, 5, 6, 6]  # LOC cut short: 2 of 3 entities right, one character wrong
    s = ch05.msra_scores([pred], split)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["token_accuracy"] == pytest.approx(8 / 9)


def test_prediction_agreement():
    assert ch05.prediction_agreement([[1, 2, 3], [0]], [[1, 2, 0], [0]]) == 0.75


def _tagger(name: str, length: int = 12) -> tuple[ch05.CharTagger, dict[str, torch.Tensor]]:
    cfg = ch05.CONFIGS["smoke"]
    seed_everything(0)
    model = ch05.CharTagger(ch05.encoder_config(name, cfg, vocab_size=30, max_len=length)).eval()
    lengths = torch.tensor([12, 5, 9, 3])
    ids = torch.randint(2, 30, (4, length)) * (torch.arange(length)[None] < lengths[:, None])
    return model, {"ids": ids, "lengths": lengths, "tags": torch.zeros_like(ids)}


def test_padding_shift_separates_exact_mixers_from_fnet():
    attention, split = _tagger("attention")
    assert ch05.padding_shift(attention, split)["max_logit_change"] < 1e-4
    fnet, split = _tagger("fnet")
    assert ch05.padding_shift(fnet, split)["max_logit_change"] > 1e-4


def test_msra_predict_frames():
    model, split = _tagger("attention")
    fixed = ch05.msra_predict(model, split)
    tight = ch05.msra_predict(model, split, frame="tight", batch_size=2)
    assert [len(p) for p in fixed] == split["lengths"].tolist()
    assert ch05.prediction_agreement(fixed, tight) == 1.0
    with pytest.raises(ValueError, match="frame"):
        ch05.msra_predict(model, split, frame="loose")


# --------------------------------------------------------------------------- probes and plots


@pytest.mark.parametrize("name", NAMES)
def test_probe_agrees_with_class_flags(name):
    cls = MIXERS[name]
    found = ch05.probe(name)
    assert found["longer_input"] == (not cls.fixed_length)
    assert found["permutation_equivariant"] == cls.permutation_equivariant
    assert found["causal"] == (cls.supports_causal and name != "external_attention")
    assert found["padding"] == cls.padding


def test_plot_scaling_draws_measured_points_only():
    record = {"scaling": {"times": {
        "attention": [{"seq_len": 64, "ms": 1.0}, {"seq_len": 128, "ms": 3.0}],
        "resmlp": [{"seq_len": 64, "ms": None, "note": "skipped"}],
    }}}
    ax = ch05.plot_scaling(record)
    assert [line.get_label() for line in ax.get_lines()] == ["attention"]
    assert list(ax.get_lines()[0].get_xdata()) == [64, 128]


# --------------------------------------------------------------------------- the whole run


@pytest.mark.slow
def test_run_on_real_data_returns_a_record():
    cfg = dataclasses.replace(ch05.CONFIGS["smoke"], mixers=("attention", "fnet"), msra_train=64, msra_test=16,
                              digits_epochs=1, msra_epochs=1, shift_sentences=4)
    result = ch05.run(cfg, seed=0, device="cpu")
    assert isinstance(result, RunResult)
    for name in cfg.mixers:
        for key in ("digits_accuracy", "msra_f1", "msra_token_accuracy", "msra_max_logit_change"):
            assert 0.0 <= result.metrics[f"{key}_{name}"] < float("inf")
    assert result.metrics["msra_max_logit_change_attention"] < 1e-4
    assert set(result.data) == {"digits_train", "digits_test", "msra_train", "msra_test"}
    assert result.data["msra_test"]["size"] == 16
    assert set(result.artifacts["msra_runs"]) == {"attention", "fnet"}


def test_cli_knows_the_chapter(capsys):
    assert cli(["05", "--profile", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ch05_mixers smoke: MixersConfig(" in out and "ch05_mixers_smoke.json" in out


# --------------------------------------------------------------------------- independent checks


def _randomised(name: str, **options):
    seed_everything(0)
    m = MIXERS[name](8, 12, **options).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("heads", [1, 2])
def test_value_jacobian_matrix_matches_the_dense_formula(heads):
    m = _randomised("synthesizer_dense", heads=heads)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    a, residual = ch05.value_jacobian_matrix(m, x)
    assert residual < 1e-10
    torch.testing.assert_close(a, ch05.synthesizer_dense_matrix(m, x), rtol=1e-10, atol=1e-10)


def test_dense_check_catches_a_broken_matrix_the_old_identity_does_not(monkeypatch):
    """A Synthesizer-Dense whose matrix drops the relu: forward and token_matrix share the bug."""
    m = _randomised("synthesizer_dense", heads=2)
    x = torch.randn(2, 9, 8, dtype=torch.float64)

    def broken(self, xx, mask):
        n = xx.shape[1]
        logits = self.logit_layer(self.hidden_layer(xx))  # relu missing
        logits = logits.unflatten(-1, (self.heads, self.seq_len)).transpose(1, 2)[..., :n]
        return torch.softmax(logits, dim=-1)

    monkeypatch.setattr(type(m), "_matrix", broken)
    # the chapter's first identity still holds for the broken module ...
    mixed = m.token_matrix(x) @ m.values(x)
    torch.testing.assert_close(m.readout(x, mixed), m(x))
    # ... the independent check does not
    a, residual = ch05.value_jacobian_matrix(m, x)
    assert residual < 1e-10  # still linear in V: the bug is in A
    assert (a - ch05.synthesizer_dense_matrix(m, x)).abs().max() > 1e-3


def test_value_jacobian_matrix_catches_a_nonlinear_readout(monkeypatch):
    m = _randomised("synthesizer_random", heads=2)
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    _, ok = ch05.value_jacobian_matrix(m, x)
    assert ok < 1e-10
    plain = type(m).readout
    monkeypatch.setattr(type(m), "readout", lambda self, xx, mixed: plain(self, xx, mixed.tanh()))
    _, bad = ch05.value_jacobian_matrix(m, x)
    assert bad > 1e-3


def test_external_attention_couples_tokens_only_through_column_normalisers():
    ea = _randomised("external_attention", heads=1, slots=5)
    x = torch.randn(9, 8, dtype=torch.float64)
    cross = ch05.ea_cross_jacobian(ea, x, i=0, j=3)
    torch.testing.assert_close(cross["direct"], cross["through_z"], rtol=1e-10, atol=1e-12)
    assert cross["direct"].abs().max() > 1e-6
    assert torch.linalg.matrix_rank(cross["direct"]).item() <= 5
    with pytest.raises(ValueError):
        ch05.ea_cross_jacobian(_randomised("external_attention", heads=2), x, 0, 3)


def test_made_token_mlp_is_causal_and_the_plain_one_is_not():
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    future, past = ch05.future_dependence(ch05.MadeTokenMLP(9, 6).double(), x)
    assert future == 0.0 and past > 1e-3
    future, past = ch05.future_dependence(ch05.MadeTokenMLP(9, 6, masked=False).double(), x)
    assert future > 1e-3
