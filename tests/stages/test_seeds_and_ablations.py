"""Training seeds as a dimension of the DAG, the two-level bootstrap over prompts and seeds, and
the Fig. 7 sweep: names, validation, the dry run, the merged tables, the ablation table."""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marpipe import experiment as E
from marpipe import stats
from marpipe import tables as T
from marpipe.config import ConfigError
from tests.pipeline.test_workflow import job_counts, jobs, snakemake
from tests.tables.test_tables import write_scores

ROOT = Path(__file__).resolve().parents[2]
GRID = {"top_k": [0.1, 1.0], "tau": [0.5], "S": [1, 5]}


@pytest.fixture(scope="module")
def small():
    return E.read_config(ROOT / "config" / "small.yaml")


def _exp(small, **changes):
    return E.load({**copy.deepcopy(small), **changes})


# ------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------
def test_row_ids_and_ablation_variants_round_trip():
    assert E.row_id(None, "base") == "base" and E.parse_row_id("base") == (None, "base", None)
    rid = E.row_id("hps", "sim/top_k~0.1/tau~0.0/S~3", 2)
    assert rid == "hps-sim/top_k~0.1/tau~0.0/S~3/seed2"
    assert E.parse_row_id(rid) == ("hps", "sim/top_k~0.1/tau~0.0/S~3", 2)
    assert E.parse_row_id("mixed-fix_decoder/seed10") == ("mixed", "fix_decoder", 10)
    assert E.split_variant("sim/top_k~0.1/tau~0.0/S~3") == ("sim", {"top_k": 0.1, "tau": 0.0, "S": 3})
    assert E.split_variant("mte") == ("mte", {})
    with pytest.raises(ValueError, match="expected 'base' or '<reward>-<variant>/seed<N>'"):
        E.parse_row_id("hps-sim")
    with pytest.raises(ConfigError, match="'lr~1' is not a knob~value of top_k, tau, S"):
        E.split_variant("sim/lr~1")


def test_seeds_default_to_the_config_seed_and_set_each_runs_training_seed(small):
    one = E.load(copy.deepcopy(small))
    assert one.seeds == [small["seed"]]
    assert [r.id for r in one.rows("tiny-nova")][:2] == ["base", "hps-grpo/seed0"]
    two = _exp(small, seeds=[4, 7])
    assert [r.id for r in two.rows("tiny-nova") if r.variant == "mte"] == [
        "hps-mte/seed4", "hps-mte/seed7", "mixed-mte/seed4", "mixed-mte/seed7"]
    assert two.train_config("tiny-nova", "hps", "mte", seed=7).seed == 7
    # only the seed differs: the two runs are the same experiment
    a, b = (two.train_config("tiny-nova", "hps", "mte", seed=s).to_dict() for s in (4, 7))
    assert {k for k in a if a[k] != b[k]} == {"seed"}


def test_the_sweep_is_one_knob_at_a_time_around_the_variant(small):
    exp = _exp(small, ablations={"grid": GRID})
    assert exp.ablation == {"model": "tiny-nova", "reward": "hps", "variant": "sim", "grid": GRID}
    frame = exp.ablation_frame()
    centre = exp.train_config("tiny-nova", "hps", "sim")
    assert exp.ablation_centre() == {"top_k": centre.top_k, "tau": centre.tau, "S": centre.S}
    # the centre is the variant's own run (Table 2's +Sim), not a point of its own
    assert len(frame) == 2 + 1 + 2 and not frame.duplicated().any()
    moved = (frame != pd.Series(exp.ablation_centre())).sum(axis=1)
    assert (moved == 1).all()                                   # every point moves exactly one knob
    names = exp.ablation_variants()
    assert names[0] == f"sim/top_k~0.1/tau~{centre.tau}/S~{centre.S}"
    cfg = exp.train_config("tiny-nova", "hps", names[0], seed=0)
    assert (cfg.top_k, cfg.sim, cfg.mte, cfg.fix_decoder) == (0.1, True, True, True)
    # Snakemake's Paramspace makes the same folders of the frame
    from snakemake.utils import Paramspace
    assert [f"sim/{p}" for p in Paramspace(frame).instance_patterns] == names
    assert _exp(small).ablation is None and _exp(small).ablation_variants() == []


@pytest.mark.parametrize("changes,message", [
    ({"seeds": [0, 0]}, "config.seeds = [0, 0]: [0, 0] has non-unique elements"),
    ({"seeds": []}, "config.seeds = []: [] should be non-empty"),
    ({"ablations": {"grid": {"k": [0.1]}}}, "config.ablations.grid.k: unknown key"),
    ({"ablations": {"grid": {"top_k": [1.5]}}}, "config.ablations.grid.top_k[0] = 1.5"),
    ({"ablations": {"variant": "ours", "grid": GRID}}, "config.ablations.variant = 'ours': not one of grpo, "),
    ({"ablations": {"model": "nova", "grid": GRID}}, "config.ablations.model = 'nova': not one of tiny-nova"),
    ({"ablations": {"grid": {"S": [0]}}}, "config.ablations.grid.S[0] = 0: 0 is less than the minimum of 1"),
])
def test_bad_seeds_and_sweeps_name_the_key(small, changes, message):
    with pytest.raises(ConfigError) as e:
        _exp(small, **changes)
    assert message in str(e.value)


def test_dry_run_has_a_run_per_seed_and_a_run_per_point_of_the_sweep(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(json.dumps({"seeds": [0, 1], "ablations": {"grid": GRID}, "grad_noise": {"draws": 4}}))
    r = snakemake("-n", "-p", "--configfile", "config/small.yaml", str(study), "--cores", "1", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    # 2 rewards x 2 seeds x (tiny-nova's 4 variants + tiny-harmon's Table 1 two), and 5 sweep points x 2 seeds
    assert counts["train"] == counts["select_checkpoint"] == 2 * 2 * (4 + 2) + 10
    # per suite: 2 base rows + (4 + 2) x 2 trained; the sweep: its preference suite
    assert counts["generate"] == counts["evaluate"] == 2 * (2 + 12) + 10
    assert counts["ablations"] == 1 and counts["tables"] == 1 and counts["grad_noise"] == 2
    assert re.search(r"marpipe bench grad-noise --model resources/models/tiny-harmon/model.safetensors "
                     r"--draws 4 --preset reference --csv results/grad_noise/tiny-harmon.csv", r.stdout)
    trains = {b["wildcards"] for b in jobs(r.stdout) if b["rule"] == "train"}
    assert "model=tiny-nova, reward=hps, variant=sim/top_k~0.1/tau~0.0/S~3, seed=1" in trains
    assert "model=tiny-harmon, reward=mixed, variant=grpo, seed=0" in trains
    # Table 2 is on the first model: only it trains +Fix Decoder and +MTE
    for v in ("fix_decoder", "mte"):
        assert f"model=tiny-nova, reward=mixed, variant={v}, seed=1" in trains
        assert not any(t.startswith("model=tiny-harmon") and f"variant={v}," in t for t in trains)
    evals = [b for b in jobs(r.stdout) if b["rule"] == "evaluate"]
    assert any("results/selected/tiny-nova/hps/sim/top_k~1.0/tau~0.0/S~3/seed0.json" in b["input"] for b in evals)


# ------------------------------------------------------------------------------------------
# the bootstrap over prompts and training seeds
# ------------------------------------------------------------------------------------------
def test_one_seed_is_exactly_the_bootstrap_over_prompts():
    rng = np.random.default_rng(0)
    v, p = rng.normal(size=120).tolist(), [i // 2 for i in range(120)]
    assert stats.bootstrap_mean(v, p) == stats.bootstrap_mean(v, p, seed_index=[5] * 120)


def test_seed_spread_widens_the_interval_and_keeps_coverage():
    """Runs differ by a seed effect (sd 1) on top of the prompt noise: an interval that ignored the
    seeds would be too narrow; the seeds' spread (Student's t) covers the mean over seeds' population."""
    rng = np.random.default_rng(3)
    n_prompts, n_seeds, hits, widths = 60, 5, [], []
    for _ in range(200):
        prompt = rng.normal(0.0, 0.3, n_prompts)
        seed_effect = rng.normal(0.0, 1.0, n_seeds)
        v = (prompt[None, :] + seed_effect[:, None] + rng.normal(0.0, 0.3, (n_seeds, n_prompts))).ravel()
        pid, sid = np.tile(np.arange(n_prompts), n_seeds), np.repeat(np.arange(n_seeds), n_prompts)
        with_seeds = stats.bootstrap_mean(v, pid, seed_index=sid, n_resamples=500)
        without = stats.bootstrap_mean(v, pid, n_resamples=500)
        hits.append(with_seeds.lo <= 0.0 <= with_seeds.hi)
        widths.append((with_seeds.hi - with_seeds.lo) / (without.hi - without.lo))
        assert with_seeds.n_seeds == n_seeds and with_seeds.estimate == without.estimate
    # Student's t over 5 seeds: the nominal 95% (200 draws: >= 0.9); ignoring the seeds covers far less
    assert np.mean(hits) >= 0.9, np.mean(hits)
    assert np.median(widths) > 3


def test_three_seeds_decide_a_null_difference_no_more_often_than_the_level():
    """Two rows with no difference, each run's level shifted by its training seed (shared by both
    rows' runs of that seed) and by its own run noise: with 3 seeds, a paired interval must exclude
    0 in about 5% of the studies (measured: 11 of 200). The bootstrap over the 3 seeds that it replaces did
    so in 46 of 200."""
    rng = np.random.default_rng(5)
    n_prompts, n_seeds, decisive = 40, 3, 0
    pid, sid = np.tile(np.arange(n_prompts), n_seeds), np.repeat(np.arange(n_seeds), n_prompts)
    for _ in range(200):
        prompt, shared = rng.normal(0.0, 2.0, n_prompts), rng.normal(0.0, 1.0, (n_seeds, 1))
        a, b = ((prompt[None, :] + shared + rng.normal(0.0, 0.5, (n_seeds, 1))
                 + rng.normal(0.0, 0.3, (n_seeds, n_prompts))).ravel() for _ in range(2))
        d = stats.bootstrap_difference(a, b, pid, seed_index=sid, seed_index_b=sid, n_resamples=300)
        decisive += not (d.lo <= 0.0 <= d.hi)
    assert decisive / 200 <= 0.1, decisive


def test_paired_difference_with_seeds_finds_a_planted_effect_and_not_a_null():
    rng = np.random.default_rng(7)
    n_prompts, n_seeds = 40, 4
    prompt = rng.normal(0.0, 2.0, n_prompts)
    pid, sid = np.tile(np.arange(n_prompts), n_seeds), np.repeat(np.arange(n_seeds), n_prompts)
    base = prompt + rng.normal(0.0, 0.1, n_prompts)                       # one run: the base model
    for shift, expected in ((0.5, "holds"), (0.0, "inconclusive")):
        row = (prompt[None, :] + shift + rng.normal(0.0, 0.2, (n_seeds, 1))
               + rng.normal(0.0, 0.1, (n_seeds, n_prompts))).ravel()
        d = stats.bootstrap_difference(row, base, pid, prompt_index_b=np.arange(n_prompts), seed_index=sid)
        assert stats.verdict(d.lo, d.hi, paper_diff=1.0) == expected, (shift, d)
        assert d.estimate == pytest.approx(row.mean() - base.mean(), rel=1e-12)


def test_tables_merge_a_rows_seeds(small, tmp_path):
    exp = _exp(small, seeds=[0, 1])
    files = write_scores(exp, tmp_path)
    recs = T.score_records_from_files(files)
    # seed 1 scores 1.0 higher than seed 0 on every image of hps-sim
    for r in recs:
        if r["row"] == "hps-sim" and r["seed"] == 1:
            r["per_image"]["HPS"]["value"] = [v + 1.0 for v in r["per_image"]["HPS"]["value"]]
            r["scores"]["HPS"] += 1.0
    tabs = T.build_tables(exp, recs)
    seed0 = next(r for r in recs if (r["model"], r["row"], r["suite"], r["seed"]) == ("tiny-nova", "hps-sim", "preference", 0))
    assert tabs["table1"].loc[2, "HPS"] == pytest.approx(seed0["scores"]["HPS"] + 0.5, rel=1e-12)
    iv = tabs["intervals"]
    line = iv[(iv["table"] == "table1") & (iv["base"] == "NOVA") & (iv["row"] == "Ours") & (iv["column"] == "HPS")]
    assert int(line["n_seeds"].iloc[0]) == 2 and int(line["n_images"].iloc[0]) == 2 * len(seed0["per_image"]["HPS"]["value"])
    base = iv[(iv["table"] == "table1") & (iv["base"] == "NOVA") & (iv["row"] == "NOVA") & (iv["column"] == "HPS")]
    assert int(base["n_seeds"].iloc[0]) == 1
    d = tabs["differences"]
    ours = d[(d["table"] == "table1") & (d["base"] == "NOVA") & (d["column"] == "HPS")]
    assert ours["note"].iloc[0] == "" and not np.isnan(ours["lo"].iloc[0])
    with pytest.raises(ValueError, match="two score records for model 'tiny-nova', row 'hps-sim', suite "
                                         "'preference', training seed 0"):
        T.build_tables(exp, recs + [seed0])


def test_ablation_table_finds_a_planted_better_point(small, tmp_path):
    from marpipe.stages.ablations import ablation_table, make_ablations
    exp = _exp(small, seeds=[0, 1, 2], ablations={"grid": GRID})    # 3: two seeds (t with 1 df) decide nothing
    a = exp.ablation
    rng = np.random.default_rng(0)
    n = 40
    prompt = rng.normal(0.0, 1.0, n)
    records, names = [], ["sim"] + exp.ablation_variants()
    for name in names:
        knobs = {**exp.ablation_centre(), **E.split_variant(name)[1]}
        lift = 0.5 if knobs["S"] == 5 else 0.0                  # S = 5 is better; everything else equal
        for seed in exp.seeds:
            vals = (prompt + lift + rng.normal(0.0, 0.05, n)).tolist()
            records.append({"model": a["model"], "reward": "hps", "variant": name, "seed": seed, "suite": "preference",
                            "row": f"hps-{name}", "scores": {c: float(np.mean(vals)) for c in exp.columns("preference")},
                            "per_image": {c: {"prompt_index": list(range(n)), "value": vals}
                                          for c in exp.columns("preference")}})
    table = ablation_table(exp, records)
    hps = table[table["metric"] == "HPS"]
    verdicts = {(r.knob, r.value): r.verdict for r in hps.itertuples()}
    assert verdicts[("S", 5.0)] == "higher" and verdicts[("S", 1.0)] == "inconclusive"
    assert verdicts[("top_k", 0.1)] == "inconclusive"
    assert list(hps["knob"].unique()) == ["top_k", "tau", "S"]
    assert (hps[hps["verdict"] == "centre"]["n_seeds"] == 3).all()
    for seed in exp.seeds:                                     # training logs for the reward curves
        for name in names:
            run = tmp_path / "runs" / a["model"] / "hps" / name / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward_mean": 0.1 * s}) + "\n"
                                                       for s in range(1, 4)))
    out = make_ablations(exp, records, tmp_path / "ablations", tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["fig7.csv", "fig7_curves.png", "fig7_knobs.png"]
    assert pd.read_csv(out / "fig7.csv").columns.tolist()[:4] == ["knob", "value", "variant", "metric"]
    with pytest.raises(FileNotFoundError, match=r"no preference scores for the ablation points \['sim'\]"):
        ablation_table(exp, records[3:])


def test_grad_noise_csv_has_a_line_per_row_and_block(tmp_path):
    from marpipe.bench.grad_noise import CSV_COLUMNS, write_csv
    stat = {"noise_to_signal": 0.25, "mean_cosine": 0.8, "trace_cov": 1.0, "signal": 4.0, "mean_norm": 2.0}
    report = {"rows": [{"label": "GRPO (end to end)", "S": None, "top_k": None, "trajectories": 1,
                        "trained": {"ar": True, "head": True}, "ar": stat, "head": {**stat, "noise_to_signal": math.inf}},
                       {"label": "+MTE S=5 top_k=0.3", "S": 5, "top_k": 0.3, "trajectories": 6,
                        "trained": {"ar": True, "head": False}, "ar": stat, "head": stat}]}
    lines = write_csv(report, tmp_path / "g.csv").read_text().splitlines()
    assert lines[0].split(",") == CSV_COLUMNS
    assert lines[1:] == ["GRPO (end to end),,,1,ar,1,0.25,0.8,1,4,2", "GRPO (end to end),,,1,head,1,inf,0.8,1,4,2",
                         "+MTE S=5 top_k=0.3,5,0.3,6,ar,1,0.25,0.8,1,4,2",
                         "+MTE S=5 top_k=0.3,5,0.3,6,head,0,0.25,0.8,1,4,2"]


def test_mlflow_sync_finds_every_seed_and_sweep_run(small, tmp_path):
    """``marpipe mlflow-sync`` replays runs/<model>/<reward>/<variant>/seed<N>/ (a sweep point's
    variant has folders of its own) and scores/<model>/<row>/seed<N>/: one MLflow run per run id."""
    from mlflow.tracking import MlflowClient

    from marpipe.audit import mlflow_sync
    exp = _exp(small, seeds=[0, 1], ablations={"grid": GRID})
    point = exp.ablation_variants()[0]
    results = tmp_path / "results"
    for variant, seed in (("mte", 0), ("mte", 1), (point, 1)):
        run = results / "runs" / "tiny-nova" / "hps" / variant / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward_mean": 0.5 + seed}) + "\n")
        (run / "summary.json").write_text(json.dumps({"config": {"seed": seed}}))
    warm = results / "runs" / "tiny-harmon" / "warmup"          # no seed: not a GRPO run of the tables
    warm.mkdir(parents=True)
    (warm / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward_mean": 0.1}) + "\n")
    score = results / "scores" / "tiny-nova" / "hps-mte" / "seed1" / "preference.json"
    score.parent.mkdir(parents=True)
    score.write_text(json.dumps({"model": "tiny-nova", "row": "hps-mte", "reward": "hps", "variant": "mte", "seed": 1,
                                 "suite": "preference", "scores": {"HPS": 30.0}, "checkpoint": {"step": 12, "rule": "fixed"}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sent = mlflow_sync(exp, results, tmp_path / "mlflow.json", tracking_uri=uri)
    assert sent["runs"] == 3 and sent["scores"] == 1
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(exp.cfg["experiment"]).experiment_id])
    by_key = {r.data.tags["marpipe.run_key"]: r for r in runs}
    assert set(by_key) == {"tiny-nova/hps-mte/seed0", "tiny-nova/hps-mte/seed1", f"tiny-nova/hps-{point}/seed1"}
    one = by_key["tiny-nova/hps-mte/seed1"]
    assert (one.data.tags["row"], one.data.tags["seed"]) == ("hps-mte", "1")
    assert one.data.metrics["reward_mean"] == 1.5 and one.data.metrics["eval.preference.HPS"] == 30.0


def test_verdicts_of_several_runs_side_by_side(tmp_path, capsys):
    from marpipe.cli import main
    header = "table,base,claim,a,b,column,paper_diff,ours_diff,lo,hi,verdict,n_prompts,note\n"
    lines = {"one": ["table1,NOVA,Ours > +GRPO,Ours,+GRPO,HPS,1.78,2.0,0.5,3.5,holds,48,",
                     "table1,NOVA,Ours > +GRPO,Ours,+GRPO,Color,0.04,0.0,-0.1,0.1,inconclusive,24,"],
             "two": ["table1,NOVA,Ours > +GRPO,Ours,+GRPO,HPS,1.78,1.0,0.1,2.0,holds,48,",
                     "table1,NOVA,Ours > +GRPO,Ours,+GRPO,Color,0.04,-0.3,-0.5,-0.1,contradicted,24,"]}
    for name, rows in lines.items():
        tables = tmp_path / name / "results" / "tables"
        tables.mkdir(parents=True)
        (tables / "verdicts_vs_paper.csv").write_text(header + "\n".join(rows) + "\n")
    assert main(["verdicts", str(tmp_path / "one"), f"two={tmp_path / 'two'}"]) == 1
    out = capsys.readouterr().out
    assert "| holds [+0.5, +3.5] | holds [+0.1, +2] | yes |" in out
    assert "| inconclusive [-0.1, +0.1] | contradicted [-0.5, -0.1] | NO |" in out
    assert "1 of 2 verdicts agree across " in out
    assert main(["verdicts", str(tmp_path / "one"), f"same={tmp_path / 'one'}"]) == 0
    # Fig. 7's points join the claims when a run has the sweep (its centre is no claim)
    fig7 = "knob,value,variant,metric,mean,lo,hi,n_prompts,n_seeds,diff_vs_centre,diff_lo,diff_hi,verdict,n_claims\n"
    for name, lo in (("one", -1.0), ("two", 0.2)):
        (tmp_path / name / "results" / "ablations").mkdir()
        (tmp_path / name / "results" / "ablations" / "fig7.csv").write_text(
            fig7 + "top_k,0.3,sim,HPS,30,28,32,48,3,0,,,centre,1\n"
            f"top_k,0.1,sim/top_k~0.1/tau~0.0/S~3,HPS,31,29,33,48,3,1.0,{lo},2.0,"
            f"{'inconclusive' if lo < 0 else 'higher'},1\n")
    assert main(["verdicts", str(tmp_path / "one"), f"two={tmp_path / 'two'}"]) == 1
    out = capsys.readouterr().out
    assert "| fig7 | top_k | top_k = 0.1 vs the centre | HPS | inconclusive [-1, +2] | higher [+0.2, +2] | NO |" in out
    assert "1 of 3 verdicts agree across " in out


def test_tables_command_reads_a_folder_of_score_files(small, tmp_path):
    """The README's audit step: ``--scores results/scores`` takes every score file below it (base rows
    one folder deep, trained runs two: ``<row>/seed<N>/``)."""
    from marpipe.cli import main
    exp = E.load(copy.deepcopy(small))
    files = write_scores(exp, tmp_path / "results")
    assert {len(f.relative_to(tmp_path / "results" / "scores").parts) for f in files} == {3, 4}
    assert main(["tables", "--config", str(ROOT / "config" / "small.yaml"), "--scores",
                 str(tmp_path / "results" / "scores"), "--out-dir", str(tmp_path / "a")]) == 0
    assert main(["tables", "--config", str(ROOT / "config" / "small.yaml"), "--scores", *map(str, files),
                 "--out-dir", str(tmp_path / "b")]) == 0
    for name in ("table1.csv", "table2.csv", "intervals.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "nan" not in (tmp_path / "a" / "table2.csv").read_text().lower()
