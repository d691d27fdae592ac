"""Tables 1 and 2 of the paper from our score files (or MLflow), beside the paper's: records
(:mod:`.records`), the layout (:mod:`.build`), intervals (:mod:`.intervals`), the comparison and its
verdicts (:mod:`.compare`), Markdown and HTML (:mod:`.render_markdown`, :mod:`.render_html`) and the
files the tables stage writes (:mod:`.write`). The names below are what the CLI, the report and the
tests use."""
from marpipe.tables.build import TABLE1_ROWS, TABLE2_ROWS, build_tables
from marpipe.tables.compare import VERDICT_COLUMNS, compare_verdicts, compare_with_paper, kendall_tau, read_paper_tables
from marpipe.tables.records import score_record, score_records_from_files, score_records_from_mlflow
from marpipe.tables.render_html import TWO_DECIMALS, tables_html, tables_summary_html
from marpipe.tables.render_markdown import format_for_terminal, markdown_table, tables_markdown
from marpipe.tables.write import write_tables

__all__ = ["TABLE1_ROWS", "TABLE2_ROWS", "TWO_DECIMALS", "VERDICT_COLUMNS", "build_tables", "compare_verdicts",
           "compare_with_paper", "format_for_terminal", "kendall_tau", "markdown_table", "read_paper_tables",
           "score_record", "score_records_from_files", "score_records_from_mlflow", "tables_html",
           "tables_markdown", "tables_summary_html", "write_tables"]
