"""A finished run, auditable from elsewhere: every training metrics file and score file replayed into
MLflow (:func:`mlflow_sync`), and every output of the DAG versioned with DVC and pushed to its remote
(:func:`dvc_version`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from marpipe import layout
from marpipe.experiment import Experiment, row_id
from marpipe.io.files import read_json, write_json


def mlflow_sync(exp: Experiment, results: str | Path, out: str | Path, tracking_uri: str | None = None,
                state: str | Path = ".marpipe") -> dict:
    """Replay every training metrics file and score file into MLflow (only the points it does not
    show yet, :mod:`marpipe.io.tracking`), and end as FINISHED the runs whose training
    (``summary.json``) or evaluation (score file) finished but that MLflow still shows otherwise.

    The server: ``tracking_uri``, else config ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
    else the pipeline's own server recorded in ``<state>/mlflow/uri``. One that does not answer
    fails within a few seconds (:class:`marpipe.io.tracking.MLflowUnreachable`)."""
    from marpipe.io.tracking import MLflowUnreachable, check_reachable, finish_run, sync_to_mlflow
    from marpipe.io.tracking_server import recorded_uri
    from marpipe.stages.evaluate import log_scores
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
    for metrics in sorted(results.glob(layout.RUN_METRICS_GLOB)):
        model, reward, variant, seed = layout.run_of(metrics, results)
        summary = metrics.with_name("summary.json")
        params = read_json(summary)["config"] if summary.exists() else {}
        sync_to_mlflow(metrics, run_key(model, row_id(reward, variant, seed)), exp.cfg["experiment"],
                       params={"train": params, "model": model}, tags=run_tags(exp, model, reward, variant, seed),
                       tracking_uri=uri, finished=summary.exists(),
                       end_time=int(summary.stat().st_mtime * 1000) if summary.exists() else None)
        sent["runs"] += 1
    for score in sorted(results.glob("scores/**/*.json")):
        record = read_json(score)
        if not log_scores(exp, record, tracking_uri=uri):
            raise RuntimeError(f"MLflow at {uri} did not take {score}; is the server up?")
        sent["scores"] += 1
        # a row only evaluation opened (a base row) is done once its scores are in
        seed = record.get("seed")
        sent["finished"] += finish_run(run_key(record["model"], row_id(record["reward"], record["variant"], seed)),
                                       exp.cfg["experiment"],
                                       tags=run_tags(exp, record["model"], record["reward"], record["variant"], seed),
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
