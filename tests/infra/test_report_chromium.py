"""The report in a real browser: headless Chromium opens the `snakemake --report` page of a tiny
finished workflow (tests/stages/test_report.py's :func:`build_report`) and finds Tables 1-2's
numbers on the rendered landing page and on the Tables page, and no docutils error box.

Skipped where Chromium is not installed (`apt-get install chromium`; `.ci/run` installs it), and
FAILS instead under ``MARPIPE_REQUIRE_INFRA=1``, as the other infrastructure tests do.
"""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from marpipe import tables as T
from tests.infra.conftest import unavailable
from tests.stages.test_report import build_report, report_data, table_cells

pytestmark = [pytest.mark.infra, pytest.mark.timeout(900)]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        unavailable("Chromium is not installed (no `chromium` on PATH; Debian: `apt-get install chromium`): "
                    "the report cannot be opened in a browser")
    return exe


@pytest.fixture(scope="module")
def report(chromium, tmp_path_factory):
    repo = build_report(tmp_path_factory.mktemp("report-chromium"))
    return {"repo": repo, "html": repo / "report.html", **report_data(repo / "report.html")}


def headless(exe: str, url: str, tmp: Path, *args: str) -> str:
    """Chromium, headless, on ``url`` (scripts run, 10 s of virtual time); its stdout."""
    cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000", *args, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout


def visible(dom: str) -> str:
    """The DOM without <script>, <style> and <template> (the report embeds its data in scripts)."""
    return re.sub(r"<(script|style|template)\b.*?</\1>", "", dom, flags=re.S | re.I)


def fmt(v: float, col: str) -> str:
    return f"{v:.{2 if col in T.TWO_DECIMALS else 4}f}"


def test_landing_page_shows_table1_and_table2(chromium, report, tmp_path):
    dom = visible(headless(chromium, report["html"].as_uri(), tmp_path, "--dump-dom"))
    assert "System Message" not in dom and "system-message" not in dom, "docutils error box on the page"
    assert "Inline emphasis" not in dom
    # Table 1 (transposed on the landing page: a row per metric, a column per table row), every number
    t1 = pd.read_csv(report["repo"] / "results/tables/table1.csv")
    paper = T.read_paper_tables()["table1"].set_index(["base", "model"])
    rows = {r[0]: r[1:] for r in table_cells(dom, "summary-table1")[2:]}
    cols = list(t1.columns[2:])
    assert list(rows) == cols
    for j, line in t1.iterrows():
        for col in cols:
            ours, theirs = fmt(line[col], col), fmt(paper.loc[(line["base"], line["model"]), col], col)
            # ours [95% interval] (stats.bootstrap_mean), then the paper's value
            assert re.fullmatch(rf"{re.escape(ours)} \[\S+, \S+\] {re.escape(theirs)}", rows[col][j]), \
                (line["base"], line["model"], col, rows[col][j])
    t2 = pd.read_csv(report["repo"] / "results/tables/table2.csv")
    cells = table_cells(dom, "summary-table2")
    assert [r[0] for r in cells[1:]] == list(t2["row"])
    assert cells[1][1].split()[0] == fmt(t2.loc[0, "HPS"], "HPS")


def test_tables_page_shows_ours_paper_and_delta(chromium, report, tmp_path):
    """The Tables result is shown in an iframe of its data URI: open that very page."""
    uri = report["results"]["results/tables/tables.html"]["data_uri"]
    assert uri.startswith("data:text/html")
    page = tmp_path / "tables.html"
    page.write_bytes(base64.b64decode(uri.split("base64,", 1)[1]))
    dom = visible(headless(chromium, page.as_uri(), tmp_path, "--dump-dom"))
    t1 = pd.read_csv(report["repo"] / "results/tables/table1.csv")
    rows = table_cells(dom, "table1")[2:]
    assert [r[0] for r in rows] == list(T.read_paper_tables()["table1"]["model"])   # named as in the paper
    ours = t1[(t1["base"] == "NOVA") & (t1["model"] == "Ours")].iloc[0]
    line = next(r for r in rows if r[0] == "Ours")                                  # NOVA's block comes first
    assert [line[1].split(" [")[0], *line[2:4]] == [fmt(ours["HPS"], "HPS"), "29.35", f"{ours['HPS'] - 29.35:+.2f}"]
    assert re.fullmatch(r"\S+ \[\S+, \S+\]", line[1]), line[1]          # with its 95% interval
    assert "Orderings" in dom and "Stand-ins" in dom


def test_screenshot(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    headless(chromium, report["html"].as_uri(), tmp_path, "--hide-scrollbars", "--window-size=1400,1000",
             f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{shot}: {len(data)} bytes"
