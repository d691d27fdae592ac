"""Tables 1-2 as text: ``tables.md`` (each value with its interval, the comparison with the paper, the
verdicts; :func:`tables_markdown`) and the short summary printed at the end (:func:`format_for_terminal`)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from marpipe.tables.compare import VERDICT_COLUMNS, verdict_summary
from marpipe.tables.intervals import INTERVAL_COLUMNS
from marpipe.tables.text import (
    DECIDABLE,
    FLOAT_FORMAT,
    VERDICTS_TEXT,
    intervals_text,
    is_nan,
    no_interval_note,
    stand_ins_of,
)


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


def _with_interval(v, lo, hi, decimals: int = 4, signed: bool = False) -> str:
    """"45.6000 [44.1000, 47.0000]"; no interval: the value alone; no value: "–"."""
    if is_nan(v):
        return "–"
    f = f"{{:{'+' if signed else ''}.{decimals}f}}"
    return f.format(v) if is_nan(lo) or is_nan(hi) else f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


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


def _verdict_table(verdicts: pd.DataFrame, decimals=lambda col: 4) -> pd.DataFrame:
    """The verdicts as text: claim, the paper's difference, the smallest difference the run can
    decide, ours with its interval, the verdict."""
    rows = []
    for _, v in verdicts.iterrows():
        d = decimals(v["column"])
        rows.append({"table": v["table"], "base": v["base"], "claim": v["claim"], "column": v["column"],
                     "paper Δ": "–" if is_nan(v["paper_diff"]) else f"{v['paper_diff']:+.{d}f}",
                     DECIDABLE: "–" if is_nan(v.get("decidable")) else f"{v['decidable']:.{d}f}",
                     "ours Δ [simultaneous 95%]": _with_interval(v["ours_diff"], v["lo"], v["hi"], d, signed=True),
                     "verdict": v["verdict"], "note": v["note"]})
    return pd.DataFrame(rows, columns=["table", "base", "claim", "column", "paper Δ", DECIDABLE, "ours Δ [simultaneous 95%]",
                                       "verdict", "note"])


def tables_markdown(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame]) -> str:
    world, scorers = stand_ins_of(tables)
    iv = tables.get("intervals")
    verdicts = comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS))
    cols1 = [c for c in tables["table1"].columns if c not in ("model", "base")]
    cols2 = [c for c in tables["table2"].columns if c not in ("row", "checkpoint")]
    parts = [
        "# MAR-GRPO: Tables 1 and 2 reproduced", "",
        f"World: **{world}**." + (" The small world's scorers stand in for the paper's metrics: absolute values "
                                  "are not comparable with the paper's; the directions of the differences are "
                                  "(see the verdicts)." if world == "small" else ""),
        "", f"Cells: value [95% interval]. {intervals_text()}.{no_interval_note(tables)}",
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
        *[f"- {line}" for line in verdict_summary(verdicts)], "",
        markdown_table(_verdict_table(verdicts), right=["paper Δ", DECIDABLE, "ours Δ [simultaneous 95%]"]), "",
        "## Stand-ins", "",
        f"World: {world}. Scorer behind each column:", "",
        *[f"- {col}: `{scorer}`" for col, scorer in scorers.items()], "",
    ]
    return "\n".join(parts)


def format_for_terminal(tables: dict[str, pd.DataFrame], comparison: dict[str, pd.DataFrame] | None = None) -> str:
    """A compact text version of both tables (and the ordering summary) to print."""
    def text(df):
        return df.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
    world, scorers = stand_ins_of(tables)
    parts = ["Table 1", text(tables["table1"]), "", "Table 2", text(tables["table2"]), "",
             f"World: {world}; scorers: " + ", ".join(f"{c}={s}" for c, s in scorers.items())]
    if comparison is not None:
        parts += ["", "Verdicts on the paper's comparisons (paired, simultaneous 95% intervals)",
                  *verdict_summary(comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS)))]
    return "\n".join(parts) + "\n"
