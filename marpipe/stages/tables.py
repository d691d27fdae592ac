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
* :func:`compare_with_paper` puts our numbers beside the paper's (``marpipe/data/
  paper_table{1,2}.csv``) with deltas, and compares orderings per column (Kendall tau,
  "Ours > GRPO") -- in the small world only the orderings are meaningful, the scorers differ.
* :func:`write_tables` writes the CSVs (fixed float format: reruns are byte-identical),
  ``tables.md`` and the report's HTML (:func:`tables_html`, :func:`tables_summary_html`); :func:`format_for_terminal` is the short text printed at the end.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from marpipe.experiment import BASE, SUITES

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
FLOAT_FORMAT = "%.4f"

# Table 1: row label -> variant ("base" = the untrained model, labelled with the model's label)
TABLE1_ROWS = {"+GRPO": "grpo", "Ours": "sim"}
# Table 2: row label -> variant, in the paper's order
TABLE2_ROWS = {"GRPO": "grpo", "+Fix Decoder": "fix_decoder", "+MTE": "mte", "+Sim (Ours)": "sim"}
TABLE2_COLUMNS = ("HPS", "Aesthetic", "Shape", "Texture", "2d-spatial")
CHECKPOINT_RULE_TEXT = {"best": "best*", "fixed": "fixed", "base": "base"}

RECORD_KEYS = ("model", "label", "row", "reward", "variant", "suite", "scores", "checkpoint")


# ------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------
def score_paths(exp, results: str | Path = "results") -> list[Path]:
    """The score files the tables read: every row of each suite, ``{results}/scores/{model}/{row}/{suite}.json``."""
    return [Path(results) / "scores" / row.model / row.name / f"{suite}.json"
            for suite in SUITES for row in exp.suite_rows(suite)]


def _record(d: dict) -> dict:
    missing = [k for k in ("model", "row", "suite", "scores") if k not in d]
    if missing:
        raise ValueError(f"score record lacks {missing}: {sorted(d)}")
    rec = {
        "model": d["model"], "label": d.get("label"), "row": d["row"],
        "reward": d.get("reward") or None,
        "variant": d.get("variant") or (BASE if d["row"] == BASE else d["row"].split("-", 1)[-1]),
        "suite": d["suite"],
        "scores": {k: float(v) for k, v in d["scores"].items() if v is not None},
        "checkpoint": _checkpoint(d.get("checkpoint")),
    }
    for extra in ("scorer_for", "world", "n_images", "per_style"):
        if d.get(extra) is not None:
            rec[extra] = d[extra]
    return rec


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
    metrics ``eval.{suite}.{column}`` become ``scores``. Where one run key has several runs
    (a rerun), the most recently started one that holds the suite's metrics wins.
    """
    import os

    from mlflow.tracking import MlflowClient

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
    records, seen = [], set()
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        for suite in SUITES:
            prefix = f"eval.{suite}."
            scores = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
            key = (tags.get("model"), tags.get("row"), suite)
            if not scores or key in seen:
                continue
            seen.add(key)
            records.append(_record({
                "model": tags["model"], "label": tags.get("label"), "row": tags["row"],
                "reward": tags.get("reward") or None, "variant": tags.get("variant"), "suite": suite,
                "scores": scores, "world": tags.get("world") or None,
                "checkpoint": {"rule": tags.get("checkpoint_rule"), "step": tags.get("checkpoint_step")},
            }))
    records.sort(key=lambda r: (r["model"], r["row"], r["suite"]))
    return records


def _index(records: Sequence[dict]) -> dict[tuple[str, str, str], dict]:
    out = {}
    for r in records:
        key = (r["model"], r["row"], r["suite"])
        if key in out:
            raise ValueError(f"two score records for model {key[0]!r}, row {key[1]!r}, suite {key[2]!r}")
        out[key] = r
    return out


def _row_name(reward: str | None, variant: str) -> str:
    return BASE if variant == BASE else f"{reward}-{variant}"


# ------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------
def build_tables(exp, records: Sequence[dict]) -> dict[str, pd.DataFrame]:
    """``{"table1", "table2", "stand_ins"}``: Tables 1 and 2 laid out like the paper's (NaN where no
    record), and which scorer produced each column in which world (records' ``scorer_for``,
    else the config's evaluation section)."""
    idx = _index(records)
    rewards = {s: exp.cfg["evaluation"][s]["reward"] for s in SUITES}
    cols = {s: exp.columns(s) for s in SUITES}

    def cell(model, variant, suite, col):
        rec = idx.get((model, _row_name(rewards[suite], variant), suite))
        return float(rec["scores"].get(col, np.nan)) if rec else np.nan

    t1 = []
    for model in exp.models:
        label = exp.label(model)
        for row_label, variant in [(label, BASE), *TABLE1_ROWS.items()]:
            t1.append({"model": row_label, "base": label,
                       **{c: cell(model, variant, s, c) for s in SUITES for c in cols[s]}})
    table1 = pd.DataFrame(t1, columns=["model", "base", *cols["preference"], *cols["compbench"]])

    model = exp.models[0]
    t2_cols = [(c, s) for c in TABLE2_COLUMNS for s in SUITES if c in cols[s]]
    t2 = []
    for row_label, variant in [(exp.label(model), BASE), *TABLE2_ROWS.items()]:
        row = {"row": row_label, **{c: cell(model, variant, s, c) for c, s in t2_cols}}
        checkpoints = [idx[k]["checkpoint"] for s in SUITES
                       if (k := (model, _row_name(rewards[s], variant), s)) in idx]
        row["checkpoint"] = _checkpoint_text(checkpoints, variant)
        t2.append(row)
    table2 = pd.DataFrame(t2, columns=["row", *[c for c, _ in t2_cols], "checkpoint"])
    world = world_of(records, exp)
    used = [r for r in records if (r["model"], r["row"], r["suite"]) in
            {(m, _row_name(rewards[s], v), s) for m in exp.models for v in (BASE, *exp.variants) for s in SUITES}]
    stand = pd.DataFrame([{"column": c, "scorer": sc, "world": world} for c, sc in stand_ins(used, exp).items()],
                         columns=["column", "scorer", "world"])
    return {"table1": table1, "table2": table2, "stand_ins": stand}


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


def _long(ours: pd.DataFrame, paper: pd.DataFrame, keys: list[str], value_cols: list[str]) -> pd.DataFrame:
    """One line per (row, column): ours, paper, delta = ours - paper; paper rows we lack: reference only."""
    ours_keyed = {tuple(r[k] for k in keys): r for _, r in ours.iterrows()}
    paper_keyed = {tuple(r[k] for k in keys): r for _, r in paper.iterrows()}
    order = list(paper_keyed) + [k for k in ours_keyed if k not in paper_keyed]
    lines = []
    for key in order:
        o, p = ours_keyed.get(key), paper_keyed.get(key)
        for col in value_cols:
            ov = float(o[col]) if o is not None and col in o.index else np.nan
            pv = float(p[col]) if p is not None and col in p.index and pd.notna(p[col]) else np.nan
            lines.append({**dict(zip(keys, key)), "column": col, "ours": ov, "paper": pv, "delta": ov - pv,
                          "reference_only": o is None})
    return pd.DataFrame(lines, columns=[*keys, "column", "ours", "paper", "delta", "reference_only"])


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
    ``delta`` and ``reference_only`` for the paper's other models) and ``ordering`` (per model
    and column: Kendall tau between our and the paper's values over base/+GRPO/Ours -- Table 2:
    its five rows --, both orderings, and whether "Ours > GRPO" holds for us and for the paper).
    Rows are matched by label (Table 1: ``model`` within ``base``), columns by name.
    """
    paper = read_paper_tables(paper_dir)
    t1, t2 = tables["table1"], tables["table2"]
    p1, p2 = paper["table1"], paper["table2"]
    cols1 = [c for c in t1.columns if c not in ("model", "base")]
    cols2 = [c for c in t2.columns if c not in ("row", "checkpoint")]
    long1 = _long(t1, p1, ["base", "model"], cols1)
    long2 = _long(t2, p2.rename(columns={"checkpoint": "paper_checkpoint"}), ["row"], cols2)
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
    return {"table1": long1, "table2": long2, "ordering": ordering_df}


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


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
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


def _ordering_summary(ordering: pd.DataFrame) -> list[str]:
    """Per table and model: "Ours > GRPO" counts (ours, the paper's on the same columns), agreement, mean tau."""
    lines = []
    for (table, base), grp in ordering.groupby(["table", "base"], sort=False):
        known = grp[(grp["ours_gt_grpo"] != "") & (grp["paper_ours_gt_grpo"] != "")]
        taus = grp["kendall_tau"].dropna()
        if not len(known):
            lines.append(f"{table} {base}: no column with both our and the paper's GRPO and Ours scores")
            continue
        lines.append(f"{table} {base}: Ours > GRPO in {int((known['ours_gt_grpo'] == 'yes').sum())}/{len(known)} "
                     f"columns (paper, same columns: {int((known['paper_ours_gt_grpo'] == 'yes').sum())}/"
                     f"{len(known)}); direction agrees with the paper in {int((known['agrees'] == 'yes').sum())}/"
                     f"{len(known)}; mean Kendall tau {taus.mean():+.2f} over {len(taus)} columns")
    return lines


def write_tables(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame],
                 out_dir: str | Path) -> list[Path]:
    """Write ``table1.csv``, ``table2.csv``, ``table1_vs_paper.csv``, ``table2_vs_paper.csv``,
    ``ordering_vs_paper.csv``, ``tables.md``, ``tables.html`` (the report's Tables page) and
    ``tables_summary.html`` (the report's landing-page excerpt) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"table1.csv": tables["table1"], "table2.csv": tables["table2"],
             "table1_vs_paper.csv": comparison["table1"], "table2_vs_paper.csv": comparison["table2"],
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


def tables_markdown(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame]) -> str:
    world, scorers = _stand_ins_of(tables)
    parts = [
        "# MAR-GRPO: Tables 1 and 2 reproduced", "",
        f"World: **{world}**." + (" The small world's scorers stand in for the paper's metrics: absolute values "
                                  "are not comparable with the paper's, orderings are." if world == "small" else ""),
        "", "## Table 1", "",
        "Preference columns: rows trained with the preference reward; T2I-CompBench columns: rows trained "
        "with the compbench reward. `–`: no score.", "",
        markdown_table(tables["table1"]), "", "## Table 2", "",
        "First model; `best*`: best checkpoint by training reward (baselines), `fixed`: step fixed in advance.", "",
        markdown_table(tables["table2"]), "", "## Comparison with the paper", "",
        "Cells: ours (paper, Δ = ours − paper); `[x]`: the paper's reference rows (models we do not train).", "",
        "### Table 1", "", markdown_table(_wide_comparison(comparison["table1"], ["base", "model"])), "",
        "### Table 2", "", markdown_table(_wide_comparison(comparison["table2"], ["row"])), "",
        "### Orderings", "",
        "Per column: Kendall tau between our values and the paper's over the rows (Table 1: base, +GRPO, Ours; "
        "Table 2: its five rows), both orderings, and whether Ours > GRPO for us and for the paper.", "",
        *[f"- {line}" for line in _ordering_summary(comparison["ordering"])], "",
        markdown_table(comparison["ordering"]), "", "## Stand-ins", "",
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
code{background:#f3f4f6;padding:0 3px;border-radius:3px}
"""


def _decimals(col: str) -> int:
    return 2 if col in TWO_DECIMALS else 4


def _num_html(v, col: str, signed: bool = False) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "–"
    return f"{v:+.{_decimals(col)}f}" if signed else f"{v:.{_decimals(col)}f}"


def _comparison_rows(long: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, bool, dict]]:
    """(key, reference_only, {column: (ours, paper, delta)}) per table row, in the long table's order."""
    rows = []
    for key, grp in long.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        cells = {r["column"]: (r["ours"], r["paper"], r["delta"]) for _, r in grp.iterrows()}
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
            ours, paper, delta = cells.get(c, (np.nan, np.nan, np.nan))
            sign = "" if math.isnan(delta) else (" pos" if delta > 0 else " neg" if delta < 0 else "")
            tds += [f'<td class="num ours g" data-col="{e(c)}">{_num_html(ours, c)}</td>',
                    f'<td class="num paper" data-col="{e(c)}">{_num_html(paper, c)}</td>',
                    f'<td class="num delta{sign}" data-col="{e(c)}">{_num_html(delta, c, signed=True)}</td>']
        tds += [f'<td class="g">{e(t)}</td>' for t in extra_cells.get(key, [""] * len(extra_heads))]
        body.append(f'<tr class="{" ".join(classes)}">' + "".join(tds) + "</tr>" if classes
                    else "<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="wrap"><table id="{table_id}"><thead><tr>{"".join(head1)}</tr><tr>{"".join(head2)}</tr>'
            f'</thead><tbody>\n' + "\n".join(body) + "\n</tbody></table></div>")


def _plain_table_html(df: pd.DataFrame, table_id: str) -> str:
    from html import escape as e
    head = "".join(f"<th>{e(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, (float, np.floating)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{"–" if math.isnan(v) else f"{v:+.2f}"}</td>')
            else:
                cells.append(f"<td>{e(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="wrap"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")


def _world_note(world: str) -> str:
    if world == "small":
        return ("The small world's scorers stand in for the paper's metrics: absolute values and the Δ "
                "column are not comparable with the paper's; orderings are (see Orderings).")
    return "Δ = ours − the paper's value."


def tables_html(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame],
                paper_dir: str | Path = DATA_DIR) -> str:
    """A self-contained HTML page (the report's Tables page): Tables 1 and 2 with, in every column,
    our value, the paper's and Δ = ours − paper, rows named and ordered as in the paper (Table 1
    also shows the paper's reference models, greyed); the orderings and the stand-in scorers."""
    from html import escape as e
    world, scorers = _stand_ins_of(tables)
    ours2 = tables["table2"]
    paper2 = read_paper_tables(paper_dir)["table2"]
    checkpoints = {(r["row"],): [str(r["checkpoint"]),
                                 str(paper2.loc[paper2["row"] == r["row"], "checkpoint"].iloc[0])
                                 if (paper2["row"] == r["row"]).any() else ""]
                   for _, r in ours2.iterrows()}
    summary = _ordering_summary(comparison["ordering"])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>MAR-GRPO: Tables 1 and 2 beside the paper's</title>", f"<style>{_PAGE_CSS}</style></head><body>",
        "<h1>MAR-GRPO: Tables 1 and 2 reproduced, beside the paper's</h1>",
        f"<p>World: <strong>{e(world)}</strong>. Each column: <strong>ours</strong>, the <span style=\"color:#6b7280\">"
        f"paper's</span> value and Δ = ours − paper. {e(_world_note(world))} “–”: no value.</p>",
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
        "<h2>Orderings</h2>",
        "<p>Per column: Kendall tau between our values and the paper's over the rows (Table 1: base, +GRPO, "
        "Ours; Table 2: its five rows), both orderings, and whether Ours &gt; GRPO for us and for the paper.</p>",
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in summary) + "</ul>",
        _plain_table_html(comparison["ordering"], "ordering"),
        "<h2>Stand-ins</h2>", f"<p>World: {e(world)}. Scorer behind each column:</p>",
        "<ul>" + "".join(f"<li>{e(c)}: <code>{e(sc)}</code></li>" for c, sc in scorers.items()) + "</ul>",
        "</body></html>", "",
    ]
    return "\n".join(parts)


def tables_summary_html(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame]) -> str:
    """An HTML fragment for the report's landing page (inline styles only, so nothing leaks into the
    page around it): our Tables 1 and 2 with the paper's value under each number, and the orderings."""
    from html import escape as e
    world, _ = _stand_ins_of(tables)
    cell = "padding:1px 4px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap"
    head = "padding:1px 4px;text-align:center;font-weight:600;white-space:normal"
    grey = "color:#9ca3af;font-size:9px"

    def numbers(ours, paper, col) -> str:
        return f'<td style="{cell}">{_num_html(ours, col)}<br><span style="{grey}">{_num_html(paper, col)}</span></td>'

    def table(table_id: str, long: pd.DataFrame, keys: list[str], transpose: bool = False) -> str:
        """Rows as in the paper, a column per metric; ``transpose``: a row per metric, a column per
        table row, the first key (the base model) spanning its rows (Table 1 fits the page so)."""
        cols = list(dict.fromkeys(long["column"]))
        rows = [(k, c) for k, ref, c in _comparison_rows(long, keys) if not ref]
        nan3 = (np.nan, np.nan, np.nan)
        style = "border-collapse:collapse;font-size:10px;margin:2px 0 8px;font-variant-numeric:tabular-nums"
        if transpose:
            groups = list(dict.fromkeys(k[0] for k, _ in rows))
            top = f'<th style="{head}"></th>' + "".join(
                f'<th style="{head}" colspan="{sum(k[0] == g for k, _ in rows)}">{e(str(g))}</th>' for g in groups)
            sub = f'<th style="{head}"></th>' + "".join(f'<th style="{head}">{e(str(k[-1]))}</th>' for k, _ in rows)
            body = ["<tr>" + f'<td style="{cell};text-align:left;font-weight:600">{e(c)}</td>'
                    + "".join(numbers(*cells.get(c, nan3)[:2], c) for _, cells in rows) + "</tr>" for c in cols]
            return (f'<table id="{table_id}" style="{style}"><thead><tr>{top}</tr><tr>{sub}</tr></thead><tbody>'
                    + "".join(body) + "</tbody></table>")
        top = f'<th style="{head}"></th>' + "".join(f'<th style="{head}">{e(c)}</th>' for c in cols)
        body = ["<tr>" + f'<td style="{cell};text-align:left;font-weight:600">{e(str(key[-1]))}</td>'
                + "".join(numbers(*cells.get(c, nan3)[:2], c) for c in cols) + "</tr>" for key, cells in rows]
        return f'<table id="{table_id}" style="{style}"><thead><tr>{top}</tr></thead><tbody>' + "".join(body) \
            + "</tbody></table>"

    note = ("small world: stand-in scorers, so compare orderings, not values" if world == "small"
            else f"world: {world}")
    return "\n".join([
        '<div class="marpipe-tables-summary" style="overflow-x:auto;margin:4px 0">',
        f'<p style="margin:2px 0"><strong>Table 1</strong> (transposed: a row per metric): ours, the paper\'s '
        f'value in grey below ({e(note)}).</p>',
        table("summary-table1", comparison["table1"], ["base", "model"], transpose=True),
        '<p style="margin:2px 0"><strong>Table 2</strong> (the ablation on the first model).</p>',
        table("summary-table2", comparison["table2"], ["row"]),
        '<ul style="margin:2px 0;font-size:11px">'
        + "".join(f"<li>{e(line)}</li>" for line in _ordering_summary(comparison["ordering"])) + "</ul>",
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
        parts += ["", "Orderings vs the paper", *_ordering_summary(comparison["ordering"])]
    return "\n".join(parts) + "\n"


def make_tables(exp, records: Sequence[dict], out_dir: str | Path, paper_dir: str | Path = DATA_DIR) -> str:
    """Build, compare and write everything; returns the terminal text."""
    tables = build_tables(exp, records)
    comparison = compare_with_paper(tables, paper_dir)
    write_tables(tables, comparison, out_dir)
    return format_for_terminal(tables, comparison)
