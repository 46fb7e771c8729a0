"""Claims as data, computed verdicts, and the recorded-run machinery they read.

The verdict rules are checked on fake records in a temporary records folder; the
book-wide checks make sure every claim's evidence exists: a record a claim reads
must be present and parse (CI fails otherwise), and a cell label must exist in
its chapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from kexue.experiments import CHAPTERS, EXTRA_EXPERIMENTS, claims, records, status
from kexue.experiments import __main__ as cli
from kexue.experiments.claims import Bound, Claim, Difference, Exact, NotTested, PerSeed, Within
from kexue.experiments.config import Profiles, config_hash
from kexue.experiments.display import record_summary, show_record, stale_warning
from kexue.experiments.loop import fit, step_cap
from kexue.experiments.records import RunResult, add_seed, load_record, run_record, validate_record, write_record

BOOK = Path(__file__).resolve().parent.parent / "book"


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    width: int = 4
    steps: int = 3


def fake_record(per_seed, *, seeds=None, cfg=None, chapter="ch02_globalpointer", profile="book"):
    seeds = list(range(len(per_seed))) if seeds is None else seeds
    return run_record(chapter, profile, cfg or FakeConfig(), seeds, per_seed, seconds=1.0)


@pytest.fixture
def tmp_records(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    return tmp_path


def write(name, per_seed, **kw):
    write_record(name, fake_record(per_seed, **kw))


# ----------------------------------------------------------------------------- verdict rules
@pytest.mark.parametrize(
    "diffs, verdict",
    [
        ([2.0, 2.1, 1.9], "reproduced"),  # the whole interval above 0
        ([-2.0, -2.1, -1.9], "refuted"),  # the whole interval below 0
        ([3.0, -2.0, 0.5], "inconclusive"),  # straddles 0
        ([2.0, 2.1], "inconclusive"),  # two seeds and no stated reason
        ([2.0], "inconclusive"),  # one seed and no stated reason
    ],
)
def test_difference_verdicts(tmp_records, diffs, verdict):
    write("r", [{"a": d, "b": 0.0} for d in diffs])
    assert Difference("r", "a", "b", at_least=0.0).evaluate().verdict == verdict


def test_one_run_reason_allows_a_single_seed(tmp_records):
    write("r", [{"a": 1.0, "b": 0.0}])
    assert Difference("r", "a", "b", at_least=0.0).evaluate("deterministic count").verdict == "reproduced"
    assert Difference("r", "a", "b", at_least=2.0).evaluate("deterministic count").verdict == "refuted"


def test_seeds_are_paired(tmp_records):
    # a and b vary a lot between seeds but a - b is always +1: paired, the effect is clear
    write("r", [{"a": 10.0 * s + 1.0, "b": 10.0 * s} for s in range(4)])
    assert Difference("r", "a", "b", at_least=0.5).evaluate().verdict == "reproduced"


def test_mean_only_rule_would_call_a_straddling_record_reproduced(tmp_records):
    """A weak rule (the mean alone) passes what the interval rule calls inconclusive."""
    per_seed = [{"a": d, "b": 0.0} for d in (3.0, -2.0, 0.5)]
    write("r", per_seed)
    mean = sum(m["a"] for m in per_seed) / 3
    assert mean > 0  # the mean-only rule would say "reproduced"
    assert Difference("r", "a", "b", at_least=0.0).evaluate().verdict == "inconclusive"


def test_within_and_bound(tmp_records):
    write("r", [{"a": 1.0 + e, "b": 1.0, "c": 0.9 + e} for e in (0.01, -0.01, 0.0)])
    assert Within("r", "a", "b", tol=0.1).evaluate().verdict == "reproduced"
    write("s", [{"a": 2.0 + e, "b": 1.0} for e in (0.01, -0.01, 0.0)])
    assert Within("s", "a", "b", tol=0.1).evaluate().verdict == "refuted"
    assert Bound("r", "c", at_least=0.8).evaluate().verdict == "reproduced"
    assert Bound("r", "c", at_most=0.8).evaluate().verdict == "refuted"
    with pytest.raises(ValueError, match="at_least, at_most"):
        Bound("r", "c")


def test_per_seed_pairs_records_and_refuses_mismatched_seeds(tmp_records):
    write("x", [{"m": 1.0}, {"m": 2.0}, {"m": 3.0}])
    write("y", [{"m": 1.5}, {"m": 2.5}, {"m": 3.5}])
    gain = PerSeed(("x", "y"), lambda rs: [b["m"] - a["m"] for a, b in zip(rs[0]["per_seed"], rs[1]["per_seed"])],
                   what="y − x", at_least=0.0)
    assert gain.evaluate().verdict == "reproduced"
    write("y", [{"m": 1.5}, {"m": 2.5}, {"m": 3.5}], seeds=[0, 1, 7])
    assert gain.evaluate().verdict == "inconclusive"


def test_missing_record_is_not_tested(tmp_records):
    out = Difference("nope", "a", "b", at_least=0.0).evaluate()
    assert out.verdict == "not tested at this scale" and "missing" in out.detail


def test_unknown_metric_names_what_exists(tmp_records):
    write("r", [{"a": 1.0}] * 3)
    with pytest.raises(KeyError, match="has no metric 'zz'"):
        Bound("r", "zz", at_least=0).evaluate()


def test_exact_and_not_tested():
    assert Exact(lambda: (1e-15, 1e-12)).evaluate().verdict == "reproduced"
    assert Exact(lambda: (1e-3, 1e-12)).evaluate().verdict == "refuted"
    assert NotTested("no data").evaluate().verdict == "not tested at this scale"


def test_claim_validates_its_fields():
    crit = NotTested("x")
    with pytest.raises(ValueError, match="source"):
        Claim("01.x", "s", "blog", "scale", "cell: a", crit)
    with pytest.raises(ValueError, match="id"):
        Claim("01 x!", "s", "ours", "scale", "cell: a", crit)
    with pytest.raises(TypeError, match="criterion"):
        Claim("01.x", "s", "ours", "scale", "cell: a", "reproduced")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the book's claims
ALL = claims.all_claims()


def test_claim_ids_unique_and_every_chapter_has_claims():
    ids = [c.id for c in ALL]
    assert len(ids) == len(set(ids))
    assert {c.chapter for c in ALL} == set(CHAPTERS)


def _records_read(criterion) -> list[str]:
    if isinstance(criterion, PerSeed):
        return list(criterion.records)
    if isinstance(criterion, Within | Difference | Bound) or hasattr(criterion, "fn") and hasattr(criterion, "record"):
        return [criterion.record]
    return []


@pytest.mark.parametrize("claim", ALL, ids=[c.id for c in ALL])
def test_claim_evidence_exists(claim):
    """CI fails when a record a claim reads is missing or does not parse, or a cell label is unknown."""
    if claim.evidence.startswith("cell: "):
        label = claim.evidence[6:]
        text = (BOOK / f"{claims.chapter_page(claim.chapter)}.md").read_text(encoding="utf-8")
        assert f"({label})=" in text, f"{claim.id}: no label ({label})= in chapter {claim.chapter}"
    for name in _records_read(claim.criterion) + ([] if claim.evidence.startswith("cell: ") else [claim.evidence]):
        assert records.record_path(name).is_file(), f"{claim.id}: record {name!r} is missing"
        load_record(name)  # parses, and a run record passes its schema check


def test_glance_links_every_claim_to_its_row():
    html = str(claims.glance())
    for claim in ALL:
        assert f'{claims.chapter_page(claim.chapter)}.html#{claim.anchor}"' in html
    for chapter in CHAPTERS:
        table = str(claims.table(chapter))
        assert all(f'id="{c.anchor}"' in table for c in claims.chapter_claims(chapter))
        assert len(re.findall(r"<tr id=", table)) == len(claims.chapter_claims(chapter))


def test_counts_add_up():
    tally = claims.counts()
    assert sum(tally["all"].values()) == len(ALL)
    assert sum(sum(v.values()) for k, v in tally.items() if k != "all") == len(ALL)


# ----------------------------------------------------------------------------- records
def test_validate_record_names_the_problem():
    rec = fake_record([{"a": 1.0}])
    validate_record(rec)
    broken = dict(rec)
    del broken["seeds"]
    with pytest.raises(ValueError, match="missing key 'seeds'"):
        validate_record(broken)
    with pytest.raises(ValueError, match="one per_seed entry per seed"):
        validate_record({**rec, "seeds": [0, 1]})
    with pytest.raises(ValueError, match="seeds repeat"):
        validate_record({**rec, "seeds": [0, 0], "per_seed": [{}, {}]})


def test_load_record_rejects_bad_json_and_bad_schema(tmp_records):
    (tmp_records / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_record("bad")
    rec = fake_record([{"a": 1.0}])
    rec["threads"] = "two"
    (tmp_records / "typed.json").write_text(json.dumps(rec), encoding="utf-8")
    with pytest.raises(ValueError, match="'threads' must be"):
        load_record("typed")


def test_add_seed_recomputes_summary_and_refuses_other_data():
    rec = run_record("ch02_globalpointer", "book", FakeConfig(), [0], [{"a": 1.0}], seconds=2.0,
                     data={"train": {"size": 3, "sha256": "abc"}})
    rec = add_seed(rec, 1, {"a": 3.0}, seconds=4.0, data={"train": {"size": 3, "sha256": "abc"}})
    assert rec["seeds"] == [0, 1] and rec["summary"]["a"]["mean"] == 2.0 and rec["wall_seconds"] == 6.0
    assert rec["seed_seconds"] == [2.0, 4.0]
    with pytest.raises(ValueError, match="already in the record"):
        add_seed(rec, 1, {"a": 0.0}, seconds=1.0)
    # a split drawn by the seed is kept per seed, and leaves the common data
    rec = add_seed(rec, 2, {"a": 0.0}, seconds=1.0, data={"train": {"size": 4, "sha256": "abd"}})
    assert rec["seed_data"][2] == {"train": {"size": 4, "sha256": "abd"}} and "train" not in rec["data"]
    assert rec["seed_data"][0] == rec["seed_data"][1] == {"train": {"size": 3, "sha256": "abc"}}


def test_add_seed_keeps_seeds_in_order_with_their_metrics():
    """Seed 2 finished before seed 1 (parallel processes): the record still reads 0, 1, 2."""
    rec = run_record("ch02_globalpointer", "book", FakeConfig(), [0], [{"a": 0.0}], seconds=1.0,
                     data={"train": {"size": 3, "sha256": "abc"}})
    rec = add_seed(rec, 2, {"a": 2.0}, seconds=3.0, data={"train": {"size": 5, "sha256": "two"}})
    rec = add_seed(rec, 1, {"a": 1.0}, seconds=2.0, data={"train": {"size": 4, "sha256": "one"}})
    assert rec["seeds"] == [0, 1, 2]
    assert [m["a"] for m in rec["per_seed"]] == [0.0, 1.0, 2.0]
    assert rec["seed_seconds"] == [1.0, 2.0, 3.0]
    assert [d["train"]["size"] for d in rec["seed_data"]] == [3, 4, 5]


def test_stale_record_is_flagged(tmp_records):
    from kexue.experiments import ch06_growth

    book = ch06_growth.CONFIGS["book"]
    write_record("fresh", run_record("ch06_growth", "book", book, [0], [{"a": 1.0}], seconds=1.0))
    old = dataclasses.replace(book, lr=book.lr * 2)
    write_record("old", run_record("ch06_growth", "book", old, [0], [{"a": 1.0}], seconds=1.0))
    assert not status.is_stale(load_record("fresh"))
    assert status.is_stale(load_record("old"))
    assert [r["name"] for r in status.stale_records()] == ["old"]
    assert stale_warning("fresh") is None
    assert "old" in str(stale_warning("old"))
    # overrides are part of what the record was made with: not stale
    write_record("over", run_record("ch06_growth", "book", old, [0], [{"a": 1.0}], seconds=1.0,
                                    overrides={"lr": book.lr * 2}))
    assert not status.is_stale(load_record("over"))
    # what a chapter displays: the table alone, or the warning above the table
    assert "Stale record" not in show_record("fresh")._repr_markdown_()
    shown = show_record("old")._repr_markdown_()
    assert shown.index("Stale record") < shown.index("Record `old`")


def test_show_record_refuses_a_missing_record(tmp_records):
    # a chapter must fail to build, not quietly drop the table
    with pytest.raises(FileNotFoundError, match="'absent'"):
        show_record("absent")


def test_record_summary_table(tmp_records):
    write("r", [{"acc": 0.5}, {"acc": 0.7}, {"acc": 0.6}])
    text = str(record_summary("r", [("accuracy", "acc")], scale=100, digits=1))
    assert "| accuracy | 60.0 |" in text and "seed 2" in text and "Record `r`" in text


# ----------------------------------------------------------------------------- the command line
class _Counter:
    def __init__(self) -> None:
        self.seeds: list[int] = []


@pytest.fixture
def fake_experiment(tmp_records, monkeypatch):
    counter = _Counter()
    mod = types.ModuleType("kexue.experiments.fake_exp")
    mod.CONFIGS = Profiles(smoke=FakeConfig(1), book=FakeConfig(2), full=FakeConfig(3))

    def run(cfg, seed=0):
        counter.seeds.append(seed)
        return RunResult(metrics={"score": float(seed) + cfg.width}, data={"d": {"size": 1, "sha256": "x"}})

    mod.run = run
    monkeypatch.setitem(sys.modules, "kexue.experiments.fake_exp", mod)
    return mod, counter


def _args(**kw):
    base = dict(profile="book", seeds=[0], name=None, max_steps=None, threads=None, commit=False, fresh=False,
                dry_run=False, overrides=[])
    return argparse.Namespace(**{**base, **kw})


def test_cli_resumes_seed_by_seed(fake_experiment):
    mod, counter = fake_experiment
    cli.run_chapter("fake_exp", _args(seeds=[0, 1]))
    cli.run_chapter("fake_exp", _args(seeds=[0, 1, 2]))
    assert counter.seeds == [0, 1, 2]  # seeds 0 and 1 were not rerun
    rec = load_record("fake_exp_book")
    assert rec["seeds"] == [0, 1, 2] and rec["summary"]["score"]["n"] == 3
    assert rec["config_hash"] == config_hash(mod.CONFIGS["book"])


def test_cli_refuses_to_extend_a_record_of_another_config(fake_experiment):
    mod, counter = fake_experiment
    cli.run_chapter("fake_exp", _args(seeds=[0]))
    with pytest.raises(SystemExit, match="records another config"):
        cli.run_chapter("fake_exp", _args(seeds=[1], overrides=[], name="fake_exp_book", max_steps=5))
    cli.run_chapter("fake_exp", _args(seeds=[1], fresh=True))
    assert load_record("fake_exp_book")["seeds"] == [1]


def test_cli_overrides_name_the_record(fake_experiment):
    mod, counter = fake_experiment
    path = cli.run_chapter("fake_exp", _args(seeds=[0], overrides=["width=7"]))
    assert path.name == "fake_exp_book_width7.json"
    rec = load_record("fake_exp_book_width7")
    assert rec["overrides"] == {"width": 7} and rec["per_seed"][0]["score"] == 7.0
    with pytest.raises(ValueError, match="no field"):
        cli.run_chapter("fake_exp", _args(seeds=[0], overrides=["depth=2"]))
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        cli.parse_overrides(["width"])


def test_step_cap_stops_every_fit_but_keeps_the_schedule():
    model = torch.nn.Linear(2, 1)
    batch = torch.ones(4, 2)
    with step_cap(3):
        hist = fit(model, lambda k: batch, lambda m, b: m(b).pow(2).mean(), steps=10, lr=1e-2, warmup=0,
                   schedule="linear", progress=False)
    assert hist.last_step == 3
    assert math.isclose(hist.lrs[-1], 1e-2 * (1 - 2 / 10), rel_tol=1e-9)  # the 10-step schedule's value
    with pytest.raises(ValueError, match="steps"):
        with step_cap(0):
            pass


def test_every_experiment_module_is_runnable_from_the_cli():
    for name in [*CHAPTERS.values(), *EXTRA_EXPERIMENTS]:
        assert cli._module_name(name) == name


def test_across_scales_pairs_claims_and_flags_disagreement():
    rows = dict((c.id, o.verdict) for c, o in claims.evaluate(claims.chapter_claims("03")))
    stems = [i[: -len("-book")] for i in rows if i.endswith("-book") and i[:-5] + "-smoke" in rows]
    markup = str(claims.across_scales("03"))
    body = markup.split("<tbody>")[1].split("</tr>")[:-1]
    assert len(body) == len(stems) >= 5
    for stem, row in zip(stems, body):
        assert f"claim-{stem.replace('.', '-')}-smoke" in row and f"claim-{stem.replace('.', '-')}-book" in row
        same = rows[stem + "-smoke"] == rows[stem + "-book"]
        assert row.endswith("<td>yes</td>") == same
    with pytest.raises(ValueError, match="no claim tested at every scale"):
        claims.across_scales("06")
    with pytest.raises(ValueError, match="at least two"):
        claims.across_scales("03", ["book"])
