"""The pipeline's last boxes: figures, MLflow sync, DVC versioning, and the demo driver."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from marpipe.experiment import Experiment
from marpipe.io.files import read_json, write_json


def make_figures(exp: Experiment, out_dir: str | Path, results: str | Path = "results") -> list[Path]:
    from marpipe.stages.figures import plot_dynamics, sample_grid
    out_dir, results = Path(out_dir), Path(results)
    made = []
    for model in exp.models:
        for reward in exp.trained_rewards:
            runs = {v: results / "runs" / model / reward / v / "metrics.jsonl" for v in exp.variants}
            runs = {v: p for v, p in runs.items() if p.exists()}
            if runs:
                made.append(plot_dynamics(runs, f"{exp.label(model)}, {reward} reward",
                                          out_dir / f"dynamics_{model}_{reward}.png"))
        suite = "preference"
        rows = {r.name: results / "images" / model / r.name / f"{suite}.npz" for r in exp.rows(model)
                if r.reward in (None, exp.cfg["evaluation"][suite]["reward"])}
        rows = {k: p for k, p in rows.items() if p.exists()}
        if rows:
            made.append(sample_grid(rows, out_dir / f"samples_{model}.png", n_prompts=exp.cfg["figures"]["grid_prompts"]))
    return made


def figure_subcategory(wildcards) -> str:
    """The Snakemake report's subcategory of a file in ``results/figures``, from the wildcards of the
    ``report(..., patterns=[...])`` pattern it matched (``dynamics_{model}_{reward}.png`` or
    ``samples_{model}.png``)."""
    return "Training dynamics" if "reward" in wildcards.keys() else "Samples"


def figure_labels(wildcards) -> dict[str, str]:
    """The report's columns for a figure (sample grids: the preference suite's rows)."""
    return {"figure": figure_subcategory(wildcards), "model": wildcards.model,
            "reward": wildcards.get("reward", "preference suite")}


def mlflow_sync(exp: Experiment, results: str | Path, out: str | Path, tracking_uri: str | None = None,
                state: str | Path = ".marpipe") -> dict:
    """Replay every training metrics file and score file into MLflow (only what is missing), and
    end as FINISHED the runs whose training (``summary.json``) or evaluation (score file) finished
    but that MLflow still shows otherwise.

    The server: ``tracking_uri``, else config ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
    else the pipeline's own server recorded in ``<state>/mlflow/uri``. One that does not answer
    fails within a few seconds (:class:`marpipe.io.tracking.MLflowUnreachable`)."""
    from marpipe.io.tracking import MLflowUnreachable, check_reachable, finish_run, sync_to_mlflow
    from marpipe.stages.evaluate import log_scores
    from marpipe.stages.session import recorded_uri
    from marpipe.stages.train import run_key, run_tags
    recorded = recorded_uri(state)
    uri = tracking_uri or exp.cfg["mlflow"].get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or recorded
    if not uri:
        raise MLflowUnreachable("no MLflow tracking server: start one (`workflow/scripts/mlflow-server.sh up` prints "
                           "its URI) and set MLFLOW_TRACKING_URI, config mlflow.tracking_uri or --tracking-uri")
    check_reachable(uri, hint=f"The pipeline's own server was last started at {recorded} ({state}/mlflow/uri)."
                    if recorded and recorded != uri else "")
    results = Path(results)
    sent = {"runs": 0, "scores": 0, "finished": 0}
    for metrics in sorted(results.glob("runs/*/*/*/metrics.jsonl")):
        model, reward, variant = metrics.parts[-4:-1]
        summary = metrics.with_name("summary.json")
        params = read_json(summary)["config"] if summary.exists() else {}
        sync_to_mlflow(metrics, run_key(model, f"{reward}-{variant}"), exp.cfg["experiment"],
                       params={"train": params, "model": model}, tags=run_tags(exp, model, reward, variant),
                       tracking_uri=uri, finished=summary.exists(),
                       end_time=int(summary.stat().st_mtime * 1000) if summary.exists() else None)
        sent["runs"] += 1
    for score in sorted(results.glob("scores/*/*/*.json")):
        record = read_json(score)
        if not log_scores(exp, record, tracking_uri=uri):
            raise RuntimeError(f"MLflow at {uri} did not take {score}; is the server up?")
        sent["scores"] += 1
        # a row only evaluation opened (a base row) is done once its scores are in
        sent["finished"] += finish_run(run_key(record["model"], record["row"]), exp.cfg["experiment"],
                                       tags=run_tags(exp, record["model"], record["reward"], record["variant"]),
                                       tracking_uri=uri, end_time=int(score.stat().st_mtime * 1000))
    write_json(out, {"tracking_uri": uri, "experiment": exp.cfg["experiment"],
                     "runs": sent["runs"], "scores": sent["scores"]})
    print(f"[marpipe] MLflow {uri}: {sent['runs']} training runs and {sent['scores']} score files in sync"
          + (f"; {sent['finished']} evaluation-only runs ended FINISHED" if sent["finished"] else ""))
    return sent


def _dvc(*args: str, cwd: Path) -> str:
    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def dvc_version(exp: Experiment, paths: list[str], out: str | Path, remote: str | None = None,
                repo: str | Path = ".") -> dict:
    """``dvc add`` the given folders and files (each gets a ``<path>.dvc`` pointer), then ``out``
    itself (the record of the pointers: ``<out>.dvc``), and push them all to the remote (config
    ``dvc.remote`` or ``$MARPIPE_DVC_REMOTE``, set as this clone's default in ``.dvc/config.local``).

    ``paths`` should cover every output of the DAG (``resources/`` and ``results/...``), so that a
    ``dvc pull`` into a fresh clone leaves no job with a missing output (see the README, "Audit with
    DVC"). The pointers are committed only together with the address of a remote that holds them
    (``dvc remote add -d marpipe <url>`` into ``.dvc/config``)."""
    repo = Path(repo).resolve()
    if not (repo / ".dvc").is_dir():
        _dvc("init", "--subdir" if not (repo / ".git").exists() else "-q", cwd=repo)
    remote = remote or exp.cfg["dvc"].get("remote") or os.environ.get("MARPIPE_DVC_REMOTE")
    push = bool(remote and exp.cfg["dvc"].get("push", True))
    present = [p for p in paths if Path(repo, p).exists()]
    _dvc("add", "-q", *present, cwd=repo)
    pointers = {p: read_pointer(Path(repo, f"{p}.dvc")) for p in present}
    info = {"remote": remote, "pushed": push, "pointers": pointers}
    write_json(out, info)
    versioned = list(present)
    out_abs = Path(out).resolve()
    if out_abs.is_relative_to(repo):       # the record too: a pulled clone has every output of the DAG
        versioned.append(out_abs.relative_to(repo).as_posix())
        _dvc("add", "-q", versioned[-1], cwd=repo)
    dvc_files = [f"{p}.dvc" for p in versioned]
    if push:
        Path(remote).mkdir(parents=True, exist_ok=True) if "://" not in remote else None
        _dvc("remote", "add", "--local", "-f", "-d", "marpipe", remote, cwd=repo)
        _dvc("push", "-q", *dvc_files, cwd=repo)
    print(f"[marpipe] DVC: {len(versioned)} paths versioned"
          + (f", pushed to {remote}; commit the pointers together with the remote's address (as others "
             f"reach it): dvc remote add -f -d marpipe {remote} && git add .dvc/config {' '.join(dvc_files)}"
             if push
             else " (no remote set: not pushed, so do not commit the pointers)"))
    return info


def read_pointer(path: Path) -> str:
    import yaml
    d = yaml.safe_load(path.read_text())
    return d["outs"][0]["md5"]


def run_demo(config: str, profile: str, cores: int, extra: list[str] | None = None) -> int:
    """``snakemake all`` on the small world, then print its tables."""
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    cmd = [exe, "--profile", profile, "--configfile", config, "--cores", str(cores), "all", *(extra or [])]
    print("[marpipe] " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    md = Path("results/tables/tables.md")
    if rc == 0 and md.exists():
        print(md.read_text())
    return rc
