"""Our tables beside the paper's (``marpipe/data/paper_table{1,2}.csv``): deltas, and a verdict on each
comparison the paper makes against the paper's own difference -- ``holds``, ``contradicted`` or
``inconclusive`` (:func:`compare_with_paper`); the verdicts of several runs side by side
(:func:`compare_verdicts`)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marpipe import stats
from marpipe.tables.build import TABLE1_ROWS, TRAINING
from marpipe.tables.intervals import DIFFERENCE_COLUMNS, INTERVAL_COLUMNS, counts_as_int
from marpipe.tables.text import is_nan

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


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
    (:func:`marpipe.stats.decidable`), to read beside ``paper_diff``. The ``training`` lines are
    not the paper's: each claims that a trained row beats its base model (no ``paper_diff``)."""
    lines = []
    for _, d in (differences if differences is not None else pd.DataFrame(columns=DIFFERENCE_COLUMNS)).iterrows():
        if d["table"] == TRAINING:
            lines.append({"table": d["table"], "base": d["base"], "claim": f"{d['a']} > {d['b']}", "a": d["a"],
                          "b": d["b"], "column": d["column"], "paper_diff": math.nan, "expected": 1.0,
                          "ours_diff": d["ours_diff"], "se": _float(d.get("se")), "df": _float(d.get("df")),
                          "n_prompts": d["n_prompts"], "note": d["note"] or "not the paper's: the trained reward"})
            continue
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
                      "n_prompts": d["n_prompts"], "note": note, "expected": paper_diff})
    claims = [x for x in lines if stats.direction(x["expected"]) and not math.isnan(x["se"])]
    for x in lines:
        x["lo"], x["hi"] = stats.simultaneous(x["ours_diff"], x["se"], x["df"], len(claims))
        x["decidable"] = stats.decidable(x["se"], x["df"], len(claims))
        x["verdict"] = stats.verdict(x["lo"], x["hi"], x["expected"])
        x["n_claims"] = len(claims)
    return counts_as_int(pd.DataFrame(lines, columns=VERDICT_COLUMNS), ["n_prompts", "n_claims"])


def _float(v) -> float:
    return math.nan if v is None or pd.isna(v) else float(v)


def verdict_summary(verdicts: pd.DataFrame) -> list[str]:
    """Per table, model and pair of rows: "Ours > +GRPO: holds in a, inconclusive in b, contradicted
    in c of n columns" (the claim's direction is the paper's; mixed directions: "vs")."""
    lines = []
    if verdicts is None or not len(verdicts):
        return lines
    for (table, base, a, b), grp in verdicts.groupby(["table", "base", "a", "b"], sort=False):
        signs = {1} if table == TRAINING else {stats.direction(x) for x in grp["paper_diff"]} - {0}
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
        df[name] = [f"{v} [{lo:+.4g}, {hi:+.4g}]" if not (is_nan(lo) or is_nan(hi)) else v
                    for v, lo, hi in zip(df["verdict"], df["lo"], df["hi"])]
        frames.append(df.set_index(["table", "base", "claim", "column"])[[name]])
    out = pd.concat(frames, axis=1, join="outer").reset_index()
    verdict_of = out[list(runs)].apply(lambda col: col.str.split(" ").str[0])
    out["agree"] = verdict_of.nunique(axis=1, dropna=False).eq(1).map({True: "yes", False: "NO"})
    return out
