"""The smallest difference each claim can decide, printed beside the paper's."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from marpipe import stats
from marpipe import tables as T
from tests.tables.test_tables import exp, write_scores  # noqa: F401  (the fixture and its fake scores)


@pytest.mark.parametrize("df", [2.0, 5.0, math.inf])
@pytest.mark.parametrize("n_claims", [1, 12, 42])
def test_a_claim_is_decided_exactly_when_its_difference_exceeds_the_decidable_one(df, n_claims):
    half = stats.decidable(0.3, df, n_claims)
    lo, hi = stats.simultaneous(1.0, 0.3, df, n_claims)
    assert half == pytest.approx((hi - lo) / 2)
    for est in (0.999 * half, 1.001 * half, -1.001 * half):
        lo, hi = stats.simultaneous(est, 0.3, df, n_claims)
        decided = stats.verdict(lo, hi, paper_diff=1.0) != stats.INCONCLUSIVE
        assert decided == (abs(est) > half)
    # 2 degrees of freedom at 1 - 0.05/84 (42 claims): 28.96 standard errors (docs/results.md, "The study")
    assert stats.decidable(1.0, 2.0, 42) == pytest.approx(28.96, abs=0.01)
    assert stats.decidable(1.0, math.inf, 1) == pytest.approx(1.95996, abs=1e-4)
    assert math.isnan(stats.decidable(math.nan, df, n_claims))


def test_every_verdict_carries_its_decidable_difference_beside_the_papers(exp, tmp_path):  # noqa: F811
    tabs = T.build_tables(exp, T.score_records_from_files(write_scores(exp, tmp_path)))
    cmp_ = T.compare_with_paper(tabs)
    v = cmp_["verdicts"]
    assert v["decidable"].notna().all()
    np.testing.assert_allclose(v["decidable"], (v["hi"] - v["lo"]) / 2, rtol=1e-12)
    decided = v["verdict"] != stats.INCONCLUSIVE
    assert (decided == (v["ours_diff"].abs() > v["decidable"])).all()
    T.write_tables(tabs, cmp_, tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "verdicts_vs_paper.csv")
    np.testing.assert_allclose(csv["decidable"], v["decidable"], atol=5e-5)   # 4 decimals, as lo and hi
    md = (tmp_path / "out" / "tables.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| table | base | claim | column |"))
    assert "| paper Δ | smallest decidable Δ | ours Δ [simultaneous 95%] |" in head
    row = v[(v["table"] == "table1") & (v["base"] == "NOVA") & (v["column"] == "HPS")].iloc[0]
    assert f"| {row['paper_diff']:+.4f} | {row['decidable']:.4f} | {row['ours_diff']:+.4f} [" in md
    assert "<th>smallest decidable Δ</th>" in (tmp_path / "out" / "tables.html").read_text()


def test_fig7_points_carry_their_decidable_difference():
    from marpipe import experiment as E
    from marpipe.stages.ablations import ablation_table
    from tests.stages.test_seeds_and_ablations import GRID, ROOT
    raw = E.read_config(ROOT / "config" / "small.yaml")
    exp = E.load({**raw, "seeds": [0, 1, 2], "ablations": {"grid": GRID}})  # noqa: F811 (not the fixture)
    rng = np.random.default_rng(1)
    prompt = rng.normal(0.0, 1.0, 40)
    records = []
    for name in ["sim"] + exp.ablation_variants():
        for seed in exp.seeds:
            vals = (prompt + rng.normal(0.0, 0.05, 40)).tolist()
            records.append({"model": exp.ablation["model"], "reward": "hps", "variant": name, "seed": seed,
                            "suite": "preference", "row": f"hps-{name}",
                            "scores": {c: float(np.mean(vals)) for c in exp.columns("preference")},
                            "per_image": {c: {"prompt_index": list(range(40)), "value": vals}
                                          for c in exp.columns("preference")}})
    table = ablation_table(exp, records)
    moved = table[table["verdict"] != "centre"]
    assert moved["diff_decidable"].gt(0).all()
    np.testing.assert_allclose(moved["diff_decidable"], (moved["diff_hi"] - moved["diff_lo"]) / 2, rtol=1e-12)
    decided = moved["verdict"] != "inconclusive"
    assert (decided == (moved["diff_vs_centre"].abs() > moved["diff_decidable"])).all()
