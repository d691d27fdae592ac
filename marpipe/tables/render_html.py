"""Tables 1-2 as HTML for the Snakemake report: the Tables page, self-contained with its own CSS
(:func:`tables_html`), and the landing page's excerpt with inline styles only (:func:`tables_summary_html`)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from marpipe import stats
from marpipe.tables.compare import DATA_DIR, VERDICT_COLUMNS, read_paper_tables, verdict_summary
from marpipe.tables.text import DECIDABLE, VERDICTS_TEXT, intervals_text, is_nan, no_interval_note, stand_ins_of

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
    if is_nan(lo) or is_nan(hi):
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
    world, scorers = stand_ins_of(tables)
    ours2 = tables["table2"]
    paper2 = read_paper_tables(paper_dir)["table2"]
    checkpoints = {(r["row"],): [str(r["checkpoint"]),
                                 str(paper2.loc[paper2["row"] == r["row"], "checkpoint"].iloc[0])
                                 if (paper2["row"] == r["row"]).any() else ""]
                   for _, r in ours2.iterrows()}
    verdicts = comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS))
    summary = verdict_summary(verdicts)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>MAR-GRPO: Tables 1 and 2 beside the paper's</title>", f"<style>{_PAGE_CSS}</style></head><body>",
        "<h1>MAR-GRPO: Tables 1 and 2 reproduced, beside the paper's</h1>",
        f"<p>World: <strong>{e(world)}</strong>. Each column: <strong>ours</strong>, the <span style=\"color:#6b7280\">"
        f"paper's</span> value and Δ = ours − paper; under our value, its 95% interval. {e(_world_note(world))} "
        f"“–”: no value.</p>",
        f"<p>{e(intervals_text())}.{e(no_interval_note(tables))}</p>",
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
    world, _ = stand_ins_of(tables)
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
                  verdict_summary(comparison.get("verdicts", pd.DataFrame(columns=VERDICT_COLUMNS)))) + "</ul>",
        "</div>", "",
    ])
