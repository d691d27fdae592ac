"""The intervals of Tables 1-2 (:mod:`marpipe.stats`): a cell's 95% interval of the very estimator it
prints, and the paired difference of two rows over the prompts both were sampled on. Both need a
record's per-image values; without them the line says so (``NaN``, a ``note``), never an error."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from marpipe import stats

INTERVAL_COLUMNS = ["table", "base", "row", "column", "value", "lo", "hi", "n_prompts", "n_images", "n_seeds"]


DIFFERENCE_COLUMNS = ["table", "base", "a", "b", "column", "ours_diff", "lo", "hi", "se", "df", "n_prompts", "note"]


def counts_as_int(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
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


def cell_interval(rec: dict | None, col: str) -> stats.Interval | None:
    """The cell's bootstrap interval over prompts; None without per-image values."""
    data = _per_image(rec, col)
    return None if data is None else stats.bootstrap_mean(*data)


def interval_line(table: str, base: str, row: str, col: str, value: float, iv: stats.Interval | None) -> dict:
    return {"table": table, "base": base, "row": row, "column": col, "value": value,
            "lo": iv.lo if iv else np.nan, "hi": iv.hi if iv else np.nan,
            "n_prompts": iv.n_prompts if iv else np.nan, "n_images": iv.n_images if iv else np.nan,
            "n_seeds": iv.n_seeds if iv else np.nan}


def difference(table: str, base: str, a_label: str, b_label: str, col: str, a: dict | None,
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
