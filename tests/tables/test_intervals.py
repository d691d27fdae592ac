"""Intervals everywhere: the bootstrap over prompts, paired differences, verdicts, and
the score record that carries the per-image values they need.

Fast: numpy only, a few seconds in all."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from marpipe import experiment, stats
from marpipe import tables as T
from tests.tables.test_tables import write_scores

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exp():
    return experiment.load(ROOT / "config" / "small.yaml")


# ------------------------------------------------------------------------------------------
# the bootstrap
# ------------------------------------------------------------------------------------------
def test_interval_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(200, 100))
    hits = [(iv := stats.bootstrap_mean(x, n_resamples=1000)).lo <= 3.0 <= iv.hi for x in data]
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_prompt_clusters_are_resampled_whole():
    """4 images per prompt sharing a large prompt effect: resampling images as if independent
    would undercover; resampling prompts covers at about the nominal rate."""
    rng = np.random.default_rng(2)
    n_prompts, ipp = 60, 4
    index = np.repeat(np.arange(n_prompts), ipp)
    hits, naive = [], []
    for _ in range(200):
        x = (rng.normal(0.0, 1.0, n_prompts)[index] + rng.normal(0.0, 0.3, n_prompts * ipp)).tolist()
        iv = stats.bootstrap_mean(x, index, n_resamples=500)
        hits.append(iv.lo <= 0.0 <= iv.hi)
        iid = stats.bootstrap_mean(x, n_resamples=500)
        naive.append(iid.lo <= 0.0 <= iid.hi)
        assert iv.n_prompts == n_prompts and iv.n_images == n_prompts * ipp
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)
    assert np.mean(naive) < 0.80, np.mean(naive)


def test_stratified_resamples_keep_each_stratum_and_are_reproducible():
    strata = np.array([0, 1, 2, 3] * 5 + [3, 3])
    idx = stats.resample_indices(strata, 300, seed=5)
    assert idx.shape == (300, len(strata))
    assert (strata[idx] == strata).all()                    # every draw stays inside its stratum
    assert (idx == stats.resample_indices(strata, 300, seed=5)).all()
    assert not (idx == stats.resample_indices(strata, 300, seed=6)).all()
    a = stats.bootstrap_mean(np.arange(22.0), None, list(strata))
    assert a == stats.bootstrap_mean(np.arange(22.0), None, list(strata))


def test_estimate_is_the_exact_mean_whatever_the_order():
    rng = np.random.default_rng(3)
    x = (rng.normal(0, 1, 1000) * 10.0 ** rng.integers(-8, 8, 1000)).tolist()
    a = stats.cell_estimate(x)
    assert a == stats.cell_estimate(list(reversed(x))) == stats.cell_estimate(sorted(x))
    assert a == pytest.approx(float(np.mean(x)), rel=1e-9, abs=1e-12)
    assert math.isnan(stats.cell_estimate([]))
    one = stats.bootstrap_mean([1.0, 2.0], [0, 0])                 # a single prompt: no interval
    assert one.estimate == 1.5 and not one.known


def test_the_jobs_that_take_no_quantile_do_not_import_scipy():
    """scipy.stats is ~1.6 s of a job's start; a study runs ~100 generate and evaluate jobs, and
    only the tables (and Fig. 7) take a t quantile."""
    code = ("import sys, marpipe.stats, marpipe.stages.evaluate, marpipe.stages.select; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    lo, hi = stats.simultaneous(0.0, 1.0, 2.0, 42)          # and the quantile is still Student's t
    assert hi == pytest.approx(28.957, abs=1e-3) and lo == -hi


# ------------------------------------------------------------------------------------------
# paired differences and verdicts
# ------------------------------------------------------------------------------------------
def _pair(shift: float, n: int = 300, seed: int = 4) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    b = rng.normal(0.0, 1.0, n)
    return (b + rng.normal(shift, 1.0, n)).tolist(), b.tolist()     # the difference: shift in sd units


@pytest.mark.parametrize("shift,expected", [(0.5, "holds"), (0.0, "inconclusive"), (-0.5, "contradicted")])
def test_planted_paired_differences(shift, expected):
    a, b = _pair(shift)
    iv = stats.bootstrap_difference(a, b, list(range(300)))
    assert iv.estimate == stats.cell_estimate(a) - stats.cell_estimate(b)
    assert stats.verdict(iv.lo, iv.hi, paper_diff=+1.78) == expected
    # the paper's direction decides which side "holds": a paper difference < 0 flips it
    flipped = {"holds": "contradicted", "contradicted": "holds", "inconclusive": "inconclusive"}[expected]
    assert stats.verdict(iv.lo, iv.hi, paper_diff=-0.01) == flipped


def test_pairing_matters():
    """A large per-prompt effect shared by both rows, a small consistent difference: the paired
    bootstrap finds it, an unpaired one (rows resampled independently) cannot."""
    rng = np.random.default_rng(5)
    n = 200
    shared = rng.normal(0.0, 5.0, n)
    b = shared + rng.normal(0.0, 0.2, n)
    a = shared + 0.2 + rng.normal(0.0, 0.2, n)
    paired = stats.bootstrap_difference(a.tolist(), b.tolist(), list(range(n)))
    unpaired = stats.bootstrap_difference(a.tolist(), b.tolist(), list(range(n)), paired=False)
    assert paired.estimate == unpaired.estimate
    assert stats.verdict(paired.lo, paired.hi, 1.0) == "holds"
    assert stats.verdict(unpaired.lo, unpaired.hi, 1.0) == "inconclusive"
    assert (unpaired.hi - unpaired.lo) > 10 * (paired.hi - paired.lo)


def test_verdict_rules():
    assert stats.verdict(0.1, 0.3, 2.0) == "holds"
    assert stats.verdict(-0.3, -0.1, 2.0) == "contradicted"
    assert stats.verdict(-0.3, -0.1, -2.0) == "holds"
    assert stats.verdict(0.0, 0.3, 2.0) == "inconclusive"          # touching 0 is not excluding it
    assert stats.verdict(-0.1, 0.3, 2.0) == "inconclusive"
    assert stats.verdict(math.nan, math.nan, 2.0) == "no verdict"  # no interval
    assert stats.verdict(0.1, 0.3, math.nan) == "no verdict"       # the paper has no value
    assert stats.verdict(0.1, 0.3, 0.0) == "no verdict"            # the paper states no direction


def test_simultaneous_interval_is_the_marginal_one_for_one_claim_and_wider_for_many():
    from scipy.stats import norm, t
    lo, hi = stats.simultaneous(1.0, 0.5, math.inf, 1)
    assert (hi - 1.0) == pytest.approx(norm.ppf(0.975) * 0.5, rel=1e-9) and (1.0 - lo) == pytest.approx(hi - 1.0)
    lo, hi = stats.simultaneous(1.0, 0.5, 4.0, 42)                         # Bonferroni: 1 - 0.05 / 84 per side
    assert hi - 1.0 == pytest.approx(t.ppf(1 - 0.05 / 84, 4.0) * 0.5, rel=1e-9)
    assert all(math.isnan(x) for x in stats.simultaneous(1.0, math.nan, 4.0, 3))


def test_a_family_of_null_claims_is_decided_by_chance_in_at_most_five_percent_of_runs():
    """40 claims with no effect, 3 training seeds each: marginal 95% intervals decide at least one
    of them in most runs (so two runs disagree); simultaneous intervals in about 5% of runs."""
    rng = np.random.default_rng(11)
    n_prompts, n_seeds, n_claims = 30, 3, 40
    pid, sid = np.tile(np.arange(n_prompts), n_seeds), np.repeat(np.arange(n_seeds), n_prompts)
    any_marginal, any_simultaneous = 0, 0
    for _ in range(60):
        d = []
        for _ in range(n_claims):
            prompt, shared = rng.normal(0.0, 1.0, n_prompts), rng.normal(0.0, 1.0, (n_seeds, 1))
            a, b = ((prompt[None, :] + shared + rng.normal(0.0, 0.3, (n_seeds, 1))
                     + rng.normal(0.0, 0.3, (n_seeds, n_prompts))).ravel() for _ in range(2))
            d.append(stats.bootstrap_difference(a, b, pid, seed_index=sid, seed_index_b=sid, n_resamples=200))
        any_marginal += any(not (x.lo <= 0.0 <= x.hi) for x in d)
        any_simultaneous += any(not (lo <= 0.0 <= hi) for lo, hi in
                                (stats.simultaneous(x.estimate, x.se, x.df, n_claims) for x in d))
    assert any_marginal / 60 > 0.5, any_marginal
    assert any_simultaneous / 60 <= 0.1, any_simultaneous


def test_simultaneous_intervals_still_find_a_planted_effect():
    """One claim of 40 with a real difference of 4 standard deviations of a run, 5 seeds: decided."""
    rng = np.random.default_rng(2)
    n_prompts, n_seeds = 30, 5
    pid, sid = np.tile(np.arange(n_prompts), n_seeds), np.repeat(np.arange(n_seeds), n_prompts)
    prompt = rng.normal(0.0, 1.0, n_prompts)
    a = (prompt[None, :] + 4.0 + rng.normal(0.0, 0.3, (n_seeds, 1)) + rng.normal(0.0, 0.3, (n_seeds, n_prompts))).ravel()
    b = (prompt[None, :] + rng.normal(0.0, 0.3, (n_seeds, 1)) + rng.normal(0.0, 0.3, (n_seeds, n_prompts))).ravel()
    d = stats.bootstrap_difference(a, b, pid, seed_index=sid, seed_index_b=sid, n_resamples=500)
    assert stats.verdict(*stats.simultaneous(d.estimate, d.se, d.df, 40), paper_diff=1.0) == "holds"
    assert stats.verdict(*stats.simultaneous(-d.estimate, d.se, d.df, 40), paper_diff=1.0) == "contradicted"


# ------------------------------------------------------------------------------------------
# the score record and the tables
# ------------------------------------------------------------------------------------------
def _evaluated_record(exp, tmp_path: Path, monkeypatch) -> tuple[dict, list[int]]:
    """The real evaluate stage on a tiny preference bundle (8 style prompts, 2 images each),
    with scorers that need no weights standing in for the preference metrics."""
    from marpipe.io.files import save_images
    from marpipe.stages import evaluate as E
    from marpipe.world.prompts import make_split
    cfg = copy.deepcopy(exp.cfg)
    cfg["evaluation"]["preference"]["metrics"] = {"HPS": {"scorer": "world_vqa", "scale": 100},
                                                  "ImageReward": {"scorer": "world_detect"}}
    small = experiment.Experiment(cfg)
    metas = make_split("style", 8, seed=0)
    index = [i for i in range(len(metas)) for _ in range(2)]
    bundle = save_images(tmp_path / "images.npz", torch.rand(len(index), 3, 32, 32, generator=torch.Generator()
                                                             .manual_seed(0)),
                         [m["prompt"] for m in metas], metas, index, {"seed": 0})
    monkeypatch.setattr(E, "log_scores", lambda *a, **k: False)
    E.evaluate(small, bundle, "preference", tmp_path / "preference.json", "tiny-nova", "hps", "sim",
               resources=str(tmp_path))
    return json.loads((tmp_path / "preference.json").read_text()), index


def test_score_record_keeps_per_image_values_in_canonical_order(exp, tmp_path, monkeypatch):
    rec, index = _evaluated_record(exp, tmp_path, monkeypatch)
    assert set(rec["per_image"]) == {"HPS", "ImageReward"}
    for col, entry in rec["per_image"].items():
        assert entry["prompt_index"] == index                        # prompt order, 2 consecutive images each
        assert len(entry["value"]) == len(index)
        assert rec["scores"][col] == stats.cell_estimate(entry["value"])   # the cell is their exact mean
    assert rec["strata"] == {"by": "style", "of_prompt": ["light", "dark", "gradient", "noise"] * 2}
    text = (tmp_path / "preference.json").read_text()
    assert text == json.dumps(rec, sort_keys=True, indent=2, ensure_ascii=True) + "\n"   # canonical JSON


def test_stratified_estimator_is_exactly_the_tables_cell(exp, tmp_path, monkeypatch):
    rec, _ = _evaluated_record(exp, tmp_path, monkeypatch)
    values, index = rec["per_image"]["HPS"]["value"], rec["per_image"]["HPS"]["prompt_index"]
    strata = rec["strata"]["of_prompt"]
    # the table's cell, read back through the tables' own record reader
    r = T.score_records_from_files([tmp_path / "preference.json"])[0]
    iv = stats.bootstrap_mean(values, index, strata)
    assert iv.estimate == r["scores"]["HPS"] == rec["scores"]["HPS"]
    # equal prompts per style: the mean over images is the HPS benchmark's mean over styles
    by_style = {s: [v for v, i in zip(values, index) if strata[i] == s] for s in set(strata)}
    assert iv.estimate == pytest.approx(np.mean([np.mean(v) for v in by_style.values()]), rel=1e-12)
    # the bootstrap's replicate formula on the sample itself gives the cell back
    p = stats._by_prompt(values, index, strata)
    identity = np.arange(len(p.ids))[None, :]
    assert stats._means(p, identity)[0] == pytest.approx(iv.estimate, rel=1e-12)
    assert iv.lo < iv.estimate < iv.hi


def test_table_cells_and_intervals_come_from_the_records(exp, tmp_path):
    files = write_scores(exp, tmp_path)
    recs = T.score_records_from_files(files)
    tabs = T.build_tables(exp, recs)
    iv = tabs["intervals"]
    rec = next(r for r in recs if (r["model"], r["row"], r["suite"]) == ("tiny-nova", "hps-sim", "preference"))
    line = iv[(iv["table"] == "table1") & (iv["base"] == "NOVA") & (iv["row"] == "Ours") & (iv["column"] == "HPS")]
    direct = stats.bootstrap_mean(rec["per_image"]["HPS"]["value"], rec["per_image"]["HPS"]["prompt_index"],
                                  rec["strata"]["of_prompt"])
    assert line["value"].iloc[0] == direct.estimate == tabs["table1"].loc[2, "HPS"]
    assert (line["lo"].iloc[0], line["hi"].iloc[0]) == (direct.lo, direct.hi)
    # Table 2's +Sim row is the same record: the same interval
    same = iv[(iv["table"] == "table2") & (iv["row"] == "+Sim (Ours)") & (iv["column"] == "HPS")]
    assert (same["lo"].iloc[0], same["hi"].iloc[0]) == (direct.lo, direct.hi)


def _strip(files: list[Path], keep=lambda p: False) -> None:
    """Score files as written before per-image values existed."""
    for p in files:
        if keep(p):
            continue
        d = json.loads(p.read_text())
        d.pop("per_image"), d.pop("strata")
        p.write_text(json.dumps(d))


def test_old_records_give_tables_without_intervals(exp, tmp_path):
    files = write_scores(exp, tmp_path)
    new = T.build_tables(exp, T.score_records_from_files(files))
    _strip(files)
    old = T.build_tables(exp, T.score_records_from_files(files))
    for name in ("table1", "table2", "stand_ins"):
        pd.testing.assert_frame_equal(old[name], new[name])          # the same values
    assert old["intervals"][["lo", "hi"]].isna().all().all()
    assert set(old["differences"]["note"]) == {"no per-image values"}
    cmp_ = T.compare_with_paper(old)
    assert set(cmp_["verdicts"]["verdict"]) == {"no verdict"}
    paths = T.write_tables(old, cmp_, tmp_path / "tables")
    md = (tmp_path / "tables" / "tables.md").read_text()
    assert "No cell has an interval" in md
    assert f"| NOVA | NOVA | {old['table1'].loc[0, 'HPS']:.4f} |" in md      # the value alone, no "[lo, hi]"
    assert "table1 NOVA: Ours > +GRPO: no verdict in 11 columns (no per-image values)" in md
    page = (tmp_path / "tables" / "tables.html").read_text()
    assert 'class="ci"' not in page
    assert pd.read_csv(tmp_path / "tables" / "intervals.csv")[["lo", "hi"]].isna().all().all()
    assert len(paths) == 10


def test_mixed_records_and_mismatched_rows(exp, tmp_path):
    files = write_scores(exp, tmp_path)
    _strip(files, keep=lambda p: not (p.parts[-3] == "hps-grpo" and p.parts[-4] == "tiny-nova"))
    tabs = T.build_tables(exp, T.score_records_from_files(files))
    iv = tabs["intervals"]
    nova_pref = iv[(iv["table"] == "table1") & (iv["base"] == "NOVA") & iv["column"].isin(["HPS", "Aesthetic"])]
    missing = nova_pref.groupby("row")["lo"].apply(lambda s: s.isna().all()).to_dict()
    assert missing == {"+GRPO": True, "NOVA": False, "Ours": False}       # only the stripped record's cells
    d = tabs["differences"].set_index(["table", "base", "a", "column"])
    assert d.loc[("table1", "NOVA", "Ours", "HPS"), "note"] == "no per-image values"
    assert d.loc[("table1", "NOVA", "Ours", "Color"), "note"] == ""
    md = T.tables_markdown(tabs, T.compare_with_paper(tabs))
    assert "Cells without an interval" in md
    # rows scored on different prompts are not paired; a score that is not its values' mean is refused
    files = write_scores(exp, tmp_path / "b")
    p = next(f for f in files if f.parts[-3] == "hps-grpo" and f.parts[-4] == "tiny-nova")
    d = json.loads(p.read_text())
    d["per_image"]["HPS"]["prompt_index"] = [i + 100 for i in d["per_image"]["HPS"]["prompt_index"]]
    d["strata"]["of_prompt"] = d["strata"]["of_prompt"] * 8
    p.write_text(json.dumps(d))
    diffs = T.build_tables(exp, T.score_records_from_files(files))["differences"]
    hps = diffs[(diffs["table"] == "table1") & (diffs["base"] == "NOVA") & (diffs["column"] == "HPS")].iloc[0]
    assert hps["note"] == "rows not scored on the same prompts" and math.isnan(hps["lo"])
    d["scores"]["HPS"] += 0.5
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"scores\['HPS'\] = .* but the mean of per_image\['HPS'\]"):
        T.build_tables(exp, T.score_records_from_files(files))
    d["per_image"]["HPS"]["value"] = d["per_image"]["HPS"]["value"][:-1]
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="not a score file.*31 values but 32 prompt indices"):
        T.score_records_from_files(files)
