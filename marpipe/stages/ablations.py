"""Fig. 7: the ablation sweeps over ``top_k``, ``tau`` and ``S``, with intervals.

The sweep (config ``ablations:``; :meth:`marpipe.experiment.Experiment.ablation_frame`) varies one
knob at a time around the ablated variant (+Sim) on one model with the HPS reward; every point is
trained, selected, generated and scored like a row of Table 2. Outputs in ``results/ablations``:
``fig7.csv`` (:func:`ablation_table`), ``fig7_knobs.png`` (Fig. 7c, :func:`plot_knobs`) and
``fig7_curves.png`` (Fig. 7b, :func:`plot_reward_curves`). ``docs/results.md``, "The study"."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from marpipe import layout, stats
from marpipe.experiment import ABLATION_KNOBS, Experiment, split_variant
from marpipe.io.tracking import read_jsonl

COLUMNS = ["knob", "value", "variant", "metric", "mean", "lo", "hi", "n_prompts", "n_seeds",
           "diff_vs_centre", "diff_lo", "diff_hi", "diff_decidable", "verdict", "n_claims"]
KNOB_LABELS = {"top_k": "top-k ratio k", "tau": "similarity threshold τ", "S": "diffusion trajectories S"}


def _points(exp: Experiment) -> list[tuple[str, dict]]:
    """(variant name, knob values) of the centre (the ablated variant's own run) and of each point
    of the sweep, in the frame's order."""
    a = exp.ablation
    return [(a["variant"], exp.ablation_centre())] + [(name, split_variant(name)[1]) for name in exp.ablation_variants()]


def _pooled(records: list[dict], col: str):
    """All seeds' per-image values of one column: (values, prompt_index, seed_index, strata)."""
    values, index, seeds = [], [], []
    for r in records:
        e = r["per_image"][col]
        values += e["value"]
        index += e["prompt_index"]
        seeds += [r.get("seed") or 0] * len(e["value"])
    strata = (records[0].get("strata") or {}).get("of_prompt")
    return values, index, seeds, strata


def ablation_table(exp: Experiment, records: list[dict]) -> pd.DataFrame:
    """``fig7.csv``'s lines from the sweep's score records (preference suite, one per point and seed):
    per (knob, value, metric) the cell (mean over all images of all seeds) with its 95% interval over
    prompts and seeds, and the paired difference from the centre with its interval and verdict
    (``higher`` / ``lower`` / ``inconclusive``). The sweep's ``n_claims`` differences are decided
    together (:func:`marpipe.stats.simultaneous`); ``diff_decidable`` is the half-width, the
    smallest difference from the centre the sweep can decide."""
    a = exp.ablation
    if a is None:
        raise ValueError("config has no `ablations.grid`: nothing to tabulate")
    by_variant: dict[str, list[dict]] = {}
    for r in records:
        if r["model"] == a["model"] and r.get("reward") == a["reward"] and r["suite"] == "preference":
            by_variant.setdefault(r["variant"], []).append(r)
    points = _points(exp)
    centre = points[0]                     # the variant's own run
    missing = [name for name, _ in points if name not in by_variant]
    if missing:
        raise FileNotFoundError(f"no preference scores for the ablation points {missing} (run the sweep first)")
    lines = []
    for col in exp.columns("preference"):
        c_vals = _pooled(by_variant[centre[0]], col)
        for name, knobs in points:
            moved = [k for k in ABLATION_KNOBS if knobs[k] != centre[1][k]]
            vals = _pooled(by_variant[name], col)
            iv = stats.bootstrap_mean(vals[0], vals[1], vals[3], vals[2])
            d = stats.bootstrap_difference(vals[0], c_vals[0], vals[1], vals[3], prompt_index_b=c_vals[1],
                                           seed_index=vals[2], seed_index_b=c_vals[2])
            for knob in (moved or list(ABLATION_KNOBS)):     # the centre belongs to every panel
                lines.append({"knob": knob, "value": knobs[knob], "variant": name, "metric": col,
                              "mean": iv.estimate, "lo": iv.lo, "hi": iv.hi, "n_prompts": iv.n_prompts,
                              "n_seeds": iv.n_seeds, "diff_vs_centre": d.estimate if moved else 0.0,
                              "diff_se": d.se if moved else np.nan, "diff_df": d.df, "verdict": "" if moved else "centre"})
    # the sweep's comparisons are decided together, like the tables' claims (stats.simultaneous)
    n_claims = sum(1 for x in lines if x["verdict"] == "" and not np.isnan(x["diff_se"]))
    for x in lines:
        se, df = x.pop("diff_se"), x.pop("diff_df")
        x["diff_lo"], x["diff_hi"] = stats.simultaneous(x["diff_vs_centre"], se, df, n_claims)
        x["diff_decidable"] = stats.decidable(se, df, n_claims)      # the smallest difference it can decide
        if x["verdict"] == "":
            x["verdict"] = ("higher" if x["diff_lo"] > 0 else "lower" if x["diff_hi"] < 0 else "inconclusive")
        x["n_claims"] = n_claims
    df = pd.DataFrame(lines, columns=COLUMNS)
    order = {k: i for i, k in enumerate(ABLATION_KNOBS)}
    return df.sort_values(["metric", "knob", "value"], key=lambda s: s.map(order) if s.name == "knob" else s,
                          kind="stable", ignore_index=True)


def plot_knobs(table: pd.DataFrame, metric: str, title: str, out_png: str | Path) -> Path:
    """Fig. 7c: the final metric against each knob, 95% intervals as error bars."""
    from matplotlib.figure import Figure

    from marpipe.stages.figures import DPI, _save
    fig = Figure(figsize=(12.0, 3.6), dpi=DPI)
    axes = fig.subplots(1, len(ABLATION_KNOBS))
    for ax, knob in zip(axes, ABLATION_KNOBS):
        t = table[(table["metric"] == metric) & (table["knob"] == knob)].sort_values("value")
        x, y = t["value"].to_numpy(float), t["mean"].to_numpy(float)
        err = np.vstack([y - t["lo"].to_numpy(float), t["hi"].to_numpy(float) - y])
        ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, linewidth=1.4, color="C3")
        centre = t[t["verdict"] == "centre"]
        ax.plot(centre["value"], centre["mean"], marker="*", markersize=14, linestyle="", color="black",
                label="the variant's own value")
        ax.set_xlabel(KNOB_LABELS[knob])
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_reward_curves(curves: dict[float, dict[int, float]], title: str, out_png: str | Path) -> Path:
    """Fig. 7b: mean training reward against the step, one line per ``top_k``."""
    from matplotlib.figure import Figure

    from marpipe.stages.figures import DPI, _save
    fig = Figure(figsize=(6.0, 3.6), dpi=DPI)
    ax = fig.subplots()
    for i, (k, curve) in enumerate(sorted(curves.items())):
        steps = sorted(curve)
        ax.plot(steps, [curve[s] for s in steps], label=f"k = {k:g}", color=f"C{i % 10}", linewidth=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("mean group reward")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


def reward_curves(exp: Experiment, results: str | Path = "results") -> dict[float, dict[int, float]]:
    """top_k -> {step: training reward, mean over training seeds} for the points that move ``top_k``."""
    a = exp.ablation
    centre = _points(exp)[0][1]
    out = {}
    for name, knobs in _points(exp):
        if any(knobs[k] != centre[k] for k in ABLATION_KNOBS if k != "top_k"):
            continue
        per_step: dict[int, list[float]] = {}
        for seed in exp.seeds:
            for row in read_jsonl(layout.run_metrics(a["model"], a["reward"], name, seed, results)):
                per_step.setdefault(int(row["step"]), []).append(float(row["reward_mean"]))
        out[float(knobs["top_k"])] = {s: float(np.mean(v)) for s, v in per_step.items()}
    return out


def make_ablations(exp: Experiment, records: list[dict], out_dir: str | Path, results: str | Path = "results") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = ablation_table(exp, records)
    table.to_csv(out_dir / "fig7.csv", index=False, float_format="%.6g", lineterminator="\n")
    a = exp.ablation
    metric = exp.columns("preference")[0]
    seeds = f"{len(exp.seeds)} training seed{'s' if len(exp.seeds) > 1 else ''}"
    plot_knobs(table, metric, f"{exp.label(a['model'])}, {a['reward']} reward, {a['variant']}: {metric} vs "
                              f"each knob (95% intervals, {seeds})", out_dir / "fig7_knobs.png")
    plot_reward_curves(reward_curves(exp, results), f"{exp.label(a['model'])}, {a['reward']} reward: training "
                                                    f"reward across top_k", out_dir / "fig7_curves.png")
    return out_dir
