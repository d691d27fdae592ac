"""The tables stage's files (:func:`write_tables`): CSVs in a fixed float format, so reruns are
byte-identical, beside ``tables.md`` and the report's HTML."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from marpipe.tables.compare import VERDICT_COLUMNS
from marpipe.tables.intervals import INTERVAL_COLUMNS
from marpipe.tables.render_html import tables_html, tables_summary_html
from marpipe.tables.render_markdown import tables_markdown
from marpipe.tables.text import FLOAT_FORMAT


def _csv(df: pd.DataFrame, path: Path) -> None:
    text = df.to_csv(index=False, float_format=FLOAT_FORMAT, na_rep="", lineterminator="\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
