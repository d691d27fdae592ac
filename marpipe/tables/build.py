"""Tables 1 and 2 laid out as the paper does, from score records (:func:`build_tables`). Table 1: per
model, its base, ``+GRPO`` and ``Ours``; Table 2: the first model's base and four variants with the
checkpoint each was read at. A cell without a record is NaN, never filled in."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from marpipe import stats
from marpipe.experiment import BASE, SUITES, TABLE1_VARIANTS, TABLE2_VARIANTS
from marpipe.tables.intervals import (
    DIFFERENCE_COLUMNS,
    INTERVAL_COLUMNS,
    cell_interval,
    counts_as_int,
    difference,
    interval_line,
)
from marpipe.tables.records import index_records, stand_ins, world_of

# Table 1: row label -> variant ("base" = the untrained model, labelled with the model's label); the
# variants are the experiment's (TABLE1_VARIANTS: what every model trains), only the labels are here
TABLE1_ROWS = dict(zip(("+GRPO", "Ours"), TABLE1_VARIANTS, strict=True))


# Table 2: row label -> variant, in the paper's order (TABLE2_VARIANTS: the first model's)
TABLE2_ROWS = dict(zip(("GRPO", "+Fix Decoder", "+MTE", "+Sim (Ours)"), TABLE2_VARIANTS, strict=True))


TABLE2_COLUMNS = ("HPS", "Aesthetic", "Shape", "Texture", "2d-spatial")


# not a table of the paper: every trained row − its base model in the columns of the reward it was
# trained on (Experiment.trained_columns), the check that training moved that reward at all
TRAINING = "training"
ROW_LABELS = {**{v: k for k, v in TABLE1_ROWS.items()}, **{v: k for k, v in TABLE2_ROWS.items()}}


CHECKPOINT_RULE_TEXT = {"best": "best*", "fixed": "fixed", "base": "base"}


def build_tables(exp, records: Sequence[dict]) -> dict[str, pd.DataFrame]:
    """``{"table1", "table2", "stand_ins", "intervals", "differences"}``.

    ``table1``/``table2``: Tables 1 and 2 laid out like the paper's (NaN where no record);
    ``stand_ins``: which scorer produced each column in which world (records' ``scorer_for``,
    else the config's evaluation section); ``intervals``: one line per cell of both tables
    (``table``, ``base``, ``row``, ``column``) with its ``value`` and 95% bootstrap interval
    ``lo``/``hi`` (NaN without per-image values); ``differences``: the paired differences the
    paper's claims rest on (Table 1: ``Ours`` − ``+GRPO`` per model; Table 2: each row − the
    row above; ``training``: each trained row − its base model in the columns of the reward it
    was trained on), ``ours_diff`` = the difference of the two cells, with its interval and a
    ``note`` where there is none."""
    idx = index_records(records)
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
            cache[key] = cell_interval(rec_of(model, variant, suite_of[col]), col)
        return cache[key]

    t1, ci = [], []
    for model in exp.models:
        label = exp.label(model)
        for row_label, variant in [(label, BASE), *TABLE1_ROWS.items()]:
            t1.append({"model": row_label, "base": label,
                       **{c: cell(model, variant, s, c) for s in SUITES for c in cols[s]}})
            ci += [interval_line("table1", label, row_label, c, t1[-1][c], interval(model, variant, c))
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
        ci += [interval_line("table2", exp.label(model), row_label, c, row[c], interval(model, variant, c))
               for c, _ in t2_cols]
    table2 = pd.DataFrame(t2, columns=["row", *[c for c, _ in t2_cols], "checkpoint"])

    diffs = []
    for m in exp.models:
        label = exp.label(m)
        (a_label, a), (b_label, b) = ("Ours", TABLE1_ROWS["Ours"]), ("+GRPO", TABLE1_ROWS["+GRPO"])
        diffs += [difference("table1", label, a_label, b_label, c, rec_of(m, a, s), rec_of(m, b, s))
                  for s in SUITES for c in cols[s]]
    for (b_label, b), (a_label, a) in zip(t2_rows, t2_rows[1:]):
        diffs += [difference("table2", exp.label(model), a_label, b_label, c, rec_of(model, a, s),
                              rec_of(model, b, s)) for c, s in t2_cols]
    for m in exp.models:
        label = exp.label(m)
        diffs += [difference(TRAINING, label, ROW_LABELS.get(v, v), label, c, rec_of(m, v, s), rec_of(m, BASE, s))
                  for v in exp.model_variants(m) for s in SUITES for c in exp.trained_columns(s)]

    world = world_of(records, exp)
    used = [r for r in records if (r["model"], r["row"], r["suite"]) in
            {(m, _row_name(rewards[s], v), s) for m in exp.models for v in (BASE, *exp.variants) for s in SUITES}]
    stand = pd.DataFrame([{"column": c, "scorer": sc, "world": world} for c, sc in stand_ins(used, exp).items()],
                         columns=["column", "scorer", "world"])
    return {"table1": table1, "table2": table2, "stand_ins": stand,
            "intervals": counts_as_int(pd.DataFrame(ci, columns=INTERVAL_COLUMNS), ["n_prompts", "n_images", "n_seeds"]),
            "differences": counts_as_int(pd.DataFrame(diffs, columns=DIFFERENCE_COLUMNS), ["n_prompts"])}


def _row_name(reward: str | None, variant: str) -> str:
    return BASE if variant == BASE else f"{reward}-{variant}"


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
