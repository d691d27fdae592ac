"""Tables 1 and 2 of the paper from our score files (or MLflow), and how they compare with the paper's.

* Records: one per (model, row, suite) evaluation, read from the score files
  ``results/scores/{model}/{row}/{suite}.json`` (:func:`score_records_from_files`) or
  rebuilt from the MLflow runs the evaluate stage logged (:func:`score_records_from_mlflow`);
  both give the same tables.
* :func:`build_tables` lays them out as the paper does. Table 1: per model, its base,
  ``+GRPO`` and ``Ours`` (the ``sim`` variant); preference columns from the rows trained
  with ``evaluation.preference.reward``, T2I-CompBench columns from the rows trained with
  ``evaluation.compbench.reward``. Table 2: the first model, the base and the four
  variants (``GRPO``, ``+Fix Decoder``, ``+MTE``, ``+Sim (Ours)``) with the checkpoint
  each was read at. A cell without a record is NaN, never filled in.
* Intervals (:mod:`marpipe.stats`): every cell gets a 95% interval of the very estimator the
  cell prints (one training seed: percentile bootstrap over prompts, 2,000 resamples, seed 0,
  preference suite within styles; several: Student's t over seeds and prompts), and every
  comparison the paper makes is a paired difference -- Table 1: ``Ours`` vs ``+GRPO`` per model
  and column; Table 2: each row vs the row above it -- over the prompts both rows were sampled
  on, decided with the others under one simultaneous (Bonferroni) 95% level. Both need
  the score files' ``per_image`` values (:mod:`marpipe.stages.evaluate`); records without
  them (score files written before, and every record from MLflow, which holds only the
  means) give the same tables with no interval and ``no verdict``, never an error.
* :func:`compare_with_paper` puts our numbers beside the paper's (``marpipe/data/
  paper_table{1,2}.csv``) with deltas, and gives each comparison a verdict against the paper's
  own difference: ``holds`` (our interval excludes 0 on the paper's side), ``contradicted``
  (excludes 0 on the other side), ``inconclusive`` (contains 0). In the small world the
  scorers differ from the paper's: only the directions are comparable, not the values.
* :func:`write_tables` writes the CSVs (fixed float format: reruns are byte-identical):
  ``table1.csv`` and ``table2.csv`` keep their columns exactly (point values only; they are
  the same whether built from files or MLflow), the intervals go to ``intervals.csv`` (long:
  one line per cell, ``value``, ``lo``, ``hi``), the verdicts to ``verdicts_vs_paper.csv``;
  also ``tables.md`` and the report's HTML (:func:`tables_html`, :func:`tables_summary_html`);
  :func:`format_for_terminal` is the short text printed at the end.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from marpipe import stats
from marpipe.experiment import BASE, SUITES, TABLE1_VARIANTS, TABLE2_VARIANTS, row_id

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
FLOAT_FORMAT = "%.4f"

# Table 1: row label -> variant ("base" = the untrained model, labelled with the model's label); the
# variants are the experiment's (TABLE1_VARIANTS: what every model trains), only the labels are here
TABLE1_ROWS = dict(zip(("+GRPO", "Ours"), TABLE1_VARIANTS, strict=True))
# Table 2: row label -> variant, in the paper's order (TABLE2_VARIANTS: the first model's)
TABLE2_ROWS = dict(zip(("GRPO", "+Fix Decoder", "+MTE", "+Sim (Ours)"), TABLE2_VARIANTS, strict=True))
TABLE2_COLUMNS = ("HPS", "Aesthetic", "Shape", "Texture", "2d-spatial")
CHECKPOINT_RULE_TEXT = {"best": "best*", "fixed": "fixed", "base": "base"}

RECORD_KEYS = ("model", "label", "row", "reward", "variant", "suite", "scores", "checkpoint")


# ------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------
def score_paths(exp, results: str | Path = "results") -> list[Path]:
    """The score files the tables read: every run of each suite, ``{results}/scores/{model}/{row id}/{suite}.json``."""
    return [Path(results) / "scores" / row.model / row.id / f"{suite}.json"
            for suite in SUITES for row in exp.suite_rows(suite)]


def _record(d: dict) -> dict:
    missing = [k for k in ("model", "row", "suite", "scores") if k not in d]
    if missing:
        raise ValueError(f"score record lacks {missing}: {sorted(d)}")
    rec = {
        "model": d["model"], "label": d.get("label"), "row": d["row"],
        "reward": d.get("reward") or None,
        "variant": d.get("variant") or (BASE if d["row"] == BASE else d["row"].split("-", 1)[-1]),
        "suite": d["suite"], "seed": None if d.get("seed") in (None, "") else int(d["seed"]),
        "scores": {k: float(v) for k, v in d["scores"].items() if v is not None},
        "checkpoint": _checkpoint(d.get("checkpoint")),
    }
    for extra in ("scorer_for", "world", "n_images", "per_style"):
        if d.get(extra) is not None:
            rec[extra] = d[extra]
    if d.get("per_image"):
        rec["per_image"] = _per_image_of(d["per_image"])
        strata = d.get("strata") or None
        if strata is not None:
            if not isinstance(strata, dict) or not isinstance(strata.get("of_prompt"), list):
                raise ValueError(f"strata must be {{'by': ..., 'of_prompt': [...]}}, not {strata!r}")
            rec["strata"] = {"by": strata.get("by"), "of_prompt": list(strata["of_prompt"])}
    return rec


def _per_image_of(per_image: dict) -> dict:
    """``{col: {"prompt_index": [...], "value": [...]}}``, checked: one prompt index per value."""
    out = {}
    for col, entry in per_image.items():
        if not isinstance(entry, dict) or "value" not in entry or "prompt_index" not in entry:
            raise ValueError(f"per_image[{col!r}] must hold 'prompt_index' and 'value' lists")
        values, index = list(entry["value"]), [int(i) for i in entry["prompt_index"]]
        if len(values) != len(index):
            raise ValueError(f"per_image[{col!r}]: {len(values)} values but {len(index)} prompt indices")
        out[col] = {"prompt_index": index, "value": [math.nan if v is None else float(v) for v in values]}
    return out


def _checkpoint(c) -> dict:
    c = c or {}
    step = c.get("step")
    if isinstance(step, str):
        step = int(step) if step.strip().lstrip("-").isdigit() else None
    return {"rule": c.get("rule") or None, "step": None if step is None else int(step)}


def score_records_from_files(paths: Iterable[str | Path]) -> list[dict]:
    """Read score JSON files (the evaluate stage's output) into records."""
    records = []
    for p in paths:
        try:
            records.append(_record(json.loads(Path(p).read_text())))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{p}: not a score file ({e})") from None
    return records


def score_records_from_mlflow(exp, tracking_uri: str | None = None) -> list[dict]:
    """Rebuild the score records from the evaluate stage's MLflow runs.

    Runs are found by the ``marpipe.run_key`` tag in experiment ``exp.cfg['experiment']``;
    metrics ``eval.{suite}.{column}`` at the run's ``checkpoint_step`` become ``scores``, each
    the newest point at that step (a re-evaluation with other values adds a newer one, see
    :mod:`marpipe.io.tracking`). Only the runs of this config's rows count: a run key it does not
    give (a row it lacks, an older key layout, an ablation point) or another training config
    (a ``train_hash`` tag other than the config's for the row) is passed over. Where one run key
    has several runs, the most recently started one that holds the suite's metrics wins.

    MLflow holds only each column's mean, not the per-image values: tables built from these
    records have the same values as those built from the score files but **no intervals**
    (``lo``/``hi`` empty, every verdict ``no verdict``). Build from the score files for intervals.
    """
    import os

    from mlflow.tracking import MlflowClient

    from marpipe.io.tracking import held_points_of

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    name = exp.cfg["experiment"]
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise LookupError(f"MLflow experiment {name!r} not found at {client.tracking_uri}: "
                          f"run the evaluate stage first, or read the score files instead")
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], filter_string="tags.`marpipe.run_key` != ''",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    runs.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id), reverse=True)
    lineage = _lineages(exp)
    chosen, seen = [], set()
    for run in runs:
        tags = run.data.tags
        row_key = tags.get("marpipe.run_key")
        if row_key not in lineage or tags.get("train_hash", "") != lineage[row_key]:
            continue
        for suite in SUITES:
            keys = [k for k in run.data.metrics if k.startswith(f"eval.{suite}.")]
            if keys and (row_key, suite) not in seen:
                seen.add((row_key, suite))
                chosen.append((run, suite, keys))
    points = held_points_of(client, [(run.info.run_id, k) for run, _, keys in chosen for k in keys])
    records = []
    for run, suite, keys in chosen:
        tags, prefix = run.data.tags, f"eval.{suite}."
        step = int(tags.get("checkpoint_step") or 0)
        scores = {k[len(prefix):]: points[run.info.run_id, k][step] for k in keys
                  if step in points[run.info.run_id, k]}
        records.append(_record({
            "model": tags["model"], "label": tags.get("label"), "row": tags["row"],
            "reward": tags.get("reward") or None, "variant": tags.get("variant"), "suite": suite,
            "seed": tags.get("seed") or None,
            "scores": scores, "world": tags.get("world") or None,
            "checkpoint": {"rule": tags.get("checkpoint_rule"), "step": tags.get("checkpoint_step")},
        }))
    records.sort(key=lambda r: (r["model"], r["row"], r["suite"]))
    return records


def _lineages(exp) -> dict[str, str]:
    """MLflow run key -> ``train_hash`` ("" for a base row) of every row of the config's tables."""
    from marpipe.stages.train import run_key, train_hash
    return {run_key(r.model, row_id(r.reward, r.variant, r.seed)): train_hash(exp, r.model, r.reward, r.variant, r.seed)
            for suite in SUITES for r in exp.suite_rows(suite)}


def _index(records: Sequence[dict]) -> dict[tuple[str, str, str], dict]:
    """(model, row, suite) -> its record; the records of a row's training seeds merged into one."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["row"], r["suite"]), []).append(r)
    out = {}
    for key, group in groups.items():
        seeds = [r.get("seed") for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"two score records for model {key[0]!r}, row {key[1]!r}, suite {key[2]!r}"
                             + (f", training seed {seeds[0]}" if seeds[0] is not None else ""))
        out[key] = group[0] if len(group) == 1 else _merge_seeds(sorted(group, key=lambda r: (r["seed"] is None, r["seed"] or 0)))
    return out


def _merge_seeds(group: list[dict]) -> dict:
    """One row's records of several training seeds as one record: a cell is the mean over all their
    images (with per-image values; else the mean of the seeds' cells), per-image values carry
    their seed, ``checkpoints`` lists each seed's."""
    rec = {**group[0], "seed": None, "seeds": [r["seed"] for r in group],
           "checkpoints": [r["checkpoint"] for r in group]}
    cols = [c for c in group[0]["scores"] if all(c in r["scores"] for r in group)]
    per_image = {}
    for col in cols:
        entries = [(r.get("per_image") or {}).get(col) for r in group]
        if all(entries):
            per_image[col] = {"prompt_index": [i for e in entries for i in e["prompt_index"]],
                              "value": [v for e in entries for v in e["value"]],
                              "seed": [r["seed"] for r, e in zip(group, entries) for _ in e["value"]]}
    rec["scores"] = {c: (stats.cell_estimate(per_image[c]["value"]) if c in per_image
                         else math.fsum(r["scores"][c] for r in group) / len(group)) for c in cols}
    rec["per_image"] = per_image
    rec["n_images"] = sum(r.get("n_images") or 0 for r in group) or None
    return rec


def _row_name(reward: str | None, variant: str) -> str:
    return BASE if variant == BASE else f"{reward}-{variant}"


# ------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------
INTERVAL_COLUMNS = ["table", "base", "row", "column", "value", "lo", "hi", "n_prompts", "n_images", "n_seeds"]
DIFFERENCE_COLUMNS = ["table", "base", "a", "b", "column", "ours_diff", "lo", "hi", "se", "df", "n_prompts", "note"]


def build_tables(exp, records: Sequence[dict]) -> dict[str, pd.DataFrame]:
    """``{"table1", "table2", "stand_ins", "intervals", "differences"}``.

    ``table1``/``table2``: Tables 1 and 2 laid out like the paper's (NaN where no record);
    ``stand_ins``: which scorer produced each column in which world (records' ``scorer_for``,
    else the config's evaluation section); ``intervals``: one line per cell of both tables
    (``table``, ``base``, ``row``, ``column``) with its ``value`` and 95% bootstrap interval
    ``lo``/``hi`` (NaN without per-image values); ``differences``: the paired differences the
    paper's claims rest on (Table 1: ``Ours`` − ``+GRPO`` per model; Table 2: each row − the
    row above), ``ours_diff`` = the difference of the two cells, with its interval and a
    ``note`` where there is none."""
    idx = _index(records)
    rewards = {s: exp.cfg["evaluation"][s]["reward"] for s in SUITES}
    cols = {s: exp.columns(s) for s in SUITES}
    suite_of = {c: s for s in SUITES for c in cols[s]}

    def rec_of(model, variant, suite):
        return idx.get((model, _row_name(rewards[suite], variant), suite))

    def cell(model, variant, suite, col):
        rec = rec_of(model, variant, suite)
        return float(rec["scores"].get(col, np.nan)) if rec else np.nan

    cache: dict[tuple, stats.Interval | None] = {}

    def interval(model, variant, col) -> stats.Interval | None:
        key = (model, variant, col)
        if key not in cache:
            cache[key] = _cell_interval(rec_of(model, variant, suite_of[col]), col)
        return cache[key]

    t1, ci = [], []
    for model in exp.models:
        label = exp.label(model)
        for row_label, variant in [(label, BASE), *TABLE1_ROWS.items()]:
            t1.append({"model": row_label, "base": label,
                       **{c: cell(model, variant, s, c) for s in SUITES for c in cols[s]}})
            ci += [_interval_line("table1", label, row_label, c, t1[-1][c], interval(model, variant, c))
                   for s in SUITES for c in cols[s]]
    table1 = pd.DataFrame(t1, columns=["model", "base", *cols["preference"], *cols["compbench"]])

    model = exp.models[0]
    t2_cols = [(c, s) for c in TABLE2_COLUMNS for s in SUITES if c in cols[s]]
    t2 = []
    t2_rows = [(exp.label(model), BASE), *TABLE2_ROWS.items()]
    for row_label, variant in t2_rows:
        row = {"row": row_label, **{c: cell(model, variant, s, c) for c, s in t2_cols}}
        checkpoints = [c for s in SUITES if (k := (model, _row_name(rewards[s], variant), s)) in idx
                       for c in idx[k].get("checkpoints", [idx[k]["checkpoint"]])]
        row["checkpoint"] = _checkpoint_text(checkpoints, variant)
        t2.append(row)
        ci += [_interval_line("table2", exp.label(model), row_label, c, row[c], interval(model, variant, c))
               for c, _ in t2_cols]
    table2 = pd.DataFrame(t2, columns=["row", *[c for c, _ in t2_cols], "checkpoint"])

    diffs = []
    for m in exp.models:
        label = exp.label(m)
        (a_label, a), (b_label, b) = ("Ours", TABLE1_ROWS["Ours"]), ("+GRPO", TABLE1_ROWS["+GRPO"])
        diffs += [_difference("table1", label, a_label, b_label, c, rec_of(m, a, s), rec_of(m, b, s))
                  for s in SUITES for c in cols[s]]
    for (b_label, b), (a_label, a) in zip(t2_rows, t2_rows[1:]):
        diffs += [_difference("table2", exp.label(model), a_label, b_label, c, rec_of(model, a, s),
                              rec_of(model, b, s)) for c, s in t2_cols]

    world = world_of(records, exp)
    used = [r for r in records if (r["model"], r["row"], r["suite"]) in
            {(m, _row_name(rewards[s], v), s) for m in exp.models for v in (BASE, *exp.variants) for s in SUITES}]
    stand = pd.DataFrame([{"column": c, "scorer": sc, "world": world} for c, sc in stand_ins(used, exp).items()],
                         columns=["column", "scorer", "world"])
    return {"table1": table1, "table2": table2, "stand_ins": stand,
            "intervals": _counts_as_int(pd.DataFrame(ci, columns=INTERVAL_COLUMNS), ["n_prompts", "n_images", "n_seeds"]),
            "differences": _counts_as_int(pd.DataFrame(diffs, columns=DIFFERENCE_COLUMNS), ["n_prompts"])}


def _counts_as_int(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    for c in cols:
        df[c] = df[c].astype("Int64")          # integers in the CSV, empty where unknown
    return df


def _per_image(rec: dict | None, col: str) -> tuple[list, list, list | None, list | None] | None:
    """(values, prompt_index, strata of each prompt or None, training seed of each value or None)
    of a record's column; None: no per-image
    values (or no score). Refuses a record whose ``scores[col]`` is not the mean of its
    ``per_image[col]``: an interval of it would be the interval of another number."""
    entry = ((rec or {}).get("per_image") or {}).get(col)
    if not entry or col not in rec["scores"]:
        return None
    mean, score = stats.cell_estimate(entry["value"]), rec["scores"][col]
    if not (math.isclose(mean, score, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(mean) and math.isnan(score))):
        raise ValueError(f"score record {rec['model']}/{rec['row']}/{rec['suite']}: scores[{col!r}] = {score!r} "
                         f"but the mean of per_image[{col!r}] is {mean!r}")
    return entry["value"], entry["prompt_index"], ((rec.get("strata") or {}).get("of_prompt")), entry.get("seed")


def _cell_interval(rec: dict | None, col: str) -> stats.Interval | None:
    """The cell's bootstrap interval over prompts; None without per-image values."""
    data = _per_image(rec, col)
    return None if data is None else stats.bootstrap_mean(*data)


def _interval_line(table: str, base: str, row: str, col: str, value: float, iv: stats.Interval | None) -> dict:
    return {"table": table, "base": base, "row": row, "column": col, "value": value,
            "lo": iv.lo if iv else np.nan, "hi": iv.hi if iv else np.nan,
            "n_prompts": iv.n_prompts if iv else np.nan, "n_images": iv.n_images if iv else np.nan,
            "n_seeds": iv.n_seeds if iv else np.nan}


def _difference(table: str, base: str, a_label: str, b_label: str, col: str, a: dict | None,
                b: dict | None) -> dict:
    """Row ``a`` − row ``b`` in one column: the difference of the two cells and its paired
    bootstrap interval over the prompts both were sampled on (or a ``note`` why there is none)."""
    line = {"table": table, "base": base, "a": a_label, "b": b_label, "column": col, "ours_diff": np.nan,
            "lo": np.nan, "hi": np.nan, "se": np.nan, "df": np.nan, "n_prompts": np.nan, "note": ""}
    if a is None or b is None or col not in a["scores"] or col not in b["scores"]:
        line["note"] = "no score"
        return line
    line["ours_diff"] = float(a["scores"][col]) - float(b["scores"][col])
    da, db = _per_image(a, col), _per_image(b, col)
    if da is None or db is None:
        line["note"] = "no per-image values"
    elif sorted(set(da[1])) != sorted(set(db[1])):
        line["note"] = "rows not scored on the same prompts"
    elif da[2] != db[2]:
        line["note"] = "rows' prompt strata differ"
    else:
        iv = stats.bootstrap_difference(da[0], db[0], da[1], da[2], prompt_index_b=db[1], seed_index=da[3],
                                        seed_index_b=db[3])
        line.update(lo=iv.lo, hi=iv.hi, se=iv.se, df=iv.df, n_prompts=iv.n_prompts)
        if not iv.known:
            line["note"] = "fewer than two prompts"
    return line


def _checkpoint_text(checkpoints: list[dict], variant: str) -> str:
    """"base", "best* (step 250)", "fixed (step 500)"; several steps: "best* (steps 250, 400)"; none: ""."""
    if variant == BASE and checkpoints:
        return "base"
    rules = list(dict.fromkeys(CHECKPOINT_RULE_TEXT.get(c["rule"], str(c["rule"])) for c in checkpoints))
    steps = list(dict.fromkeys(c["step"] for c in checkpoints if c["step"] is not None))
    if not rules:
        return ""
    text = "/".join(rules)
    if steps:
        text += f" (step{'s' if len(steps) > 1 else ''} {', '.join(str(s) for s in steps)})"
    return text


# ------------------------------------------------------------------------------------------
# comparison with the paper
# ------------------------------------------------------------------------------------------
def read_paper_tables(paper_dir: str | Path = DATA_DIR) -> dict[str, pd.DataFrame]:
    paper_dir = Path(paper_dir)
    t1 = pd.read_csv(paper_dir / "paper_table1.csv", dtype={"params": str}, keep_default_na=True)
    t2 = pd.read_csv(paper_dir / "paper_table2.csv")
    return {"table1": t1, "table2": t2}


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two score lists (pairs with a NaN dropped); NaN if undefined."""
    pairs = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    conc = disc = ties_a = ties_b = 0
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            da = np.sign(pairs[i][0] - pairs[j][0])
            db = np.sign(pairs[i][1] - pairs[j][1])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom else float("nan")


def _order(labels: Sequence[str], values: Sequence[float]) -> str:
    """"Ours > +GRPO > NOVA" (ties "="; rows with NaN left out)."""
    items = sorted(((v, lab) for lab, v in zip(labels, values) if not math.isnan(v)), key=lambda t: -t[0])
    out = ""
    for i, (v, lab) in enumerate(items):
        if i:
            out += " = " if v == items[i - 1][0] else " > "
        out += lab
    return out


def _yes_no(x: float, y: float) -> str:
    return "" if math.isnan(x) or math.isnan(y) else ("yes" if x > y else "no")


def _long(ours: pd.DataFrame, paper: pd.DataFrame, keys: list[str], value_cols: list[str],
          ci: dict[tuple, tuple[float, float]] | None = None) -> pd.DataFrame:
    """One line per (row, column): ours, paper, delta = ours - paper, and our 95% interval
    ``ours_lo``/``ours_hi`` (``ci[(*key, column)]``; NaN: none); paper rows we lack: reference only."""
    ours_keyed = {tuple(r[k] for k in keys): r for _, r in ours.iterrows()}
    paper_keyed = {tuple(r[k] for k in keys): r for _, r in paper.iterrows()}
    order = list(paper_keyed) + [k for k in ours_keyed if k not in paper_keyed]
    lines = []
    for key in order:
        o, p = ours_keyed.get(key), paper_keyed.get(key)
        for col in value_cols:
            ov = float(o[col]) if o is not None and col in o.index else np.nan
            pv = float(p[col]) if p is not None and col in p.index and pd.notna(p[col]) else np.nan
            lo, hi = (ci or {}).get((*key, col), (np.nan, np.nan))
            lines.append({**dict(zip(keys, key)), "column": col, "ours": ov, "paper": pv, "delta": ov - pv,
                          "reference_only": o is None, "ours_lo": lo, "ours_hi": hi})
    return pd.DataFrame(lines, columns=[*keys, "column", "ours", "paper", "delta", "reference_only",
                                        "ours_lo", "ours_hi"])


def _ordering(table: str, group: str, labels: list[str], ours: pd.DataFrame, paper: pd.DataFrame,
              label_col: str, value_cols: list[str], grpo_label: str, ours_label: str) -> list[dict]:
    rows = []
    for col in value_cols:
        o = [_value(ours, label_col, lab, col) for lab in labels]
        p = [_value(paper, label_col, lab, col) for lab in labels]
        og, oo = _value(ours, label_col, grpo_label, col), _value(ours, label_col, ours_label, col)
        pg, po = _value(paper, label_col, grpo_label, col), _value(paper, label_col, ours_label, col)
        ours_gt, paper_gt = _yes_no(oo, og), _yes_no(po, pg)
        rows.append({"table": table, "base": group, "column": col,
                     "n": sum(not (math.isnan(x) or math.isnan(y)) for x, y in zip(o, p)),
                     "kendall_tau": kendall_tau(o, p), "ours_order": _order(labels, o),
                     "paper_order": _order(labels, p), "ours_gt_grpo": ours_gt, "paper_ours_gt_grpo": paper_gt,
                     "agrees": "" if not (ours_gt and paper_gt) else ("yes" if ours_gt == paper_gt else "no")})
    return rows


def _value(df: pd.DataFrame, label_col: str, label: str, col: str) -> float:
    if col not in df.columns:
        return np.nan
    hit = df.loc[df[label_col] == label, col]
    return float(hit.iloc[0]) if len(hit) and pd.notna(hit.iloc[0]) else np.nan


def compare_with_paper(tables: dict[str, pd.DataFrame], paper_dir: str | Path = DATA_DIR) -> dict[str, pd.DataFrame]:
    """Our tables beside the paper's.

    Returns ``table1`` / ``table2`` (long: one line per row x column with ``ours``, ``paper``,
    ``delta``, ``reference_only`` for the paper's other models, and our interval ``ours_lo``/
    ``ours_hi``), ``verdicts`` (one line per comparison the paper makes -- Table 1: Ours vs
    +GRPO per model and column; Table 2: each row vs the row above -- with the paper's
    difference, ours with its paired simultaneous 95% interval and the verdict, :func:`marpipe.stats.verdict`)
    and ``ordering`` (point values only, kept for ``ordering_vs_paper.csv``: Kendall tau and
    "Ours > GRPO" per column, blind to the noise; the verdicts supersede it).
    Rows are matched by label (Table 1: ``model`` within ``base``), columns by name.
    """
    paper = read_paper_tables(paper_dir)
    t1, t2 = tables["table1"], tables["table2"]
    p1, p2 = paper["table1"], paper["table2"]
    cols1 = [c for c in t1.columns if c not in ("model", "base")]
    cols2 = [c for c in t2.columns if c not in ("row", "checkpoint")]
    iv = tables.get("intervals")
    iv = iv if iv is not None else pd.DataFrame(columns=INTERVAL_COLUMNS)
    ci1 = {(r["base"], r["row"], r["column"]): (r["lo"], r["hi"]) for _, r in iv[iv["table"] == "table1"].iterrows()}
    ci2 = {(r["row"], r["column"]): (r["lo"], r["hi"]) for _, r in iv[iv["table"] == "table2"].iterrows()}
    long1 = _long(t1, p1, ["base", "model"], cols1, ci1)
    long2 = _long(t2, p2.rename(columns={"checkpoint": "paper_checkpoint"}), ["row"], cols2, ci2)
    ordering = []
    for base in dict.fromkeys(t1["base"]):
        labels = [base, *TABLE1_ROWS]
        ordering += _ordering("table1", base, labels, t1[t1["base"] == base], p1[p1["base"] == base],
                              "model", cols1, "+GRPO", "Ours")
    if len(t2):
        labels = list(t2["row"])
        ordering += _ordering("table2", labels[0], labels, t2, p2, "row", cols2, "GRPO", "+Sim (Ours)")
    ordering_df = pd.DataFrame(ordering, columns=["table", "base", "column", "n", "kendall_tau", "ours_order",
                                                  "paper_order", "ours_gt_grpo", "paper_ours_gt_grpo", "agrees"])
    return {"table1": long1, "table2": long2, "verdicts": _verdicts(tables.get("differences"), p1, p2),
            "ordering": ordering_df}


VERDICT_COLUMNS = ["table", "base", "claim", "a", "b", "column", "paper_diff", "ours_diff", "lo", "hi", "decidable",
                   "verdict", "n_prompts", "n_claims", "note"]


OPERATOR = {1: ">", -1: "<", 0: "vs"}


def _claim(a: str, b: str, paper_diff: float) -> str:
    """The paper's claim about rows a and b in one column: "Ours > +GRPO", "GRPO < NOVA"."""
    return f"{a} {OPERATOR[stats.direction(paper_diff)]} {b}"


def _verdicts(differences: pd.DataFrame | None, p1: pd.DataFrame, p2: pd.DataFrame) -> pd.DataFrame:
    """Each paired difference beside the paper's own (``a`` − ``b`` in the paper's table) and its verdict.

    The claims (the differences with a direction in the paper and a standard error) are decided
    together: ``lo``/``hi`` are each claim's simultaneous 95% interval over all ``n_claims``
    (:func:`marpipe.stats.simultaneous`), wider than the 95% interval of one difference alone;
    ``decidable``: its half-width, the smallest difference this run can decide for the claim
    (:func:`marpipe.stats.decidable`), to read beside ``paper_diff``."""
    lines = []
    for _, d in (differences if differences is not None else pd.DataFrame(columns=DIFFERENCE_COLUMNS)).iterrows():
        if d["table"] == "table1":
            paper = p1[p1["base"] == d["base"]]
            pa, pb = _value(paper, "model", d["a"], d["column"]), _value(paper, "model", d["b"], d["column"])
        else:
            pa, pb = _value(p2, "row", d["a"], d["column"]), _value(p2, "row", d["b"], d["column"])
        paper_diff = pa - pb
        note = d["note"] or ("the paper has no value" if math.isnan(paper_diff) else
                             "the paper's values are equal" if paper_diff == 0 else "")
        lines.append({"table": d["table"], "base": d["base"], "claim": _claim(d["a"], d["b"], paper_diff),
                      "a": d["a"], "b": d["b"], "column": d["column"], "paper_diff": paper_diff,
                      "ours_diff": d["ours_diff"], "se": _float(d.get("se")), "df": _float(d.get("df")),
                      "n_prompts": d["n_prompts"], "note": note})
    claims = [x for x in lines if stats.direction(x["paper_diff"]) and not math.isnan(x["se"])]
    for x in lines:
        x["lo"], x["hi"] = stats.simultaneous(x["ours_diff"], x["se"], x["df"], len(claims))
        x["decidable"] = stats.decidable(x["se"], x["df"], len(claims))
        x["verdict"] = stats.verdict(x["lo"], x["hi"], x["paper_diff"])
        x["n_claims"] = len(claims)
    return _counts_as_int(pd.DataFrame(lines, columns=VERDICT_COLUMNS), ["n_prompts", "n_claims"])


def _float(v) -> float:
    return math.nan if v is None or pd.isna(v) else float(v)


# ------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------
def stand_ins(records: Sequence[dict], exp=None) -> dict[str, str]:
    """column -> the scorer(s) that produced it (records' ``scorer_for``, else the config's evaluation
    section); columns in the config's order, whatever the order of the records."""
    found: dict[str, set[str]] = {}
    for r in records:
        for col, scorer in (r.get("scorer_for") or {}).items():
            found.setdefault(col, set()).add(str(scorer))
    order: list[str] = []
    if exp is not None:
        for suite in SUITES:
            ev = exp.cfg["evaluation"][suite]
            specs = ev["metrics"] if suite == "preference" else ev["categories"]
            for col, spec in specs.items():
                order.append(col)
                found.setdefault(col, {str(spec["scorer"])})
    order += sorted(c for c in found if c not in order)
    return {c: ", ".join(sorted(found[c])) for c in order}


def world_of(records: Sequence[dict], exp=None) -> str:
    worlds = sorted({str(r["world"]) for r in records if r.get("world")})
    if not worlds and exp is not None:
        worlds = [str(exp.cfg.get("world", ""))]
    return ", ".join(w for w in worlds if w) or "unknown"


def _csv(df: pd.DataFrame, path: Path) -> None:
    text = df.to_csv(index=False, float_format=FLOAT_FORMAT, na_rep="", lineterminator="\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
        return "–" if math.isnan(v) else FLOAT_FORMAT % v
    return str(v)


def markdown_table(df: pd.DataFrame, right: Sequence[str] = ()) -> str:
    """``df`` as a Markdown table; numeric columns (and those in ``right``) right-aligned."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if c in right or (pd.api.types.is_numeric_dtype(df[c])
                                                    and not pd.api.types.is_bool_dtype(df[c]))
                         else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _wide_comparison(long: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Ours / paper / delta as 'ours (paper, Δ)' cells, one line per row (reference rows: paper only)."""
    out = []
    for key, grp in long.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        line = dict(zip(keys, key))
        for _, r in grp.iterrows():
            if r["reference_only"]:
                line[r["column"]] = "–" if math.isnan(r["paper"]) else f"[{r['paper']:.4f}]"
            else:
                o = "–" if math.isnan(r["ours"]) else f"{r['ours']:.4f}"
                p = "–" if math.isnan(r["paper"]) else f"{r['paper']:.4f}"
                d = "" if math.isnan(r["delta"]) else f", Δ {r['delta']:+.4f}"
                line[r["column"]] = f"{o} ({p}{d})"
        out.append(line)
    return pd.DataFrame(out)


def _verdict_summary(verdicts: pd.DataFrame) -> list[str]:
    """Per table, model and pair of rows: "Ours > +GRPO: holds in a, inconclusive in b, contradicted
    in c of n columns" (the claim's direction is the paper's; mixed directions: "vs")."""
    lines = []
    if verdicts is None or not len(verdicts):
        return lines
    for (table, base, a, b), grp in verdicts.groupby(["table", "base", "a", "b"], sort=False):
        signs = {stats.direction(x) for x in grp["paper_diff"]} - {0}
        claim = (f"{a} > {b}" if signs == {1} else f"{a} < {b}" if signs == {-1}
                 else f"{a} vs {b} (the paper's direction per column)")
        counts = grp["verdict"].value_counts()
        n = int(sum(counts.get(v, 0) for v in stats.VERDICTS))
        na = len(grp) - n
        why = ", ".join(sorted(set(grp.loc[grp["verdict"] == stats.NA, "note"]) - {""}))
        if not n:
            lines.append(f"{table} {base}: {claim}: no verdict in {na} columns ({why or 'no interval'})")
            continue
        lines.append(f"{table} {base}: {claim}: holds in {int(counts.get(stats.HOLDS, 0))}, inconclusive in "
                     f"{int(counts.get(stats.INCONCLUSIVE, 0))}, contradicted in "
                     f"{int(counts.get(stats.CONTRADICTED, 0))} of {n} columns"
                     + (f"; no verdict in {na} ({why or 'no interval'})" if na else ""))
    return lines


def _is_nan(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _with_interval(v, lo, hi, decimals: int = 4, signed: bool = False) -> str:
    """"45.6000 [44.1000, 47.0000]"; no interval: the value alone; no value: "–"."""
    if _is_nan(v):
        return "–"
    f = f"{{:{'+' if signed else ''}.{decimals}f}}"
    return f.format(v) if _is_nan(lo) or _is_nan(hi) else f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def _table_with_intervals(df: pd.DataFrame, intervals: pd.DataFrame | None, table: str,
                          keys: list[str]) -> pd.DataFrame:
    """A table's cells as text, each value with its interval (``keys``: how the table names a row;
    Table 1: base and model, Table 2: row)."""
    iv = intervals if intervals is not None else pd.DataFrame(columns=INTERVAL_COLUMNS)
    iv = iv[iv["table"] == table]
    ci = {((r["base"], r["row"]) if len(keys) == 2 else (r["row"],)) + (r["column"],): (r["lo"], r["hi"])
          for _, r in iv.iterrows()}
    out = df.copy().astype(object)
    value_cols = [c for c in df.columns if c not in ("model", "base", "row", "checkpoint")]
    for i, r in df.iterrows():
        key = (r["base"], r["model"]) if len(keys) == 2 else (r["row"],)
        for c in value_cols:
            out.at[i, c] = _with_interval(r[c], *ci.get((*key, c), (np.nan, np.nan)))
    return out


DECIDABLE = "smallest decidable Δ"


def _verdict_table(verdicts: pd.DataFrame, decimals=lambda col: 4) -> pd.DataFrame:
    """The verdicts as text: claim, the paper's difference, the smallest difference the run can
    decide, ours with its interval, the verdict."""
    rows = []
    for _, v in verdicts.iterrows():
        d = decimals(v["column"])
        rows.append({"table": v["table"], "base": v["base"], "claim": v["claim"], "column": v["column"],
                     "paper Δ": "–" if _is_nan(v["paper_diff"]) else f"{v['paper_diff']:+.{d}f}",
                     DECIDABLE: "–" if _is_nan(v.get("decidable")) else f"{v['decidable']:.{d}f}",
                     "ours Δ [simultaneous 95%]": _with_interval(v["ours_diff"], v["lo"], v["hi"], d, signed=True),
                     "verdict": v["verdict"], "note": v["note"]})
    return pd.DataFrame(rows, columns=["table", "base", "claim", "column", "paper Δ", DECIDABLE, "ours Δ [simultaneous 95%]",
                                       "verdict", "note"])


def write_tables(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame],
                 out_dir: str | Path) -> list[Path]:
    """Write ``table1.csv``, ``table2.csv`` (point values, columns as always), ``intervals.csv``
    (long: ``table, base, row, column, value, lo, hi, n_prompts, n_images``, one line per cell of
    both tables; ``lo``/``hi`` empty without per-image values), ``table1_vs_paper.csv``,
    ``table2_vs_paper.csv`` (with ``ours_lo``/``ours_hi``), ``verdicts_vs_paper.csv``,
    ``ordering_vs_paper.csv`` (Kendall tau, point values only), ``tables.md``, ``tables.html``
    (the report's Tables page) and ``tables_summary.html`` (the report's landing-page excerpt)
    into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    empty_iv = pd.DataFrame(columns=INTERVAL_COLUMNS)
    files = {"table1.csv": tables["table1"], "table2.csv": tables["table2"],
             "intervals.csv": tables.get("intervals", empty_iv),
             "table1_vs_paper.csv": comparison["table1"], "table2_vs_paper.csv": comparison["table2"],
             "verdicts_vs_paper.csv": comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS)),
             "ordering_vs_paper.csv": comparison["ordering"]}
    paths = []
    for name, df in files.items():
        _csv(df, out / name)
        paths.append(out / name)
    texts = {"tables.md": tables_markdown(tables, comparison), "tables.html": tables_html(tables, comparison),
             "tables_summary.html": tables_summary_html(tables, comparison)}
    for name, text in texts.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        paths.append(out / name)
    return paths


def _stand_ins_of(tables) -> tuple[str, dict[str, str]]:
    st = tables.get("stand_ins")
    if st is None or not len(st):
        return "unknown", {}
    return str(st["world"].iloc[0]), dict(zip(st["column"], st["scorer"]))


INTERVALS_TEXT = ("95% intervals of the very estimator the cell prints (the mean over the column's images, of all "
                  "seeds). One training seed: percentile bootstrap over prompts ({n:,} resamples, seed {seed}; all "
                  "images of a drawn prompt go together; preference suite: prompts drawn within each style). Several: "
                  "Student's t with the spread of the per-seed means plus that bootstrap's variance "
                  "(n_seeds - 1 degrees of freedom; a bootstrap over 3 seeds would be far too narrow)")
VERDICTS_TEXT = ("Each comparison the paper makes, as a paired difference: Table 1: Ours − +GRPO per model; Table 2: "
                 "each row − the row above. Ours: the difference of the two cells, its standard error from the same "
                 "bootstrap (one set of prompts drawn for both rows: they were sampled on the same prompts with the "
                 "same seeds) and, with several training seeds, the spread of the per-seed differences (runs of the "
                 "same seed paired). The claims are decided together: each interval is simultaneous over all of them "
                 "(Bonferroni: 95% that none misses), so no verdict is a run's luck; its half-width (`smallest decidable Δ`) "
                 "is the smallest difference this run can decide, to read beside the paper's. Verdict against the sign of the "
                 "paper's own difference: holds (our interval excludes 0 on the paper's side), contradicted (it "
                 "excludes 0 on the other side), inconclusive (it contains 0); no verdict: no interval (score files "
                 "without per-image values, tables rebuilt from MLflow) or no direction in the paper.")


def _intervals_text() -> str:
    return INTERVALS_TEXT.format(n=stats.N_RESAMPLES, seed=stats.SEED)


def _no_interval_note(tables: dict[str, pd.DataFrame]) -> str:
    iv = tables.get("intervals")
    if iv is None or not len(iv) or iv["value"].isna().all():
        return ""
    known = iv[iv["value"].notna()]
    if known["lo"].isna().all():
        return (" No cell has an interval: these records hold no per-image values (tables rebuilt from MLflow, "
                "or score files written before intervals existed).")
    if known["lo"].isna().any():
        return " Cells without an interval: their score files hold no per-image values."
    return ""


def tables_markdown(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame]) -> str:
    world, scorers = _stand_ins_of(tables)
    iv = tables.get("intervals")
    verdicts = comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS))
    cols1 = [c for c in tables["table1"].columns if c not in ("model", "base")]
    cols2 = [c for c in tables["table2"].columns if c not in ("row", "checkpoint")]
    parts = [
        "# MAR-GRPO: Tables 1 and 2 reproduced", "",
        f"World: **{world}**." + (" The small world's scorers stand in for the paper's metrics: absolute values "
                                  "are not comparable with the paper's; the directions of the differences are "
                                  "(see the verdicts)." if world == "small" else ""),
        "", f"Cells: value [95% interval]. {_intervals_text()}.{_no_interval_note(tables)}",
        "", "## Table 1", "",
        "Preference columns: rows trained with the preference reward; T2I-CompBench columns: rows trained "
        "with the compbench reward. `–`: no score.", "",
        markdown_table(_table_with_intervals(tables["table1"], iv, "table1", ["base", "model"]), right=cols1), "",
        "## Table 2", "",
        "First model; `best*`: best checkpoint by training reward (baselines), `fixed`: step fixed in advance.", "",
        markdown_table(_table_with_intervals(tables["table2"], iv, "table2", ["row"]), right=cols2), "",
        "## Comparison with the paper", "",
        "Cells: ours (paper, Δ = ours − paper); `[x]`: the paper's reference rows (models we do not train).", "",
        "### Table 1", "", markdown_table(_wide_comparison(comparison["table1"], ["base", "model"])), "",
        "### Table 2", "", markdown_table(_wide_comparison(comparison["table2"], ["row"])), "",
        "### Orderings: verdicts", "", VERDICTS_TEXT, "",
        *[f"- {line}" for line in _verdict_summary(verdicts)], "",
        markdown_table(_verdict_table(verdicts), right=["paper Δ", DECIDABLE, "ours Δ [simultaneous 95%]"]), "",
        "## Stand-ins", "",
        f"World: {world}. Scorer behind each column:", "",
        *[f"- {col}: `{scorer}`" for col, scorer in scorers.items()], "",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------
# HTML for the Snakemake report (snakemake --report shows an HTML result inline)
# ------------------------------------------------------------------------------------------
TWO_DECIMALS = ("HPS", "ImageReward", "PickScore", "Aesthetic")   # printed as the paper prints them

_PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;font-size:13px;
color:#1f2937;margin:16px;background:#fff}
h1{font-size:19px;margin:0 0 6px} h2{font-size:16px;margin:24px 0 4px} p,li{max-width:75em;margin:3px 0}
.wrap{overflow-x:auto}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:8px 0}
th,td{padding:2px 6px;border-bottom:1px solid #e5e7eb;white-space:nowrap}
th{background:#f3f4f6;font-weight:600;text-align:center}
th.sub{font-weight:500;font-size:11px;color:#4b5563}
td.label{text-align:left;font-weight:600;position:sticky;left:0;background:#fff}
td.num{text-align:right} td.ours{font-weight:600} td.paper{color:#6b7280}
td.delta.pos{color:#15803d} td.delta.neg{color:#b91c1c}
.g{border-left:2px solid #d1d5db}
tr.ref td{color:#9ca3af;font-weight:400} tr.ref td.label{font-weight:400}
tr.start td{border-top:2px solid #9ca3af}
.ci{font-size:10px;font-weight:400;color:#6b7280}
td.v-holds{color:#15803d;font-weight:600} td.v-contradicted{color:#b91c1c;font-weight:600}
td.v-inconclusive{color:#92400e} td.v-na{color:#9ca3af}
code{background:#f3f4f6;padding:0 3px;border-radius:3px}
"""


def _decimals(col: str) -> int:
    return 2 if col in TWO_DECIMALS else 4


def _num_html(v, col: str, signed: bool = False) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "–"
    return f"{v:+.{_decimals(col)}f}" if signed else f"{v:.{_decimals(col)}f}"


def _ci_html(lo, hi, col: str, signed: bool = False) -> str:
    """The interval as text, "[44.10, 47.00]"; "" when there is none."""
    if _is_nan(lo) or _is_nan(hi):
        return ""
    return f"[{_num_html(lo, col, signed)}, {_num_html(hi, col, signed)}]"


NAN5 = (np.nan,) * 5


def _comparison_rows(long: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, bool, dict]]:
    """(key, reference_only, {column: (ours, paper, delta, ours_lo, ours_hi)}) per table row, in
    the long table's order."""
    rows = []
    for key, grp in long.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        cells = {r["column"]: (r["ours"], r["paper"], r["delta"], r.get("ours_lo", np.nan), r.get("ours_hi", np.nan))
                 for _, r in grp.iterrows()}
        rows.append((key, bool(grp["reference_only"].iloc[0]), cells))
    return rows


def _comparison_table_html(table_id: str, long: pd.DataFrame, keys: list[str], label: str,
                           extra: tuple[list[str], dict[tuple, list[str]]] = ([], {}), blocks: bool = False) -> str:
    """One row per table row, three cells per column: ours, the paper's, Δ = ours − paper.

    ``keys[-1]`` names the row as the paper does; with ``blocks``, a change of ``keys[0]`` (Table 1:
    the base model) starts a new block. ``extra``: headers and per-key cells appended at the right."""
    from html import escape as e
    cols = list(dict.fromkeys(long["column"]))
    extra_heads, extra_cells = extra
    head1 = [f'<th rowspan="2">{e(label)}</th>'] + [f'<th class="g" colspan="3">{e(c)}</th>' for c in cols]
    head1 += [f'<th class="g" rowspan="2">{e(h)}</th>' for h in extra_heads]
    head2 = [f'<th class="sub{" g" if i % 3 == 0 else ""}">{t}</th>'
             for i, t in enumerate(["ours", "paper", "Δ"] * len(cols))]
    body, previous = [], None
    for key, ref, cells in _comparison_rows(long, keys):
        start = blocks and not ref and previous is not None and key[0] != previous
        classes = (["ref"] if ref else []) + (["start"] if start else [])
        previous = key[0]
        tds = [f'<td class="label">{e(str(key[-1]))}</td>']
        for c in cols:
            ours, paper, delta, lo, hi = cells.get(c, NAN5)
            sign = "" if math.isnan(delta) else (" pos" if delta > 0 else " neg" if delta < 0 else "")
            ci = _ci_html(lo, hi, c)
            ci = f'<br><span class="ci">{ci}</span>' if ci else ""
            tds += [f'<td class="num ours g" data-col="{e(c)}">{_num_html(ours, c)}{ci}</td>',
                    f'<td class="num paper" data-col="{e(c)}">{_num_html(paper, c)}</td>',
                    f'<td class="num delta{sign}" data-col="{e(c)}">{_num_html(delta, c, signed=True)}</td>']
        tds += [f'<td class="g">{e(t)}</td>' for t in extra_cells.get(key, [""] * len(extra_heads))]
        body.append(f'<tr class="{" ".join(classes)}">' + "".join(tds) + "</tr>" if classes
                    else "<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="wrap"><table id="{table_id}"><thead><tr>{"".join(head1)}</tr><tr>{"".join(head2)}</tr>'
            f'</thead><tbody>\n' + "\n".join(body) + "\n</tbody></table></div>")


def _verdicts_table_html(verdicts: pd.DataFrame, table_id: str) -> str:
    """One row per comparison: claim, column, the paper's difference, ours with its interval under
    it, the verdict (coloured) and why there is none."""
    from html import escape as e
    heads = ["table", "model", "claim", "column", "paper Δ", DECIDABLE, "ours Δ (simultaneous 95%)", "verdict", "note"]
    body = []
    for _, v in verdicts.iterrows():
        col = v["column"]
        ci = _ci_html(v["lo"], v["hi"], col, signed=True)
        ours = _num_html(v["ours_diff"], col, signed=True) + (f'<br><span class="ci">{ci}</span>' if ci else "")
        cls = "v-na" if v["verdict"] == stats.NA else f"v-{v['verdict']}"
        body.append("<tr>" + "".join([
            f"<td>{e(v['table'])}</td>", f"<td>{e(str(v['base']))}</td>", f"<td>{e(v['claim'])}</td>",
            f"<td>{e(col)}</td>", f'<td class="num">{_num_html(v["paper_diff"], col, signed=True)}</td>',
            f'<td class="num">{_num_html(v.get("decidable", np.nan), col)}</td>',
            f'<td class="num">{ours}</td>', f'<td class="{cls}">{e(v["verdict"])}</td>',
            f"<td>{e(v['note'])}</td>"]) + "</tr>")
    return (f'<div class="wrap"><table id="{table_id}"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in heads)
            + "</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></div>")


def _world_note(world: str) -> str:
    if world == "small":
        return ("The small world's scorers stand in for the paper's metrics: absolute values and the Δ "
                "column are not comparable with the paper's; the directions of the differences are (see "
                "Orderings: verdicts).")
    return "Δ = ours − the paper's value."


def tables_html(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame],
                paper_dir: str | Path = DATA_DIR) -> str:
    """A self-contained HTML page (the report's Tables page): Tables 1 and 2 with, in every column,
    our value (its 95% interval under it), the paper's and Δ = ours − paper, rows named and ordered
    as in the paper (Table 1 also shows the paper's reference models, greyed); the verdicts on the
    paper's comparisons and the stand-in scorers."""
    from html import escape as e
    world, scorers = _stand_ins_of(tables)
    ours2 = tables["table2"]
    paper2 = read_paper_tables(paper_dir)["table2"]
    checkpoints = {(r["row"],): [str(r["checkpoint"]),
                                 str(paper2.loc[paper2["row"] == r["row"], "checkpoint"].iloc[0])
                                 if (paper2["row"] == r["row"]).any() else ""]
                   for _, r in ours2.iterrows()}
    verdicts = comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS))
    summary = _verdict_summary(verdicts)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>MAR-GRPO: Tables 1 and 2 beside the paper's</title>", f"<style>{_PAGE_CSS}</style></head><body>",
        "<h1>MAR-GRPO: Tables 1 and 2 reproduced, beside the paper's</h1>",
        f"<p>World: <strong>{e(world)}</strong>. Each column: <strong>ours</strong>, the <span style=\"color:#6b7280\">"
        f"paper's</span> value and Δ = ours − paper; under our value, its 95% interval. {e(_world_note(world))} "
        f"“–”: no value.</p>",
        f"<p>{e(_intervals_text())}.{e(_no_interval_note(tables))}</p>",
        "<h2>Table 1</h2>",
        "<p>Per model: the base model, <code>+GRPO</code> (plain GRPO, best checkpoint by training reward) and "
        "<code>Ours</code> (+Sim, the step fixed in advance). Preference columns from the rows trained with the "
        "preference reward, T2I-CompBench columns from the rows trained with the CompBench reward. Grey rows: "
        "the paper's other models (not trained here).</p>",
        _comparison_table_html("table1", comparison["table1"], ["base", "model"], "Model", blocks=True),
        "<h2>Table 2</h2>",
        "<p>The ablation on the first model. <code>best*</code>: best checkpoint by training reward (the "
        "baselines), <code>fixed</code>: the step declared in advance.</p>",
        _comparison_table_html("table2", comparison["table2"], ["row"], "Row",
                               (["checkpoint (ours)", "checkpoint (paper)"], checkpoints)),
        "<h2>Orderings: verdicts</h2>",
        f"<p>{e(VERDICTS_TEXT)}</p>",
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in summary) + "</ul>",
        _verdicts_table_html(verdicts, "verdicts"),
        "<h2>Stand-ins</h2>", f"<p>World: {e(world)}. Scorer behind each column:</p>",
        "<ul>" + "".join(f"<li>{e(c)}: <code>{e(sc)}</code></li>" for c, sc in scorers.items()) + "</ul>",
        "</body></html>", "",
    ]
    return "\n".join(parts)


def tables_summary_html(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame]) -> str:
    """An HTML fragment for the report's landing page (inline styles only, so nothing leaks into the
    page around it): our Tables 1 and 2, each number with its 95% interval and the paper's value
    under it, and the verdict counts."""
    from html import escape as e
    world, _ = _stand_ins_of(tables)
    cell = "padding:1px 4px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap"
    head = "padding:1px 4px;text-align:center;font-weight:600;white-space:normal"
    grey = "color:#9ca3af;font-size:9px"
    ci_style = "color:#6b7280;font-size:8px"

    def numbers(ours, paper, col, lo=np.nan, hi=np.nan) -> str:
        ci = _ci_html(lo, hi, col)
        ci = f'<br><span style="{ci_style}">{ci}</span>' if ci else ""
        return (f'<td style="{cell}">{_num_html(ours, col)}{ci}<br><span style="{grey}">{_num_html(paper, col)}'
                f'</span></td>')

    def _numbers(cells: dict, col: str) -> str:
        ours, paper, _, lo, hi = cells.get(col, NAN5)
        return numbers(ours, paper, col, lo, hi)

    def table(table_id: str, long: pd.DataFrame, keys: list[str], transpose: bool = False) -> str:
        """Rows as in the paper, a column per metric; ``transpose``: a row per metric, a column per
        table row, the first key (the base model) spanning its rows (Table 1 fits the page so)."""
        cols = list(dict.fromkeys(long["column"]))
        rows = [(k, c) for k, ref, c in _comparison_rows(long, keys) if not ref]
        style = "border-collapse:collapse;font-size:10px;margin:2px 0 8px;font-variant-numeric:tabular-nums"
        if transpose:
            groups = list(dict.fromkeys(k[0] for k, _ in rows))
            top = f'<th style="{head}"></th>' + "".join(
                f'<th style="{head}" colspan="{sum(k[0] == g for k, _ in rows)}">{e(str(g))}</th>' for g in groups)
            sub = f'<th style="{head}"></th>' + "".join(f'<th style="{head}">{e(str(k[-1]))}</th>' for k, _ in rows)
            body = ["<tr>" + f'<td style="{cell};text-align:left;font-weight:600">{e(c)}</td>'
                    + "".join(_numbers(cells, c) for _, cells in rows) + "</tr>" for c in cols]
            return (f'<table id="{table_id}" style="{style}"><thead><tr>{top}</tr><tr>{sub}</tr></thead><tbody>'
                    + "".join(body) + "</tbody></table>")
        top = f'<th style="{head}"></th>' + "".join(f'<th style="{head}">{e(c)}</th>' for c in cols)
        body = ["<tr>" + f'<td style="{cell};text-align:left;font-weight:600">{e(str(key[-1]))}</td>'
                + "".join(_numbers(cells, c) for c in cols) + "</tr>" for key, cells in rows]
        return f'<table id="{table_id}" style="{style}"><thead><tr>{top}</tr></thead><tbody>' + "".join(body) \
            + "</tbody></table>"

    note = ("small world: stand-in scorers, so compare the verdicts, not values" if world == "small"
            else f"world: {world}")
    return "\n".join([
        '<div class="marpipe-tables-summary" style="overflow-x:auto;margin:4px 0">',
        f'<p style="margin:2px 0"><strong>Table 1</strong> (transposed: a row per metric): ours, its 95% interval '
        f'below, the paper\'s value in grey below that ({e(note)}).</p>',
        table("summary-table1", comparison["table1"], ["base", "model"], transpose=True),
        '<p style="margin:2px 0"><strong>Table 2</strong> (the ablation on the first model).</p>',
        table("summary-table2", comparison["table2"], ["row"]),
        '<ul style="margin:2px 0;font-size:11px">'
        + "".join(f"<li>{e(line)}</li>" for line in
                  _verdict_summary(comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS)))) + "</ul>",
        "</div>", "",
    ])


def format_for_terminal(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame] | None = None) -> str:
    """A compact text version of both tables (and the ordering summary) to print."""
    def text(df):
        return df.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
    world, scorers = _stand_ins_of(tables)
    parts = ["Table 1", text(tables["table1"]), "", "Table 2", text(tables["table2"]), "",
             f"World: {world}; scorers: " + ", ".join(f"{c}={s}" for c, s in scorers.items())]
    if comparison is not None:
        parts += ["", "Verdicts on the paper's comparisons (paired, simultaneous 95% intervals)",
                  *_verdict_summary(comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS)))]
    return "\n".join(parts) + "\n"


def make_tables(exp, records: Sequence[dict], out_dir: str | Path, paper_dir: str | Path = DATA_DIR) -> str:
    """Build, compare and write everything; returns the terminal text."""
    tables = build_tables(exp, records)
    comparison = compare_with_paper(tables, paper_dir)
    write_tables(tables, comparison, out_dir)
    return format_for_terminal(tables, comparison)


def compare_verdicts(runs: dict[str, str | Path]) -> pd.DataFrame:
    """The verdicts of several runs of one experiment side by side (``runs``: name -> a run's
    ``results/tables`` folder or its ``verdicts_vs_paper.csv``): a line per claim and column, a
    column of verdicts per run (with the interval), and ``agree`` (every run gave the same
    verdict). What a claim must survive: another machine, another thread count, other seeds.
    A run with Fig. 7's sweep (``results/ablations/fig7.csv`` beside its tables) adds each point's
    verdict against the centre (table ``fig7``, base: the knob)."""
    frames = []
    for name, path in runs.items():
        path = Path(path)
        df = pd.read_csv(path / "verdicts_vs_paper.csv" if path.is_dir() else path)
        fig7 = path.parent / "ablations" / "fig7.csv"
        if path.is_dir() and fig7.is_file():
            points = pd.read_csv(fig7).query("verdict != 'centre'")
            df = pd.concat([df, pd.DataFrame({
                "table": "fig7", "base": points["knob"], "column": points["metric"],
                "claim": [f"{k} = {v:g} vs the centre" for k, v in zip(points["knob"], points["value"])],
                "lo": points["diff_lo"], "hi": points["diff_hi"], "verdict": points["verdict"]})], ignore_index=True)
        df[name] = [f"{v} [{lo:+.4g}, {hi:+.4g}]" if not (_is_nan(lo) or _is_nan(hi)) else v
                    for v, lo, hi in zip(df["verdict"], df["lo"], df["hi"])]
        frames.append(df.set_index(["table", "base", "claim", "column"])[[name]])
    out = pd.concat(frames, axis=1, join="outer").reset_index()
    verdict_of = out[list(runs)].apply(lambda col: col.str.split(" ").str[0])
    out["agree"] = verdict_of.nunique(axis=1, dropna=False).eq(1).map({True: "yes", False: "NO"})
    return out
