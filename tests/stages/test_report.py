"""The Snakemake report a reviewer opens first: every caption renders without a docutils message,
Tables 1-2 are on the page (ours, the paper's value, the difference), each figure has its own
caption, and the sample grids are big enough to see.

:func:`build_report` makes a tiny finished workflow (the real Snakefile, rules and captions; fake
score files, training logs and image bundles in place of the upstream stages), runs the real
``tables`` and ``figures`` rules and builds the real ``snakemake --report``; the Chromium check in
``tests/infra/test_report_chromium.py`` opens the same report.
"""
from __future__ import annotations

import dataclasses
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from marpipe import experiment
from marpipe import tables as T
from marpipe.io.files import save_images
from marpipe.stages import figures as F
from tests.tables.test_tables import write_scores

ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = ROOT / "workflow" / "report"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PROMPTS = ["a red circle", "two blue squares left of a green triangle"]

# what snakemake.report.auto_report appends to every caption before rendering it with Jinja
RST_LINKS = """

.. _Workflow: javascript:show_panel('workflow')
.. _Statistics: javascript:show_panel('statistics')
{% for cat, catresults in categories|dictsort %}
.. _{{ cat.name }}: javascript:app.showCategory('{{ cat.name|urlencode }}')
{% endfor %}
{% for res in files %}
.. _{{ res.target }}: javascript:app.showResultInfo('{{ res.path|urlencode }}')
{% endfor %}
"""


# ------------------------------------------------------------------------------------------
# a tiny finished workflow and its report
# ------------------------------------------------------------------------------------------
def fake_upstream(exp, results: Path) -> None:
    """What the tables and figures rules read: score files, training logs, image bundles."""
    write_scores(exp, results)
    for m in exp.models:
        for r in exp.trained_rewards:
            for i, v in enumerate(exp.model_variants(m)):
                run = results / "runs" / m / r / v / f"seed{exp.seeds[0]}"
                run.mkdir(parents=True, exist_ok=True)
                (run / "metrics.jsonl").write_text("".join(
                    json.dumps({"step": s, "reward_mean": 0.1 * s + 0.01 * i, "kl": 1e-3 * s * (i + 1),
                                "grad_norm": 1.0 / s}) + "\n" for s in range(1, 7)))
                (run / "summary.json").write_text("{}")
    g = torch.Generator().manual_seed(0)
    for suite in experiment.SUITES:
        for row in exp.suite_rows(suite):
            save_images(results / "images" / row.model / row.id / f"{suite}.npz",
                        torch.rand(4, 3, 32, 32, generator=g), PROMPTS, [{}, {}], [0, 0, 1, 1], {"seed": 0})


def _snakemake(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run([SNAKEMAKE, *args, "--configfile", "config/small.yaml"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"snakemake {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def build_report(base: Path) -> Path:
    """Copy the workflow into ``base/repo``, fake the upstream stages, run the real ``tables`` and
    ``figures`` rules (``--allowed-rules``: nothing upstream runs) and build ``report.html``.
    Returns the repo folder."""
    repo = base / "repo"
    repo.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "config", "workflow", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, repo / name)
    fake_upstream(experiment.load(repo / "config" / "small.yaml"), repo / "results")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": (base / "mlruns").as_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    only = ["--allowed-rules", "tables", "figures"]
    _snakemake("tables", "figures", *only, "--cores", "1", cwd=repo, env=env)
    _snakemake("--report", "report.html", "tables", "figures", *only, cwd=repo, env=env)
    return repo


def report_data(report_html: Path) -> dict:
    """The data a snakemake HTML report embeds: the landing page's HTML, results and categories."""
    text = report_html.read_text()
    out = {}
    for script, name in (("workflow-desc", "workflow_desc"), ("results", "results"), ("categories", "categories")):
        m = re.search(rf'<script id="{script}">\s*var {name} = (.*?);?\s*</script>', text, re.S)
        assert m, f"no `var {name}` in {report_html}"
        out[name] = json.loads(m.group(1))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    repo = build_report(tmp_path_factory.mktemp("report"))
    return {"repo": repo, **report_data(repo / "report.html")}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
class TableCells(html.parser.HTMLParser):
    """The text of every cell of the table with id ``table_id``, row by row."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.depth, self.rows, self.cell = table_id, 0, [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and (self.depth or attrs.get("id") == self.table_id):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []
        elif self.depth and tag == "br" and self.cell is not None:
            self.cell.append(" ")

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def table_cells(page: str, table_id: str) -> list[list[str]]:
    p = TableCells(table_id)
    p.feed(page)
    assert p.rows, f"no table {table_id!r}"
    return p.rows


def fmt(v: float, col: str, signed: bool = False) -> str:
    d = 2 if col in T.TWO_DECIMALS else 4
    return f"{v:+.{d}f}" if signed else f"{v:.{d}f}"


def with_ci(intervals: pd.DataFrame, table: str, base: str, row: str, col: str) -> str:
    """What a cell of ours shows: the value, its 95% interval under it ("v [lo, hi]" once parsed)."""
    line = intervals[(intervals["table"] == table) & (intervals["base"] == base) & (intervals["row"] == row)
                     & (intervals["column"] == col)].iloc[0]
    return f"{fmt(line['value'], col)} [{fmt(line['lo'], col)}, {fmt(line['hi'], col)}]"


@dataclasses.dataclass(frozen=True, order=True)
class Category:
    """What the captions see of a report category (Jinja sorts them: ``categories|dictsort``)."""
    name: str


def publish(rst: str) -> tuple[str, str]:
    """(HTML body, docutils warnings) with every message from level 2 (warning) up reported."""
    from docutils.core import publish_parts
    warnings = io.StringIO()
    body = publish_parts(rst, writer="html", settings_overrides={
        "report_level": 2, "halt_level": 5, "warning_stream": warnings})["body"]
    return body, warnings.getvalue()


def render_caption(path: Path, config: dict, wildcards: dict, files: list, categories: dict) -> str:
    """Render a caption as snakemake.report does: its text plus the link targets, through Jinja."""
    from jinja2 import Environment
    from snakemake.iocontainers import Wildcards
    snakemake = SimpleNamespace(config=config, wildcards=Wildcards(fromdict=wildcards), input=[], output=[],
                                params=SimpleNamespace(), rule="r")
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(path.read_text() + RST_LINKS).render(snakemake=snakemake, categories=categories,
                                                                files=files)


def small_tables(tmp_path: Path, **kw) -> tuple[dict, dict, Path]:
    exp = experiment.load(ROOT / "config" / "small.yaml")
    tabs = T.build_tables(exp, T.score_records_from_files(write_scores(exp, tmp_path / "results", **kw)))
    cmp_ = T.compare_with_paper(tabs)
    T.write_tables(tabs, cmp_, tmp_path / "results" / "tables")
    return tabs, cmp_, tmp_path / "results" / "tables"


# ------------------------------------------------------------------------------------------
# captions: no docutils message
# ------------------------------------------------------------------------------------------
REPORT_FILES = ["results/tables/table1.csv", "results/tables/table2.csv", "results/tables/tables.html",
                "results/figures/dynamics_tiny-nova_hps.png", "results/figures/samples_tiny-nova.png",
                "results/verify/tiny-nova.png"]
CAPTIONS = [  # (caption, wildcards of the file it describes, whether the tables are in the report yet)
    ("workflow.rst", {}, True), ("workflow.rst", {}, False),
    ("table1.rst", {}, True), ("table2.rst", {}, True), ("tables.rst", {}, True),
    ("figures.rst", {"model": "tiny-nova", "reward": "hps"}, True), ("figures.rst", {"model": "tiny-harmon"}, True),
    ("verify.rst", {"model": "tiny-nova"}, True),
    ("ablations.rst", {"panel": "knobs"}, True), ("ablations.rst", {"panel": "curves"}, True),
    ("grad_noise.rst", {"model": "tiny-harmon"}, True),
    ("scorer_check.rst", {"weights": "world_scorers"}, True),
]


def test_every_caption_is_tested():
    assert {p.name for p in REPORT_DIR.glob("*.rst")} == {c for c, _, _ in CAPTIONS}


@pytest.mark.parametrize("configfile", ["config.yaml", "config/small.yaml"])
@pytest.mark.parametrize("caption,wildcards,with_tables", CAPTIONS,
                         ids=[f"{c}-{'-'.join(w.values())}{'' if t else '-no-tables-yet'}" for c, w, t in CAPTIONS])
def test_caption_renders_without_docutils_messages(caption, wildcards, with_tables, configfile, tmp_path, monkeypatch):
    config = yaml.safe_load((ROOT / configfile).read_text())
    small_tables(tmp_path)                       # results/tables/tables_summary.html, read by workflow.rst
    monkeypatch.chdir(tmp_path)                  # snakemake --report runs in the working directory
    paths = REPORT_FILES if with_tables else [f for f in REPORT_FILES if "/tables/" not in f]
    files = [SimpleNamespace(target=Path(p).name, path=Path(p), name=Path(p).name) for p in paths]
    categories = {Category(n): {} for n in ("Base models", "Figures", "Tables")[:3 if with_tables else 2]}
    rst = render_caption(REPORT_DIR / caption, config, wildcards, files, categories)
    body, warnings = publish(rst)
    assert warnings == "", f"{caption}: docutils says\n{warnings}\n--- rendered rst ---\n{rst}"
    assert "System Message" not in body and "system-message" not in body, body
    if caption == "workflow.rst":
        assert ('id="summary-table1"' in body) is with_tables
        assert "best*" in body
    if caption == "figures.rst":
        title = "Training dynamics of" if "reward" in wildcards else "Samples of"
        assert title in body and f"({wildcards['model']})" in body


# ------------------------------------------------------------------------------------------
# Tables 1-2 as HTML: ours, the paper's value, the difference
# ------------------------------------------------------------------------------------------
def test_tables_html_has_ours_the_papers_values_and_deltas(tmp_path):
    tabs, cmp_, out = small_tables(tmp_path, skip=("Complex",))
    page = (out / "tables.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page  # self-contained
    paper = T.read_paper_tables()
    rows = table_cells(page, "table1")
    head, sub, body = rows[0], rows[1], rows[2:]
    cols = list(tabs["table1"].columns[2:])
    assert head == ["Model", *cols] and sub == ["ours", "paper", "Δ"] * len(cols)
    # rows named and ordered as in the paper's Table 1
    assert [r[0] for r in body] == list(paper["table1"]["model"])
    by_name = {(b, r[0]): r for b, r in zip(paper["table1"]["base"], body)}
    for _, ours in tabs["table1"].iterrows():
        line = by_name[(ours["base"], ours["model"])]
        ref = paper["table1"][(paper["table1"]["base"] == ours["base"]) & (paper["table1"]["model"] == ours["model"])]
        for i, col in enumerate(cols):
            o, p, d = line[1 + 3 * i: 4 + 3 * i]
            if col == "Complex":                                  # no score: nothing filled in
                assert o == "–" and d == "–"
                continue
            assert o == with_ci(tabs["intervals"], "table1", ours["base"], ours["model"], col)
            assert o.startswith(fmt(ours[col], col) + " [") and p == fmt(float(ref[col].iloc[0]), col)
            assert d == fmt(ours[col] - float(ref[col].iloc[0]), col, signed=True)
    sd3 = by_name[("SD3", "SD3")]                                 # the paper's reference rows: paper only
    assert sd3[1:4] == ["–", "30.22", "–"]
    # one spot check by hand: NOVA "Ours" HPS beside the paper's 29.35
    nova_ours = tabs["table1"].query("base == 'NOVA' and model == 'Ours'").iloc[0]
    assert by_name[("NOVA", "Ours")][1:4] == [with_ci(tabs["intervals"], "table1", "NOVA", "Ours", "HPS"), "29.35",
                                             f"{nova_ours['HPS'] - 29.35:+.2f}"]
    assert by_name[("NOVA", "Ours")][1].startswith(f"{nova_ours['HPS']:.2f} [")

    t2 = table_cells(page, "table2")
    assert t2[0] == ["Row", "HPS", "Aesthetic", "Shape", "Texture", "2d-spatial", "checkpoint (ours)",
                     "checkpoint (paper)"]
    assert [r[0] for r in t2[2:]] == ["NOVA", "GRPO", "+Fix Decoder", "+MTE", "+Sim (Ours)"]
    mte = t2[2:][3]
    ours_mte = tabs["table2"].set_index("row").loc["+MTE"]
    assert mte[7:10] == [with_ci(tabs["intervals"], "table2", "NOVA", "+MTE", "Shape"), "0.5752",
                         fmt(ours_mte["Shape"] - 0.5752, "Shape", True)]
    assert mte[-2:] == ["fixed (step 30)", "fixed"]
    # the orderings: a verdict per comparison the paper makes, and the counts
    assert ("table1 NOVA: Ours &gt; +GRPO: holds in 10, inconclusive in 0, contradicted in 0 of 10 columns; "
            "no verdict in 1 (no score)") in page
    verdicts = table_cells(page, "verdicts")
    assert verdicts[0] == ["table", "model", "claim", "column", "paper Δ", "smallest decidable Δ",
                           "ours Δ (simultaneous 95%)", "verdict", "note"]
    v = cmp_["verdicts"]
    assert len(verdicts) == 1 + len(v)
    line = next(r for r in verdicts[1:] if r[:4] == ["table2", "NOVA", "GRPO < NOVA", "Aesthetic"])
    row = v[(v["table"] == "table2") & (v["a"] == "GRPO") & (v["column"] == "Aesthetic")].iloc[0]
    assert line[4:] == ["-0.01", f"{row['decidable']:.2f}", f"{row['ours_diff']:+.2f} [{row['lo']:+.2f}, {row['hi']:+.2f}]",
                        "contradicted", ""]


def test_landing_summary_has_both_tables(tmp_path):
    tabs, _, out = small_tables(tmp_path)
    frag = (out / "tables_summary.html").read_text()
    assert "<style" not in frag and "<html" not in frag            # a fragment with inline styles only
    t1 = table_cells(frag, "summary-table1")                      # transposed: a row per metric
    assert t1[0] == ["", "NOVA", "Harmon"] and t1[1] == ["", "NOVA", "+GRPO", "Ours", "Harmon", "+GRPO", "Ours"]
    hps = dict(zip(t1[1][1:], t1[2][1:4]))                        # NOVA's three rows: "ours [lo, hi] paper"
    assert t1[2][0] == "HPS" and hps["Ours"] == with_ci(tabs["intervals"], "table1", "NOVA", "Ours", "HPS") + " 29.35"
    assert [r[0] for r in t1[2:]] == list(tabs["table1"].columns[2:])
    t2 = table_cells(frag, "summary-table2")
    assert [r[0] for r in t2[1:]] == ["NOVA", "GRPO", "+Fix Decoder", "+MTE", "+Sim (Ours)"]
    assert "Ours &gt; +GRPO: holds in 11, inconclusive in 0, contradicted in 0 of 11 columns" in frag


def test_html_is_byte_identical_on_rerun(tmp_path):
    _, _, a = small_tables(tmp_path / "a")
    _, _, b = small_tables(tmp_path / "b")
    for name in ("tables.html", "tables_summary.html"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


# ------------------------------------------------------------------------------------------
# sample grids: big tiles, prompts printed
# ------------------------------------------------------------------------------------------
def test_base_model_grid_is_big_with_prompts(tmp_path):
    from PIL import Image
    prompts = ["a red circle", "a blue square left of a green circle", "two yellow triangles"]
    images = torch.zeros(3, 3, 32, 32)
    images[:, 0] = 1.0                                            # pure red tiles
    out = F.prompt_grid(images, prompts, tmp_path / "verify.png", label="NOVA (tiny-nova)")
    w, h = Image.open(out).size
    assert (w, h) == F.grid_size(1, 3, 32) and h >= F.GRID_MIN_CELL and w >= 3 * F.GRID_MIN_CELL
    px = Image.open(out).convert("RGB")
    # each tile is the image upscaled x4 (nearest): a solid 128-px red square
    x0, y0 = F.GRID_LABEL_W + F.GRID_PAD, F.GRID_TITLE_H + F.GRID_PAD
    for dx, dy in ((2, 2), (F.GRID_MIN_CELL - 3, F.GRID_MIN_CELL - 3)):
        assert px.getpixel((x0 + dx, y0 + dy))[0] > 240 and px.getpixel((x0 + dx, y0 + dy))[1] < 15
    # the prompts are drawn above the tiles: dark text pixels in the title band over each column
    band = px.crop((F.GRID_LABEL_W, 0, w, F.GRID_TITLE_H)).convert("L")
    cell = F.GRID_MIN_CELL + F.GRID_PAD
    for c in range(3):
        column = band.crop((c * cell, 0, (c + 1) * cell, F.GRID_TITLE_H))
        assert column.getextrema()[0] < 100, f"no prompt text over column {c}"
    with pytest.raises(ValueError, match="3 images for 2 prompts"):
        F.prompt_grid(images, prompts[:2], tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------
# the real report of a tiny finished workflow
# ------------------------------------------------------------------------------------------
def test_report_shows_the_tables_and_a_caption_per_figure(built):
    results, categories, landing = built["results"], built["categories"], built["workflow_desc"]
    repo = built["repo"]
    # no docutils error box anywhere
    for text in [landing, *(r["caption"] for r in results.values())]:
        assert "System Message" not in text and "system-message" not in text, text[:2000]
    # the landing page: Table 1's numbers (ours and the paper's) and Table 2's, and "best*" intact
    t1 = pd.read_csv(repo / "results/tables/table1.csv")
    intervals = pd.read_csv(repo / "results/tables/intervals.csv")
    cells = table_cells(landing, "summary-table1")
    nova_hps = cells[2][1:4]
    assert cells[2][0] == "HPS" and nova_hps[2] == with_ci(intervals, "table1", "NOVA", "Ours", "HPS") + " 29.35"
    assert nova_hps[2].startswith(f"{t1.loc[2, 'HPS']:.2f} [")
    assert "summary-table2" in landing and "best*" in landing
    # Tables: the HTML page (shown inline by the report) beside the CSV downloads
    assert any("results/tables/tables.html" in paths for paths in categories["Tables"].values())
    tables = results["results/tables/tables.html"]
    assert tables["mime_type"] == "text/html" and "Tables 1 and 2 beside the paper" in tables["caption"]
    import base64
    page = base64.b64decode(tables["data_uri"].split("base64,", 1)[1]).decode()
    assert page == (repo / "results/tables/tables.html").read_text()
    assert "table1.csv" in tables["caption"]
    # Figures: one subcategory per family, each figure's caption names its model (and reward)
    figs = {k: v for k, v in results.items() if k.startswith("results/figures/")}
    exp = experiment.load(repo / "config" / "small.yaml")
    assert sorted(Path(k).name for k in figs) == sorted(
        [f"dynamics_{m}_{r}.png" for m in exp.models for r in exp.trained_rewards]
        + [f"samples_{m}.png" for m in exp.models])
    assert set(categories["Figures"]) == {"Training dynamics", "Samples"}
    for path, res in figs.items():
        name = Path(path).stem
        if name.startswith("dynamics_"):
            _, model, reward = name.split("_")
            assert path in categories["Figures"]["Training dynamics"]
            assert f"Training dynamics of {exp.label(model)} ({model}) trained with the {reward} reward" \
                in res["caption"]
            assert res["labels"] == {"figure": "Training dynamics", "model": model, "reward": reward}
        else:
            model = name.split("_", 1)[1]
            assert path in categories["Figures"]["Samples"]
            assert f"Samples of {exp.label(model)} ({model})" in res["caption"] and "Fig. 6" in res["caption"]
    captions = {r["caption"] for r in figs.values()}
    assert len(captions) == len(figs)                            # no two figures share a caption
