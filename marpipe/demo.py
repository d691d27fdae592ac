"""The demo runner (``marpipe demo``, ``make demo``/``make study``): ``snakemake all`` on the small world in
a working folder of its own, then the tables and each stage's time; the rehearsal reuses the folder
and the timing."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path


def stage_times(benchmarks: str | Path) -> list[tuple[str, int, float]]:
    """(rule, jobs, summed wall seconds) per rule from Snakemake's ``benchmarks/`` files (one
    ``<rule>/...tsv`` or ``<rule>.tsv`` per job), in descending time."""
    root, per_rule = Path(benchmarks), {}
    for tsv in root.rglob("*.tsv"):
        rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        lines = tsv.read_text().splitlines()
        if len(lines) >= 2:
            jobs, secs = per_rule.get(rule, (0, 0.0))
            per_rule[rule] = (jobs + 1, secs + float(lines[1].split("\t")[0]))
    return sorted(((r, j, t) for r, (j, t) in per_rule.items()), key=lambda x: -x[2])


def prepare_workdir(work: Path) -> Path:
    """A run's working folder (``--directory``: study/, rehearsal/), its own git repository: it lies
    in this repository's ignored folders, where ``dvc init --subdir`` (the ``dvc_push`` rule) refuses
    a ``.dvc`` that git ignores; in a repository of its own DVC keeps its pointers there, as in a clone."""
    work.mkdir(parents=True, exist_ok=True)
    if not (work / ".git").exists():
        subprocess.run(["git", "init", "-q", str(work)], check=True)
    return work


def run_demo(config: str | list[str], profile: str, cores: int, extra: list[str] | None = None,
             directory: str | None = None) -> int:
    """``snakemake all`` on the small world (``config``: one file, or several merged in order; ``directory``:
    the working folder of the run, default here), then print its tables and the time of each stage."""
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    configs = [config] if isinstance(config, str) else list(config)
    where = ["--directory", str(prepare_workdir(Path(directory)))] if directory else []
    cmd = [exe, "--profile", profile, "--configfile", *configs, "--cores", str(cores), *where, "all", *(extra or [])]
    print("[marpipe] " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    rc = subprocess.call(cmd)
    wall = time.monotonic() - t0
    run = Path(directory or ".")
    md = run / "results/tables/tables.md"
    if rc == 0 and md.exists():
        print(md.read_text())
    if rc == 0:
        times = stage_times(run / "benchmarks")
        print(f"[marpipe] wall time {wall / 60:.1f} min on {cores} cores; per stage (jobs, summed job time):")
        for rule, jobs, secs in times:
            print(f"  {rule:<20} {jobs:>4} jobs {secs:>8.0f} s")
    return rc
