"""The pipeline's own MLflow tracking server, shared by every job (never one SQLite file written by many
jobs): started by the Snakefile's ``onstart`` where no server is configured, stopped at the end. The
server script, ``mlflow-server.sh`` beside this module, keeps its state and port in ``<state>/mlflow``."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

SERVER_SCRIPT = Path(__file__).resolve().with_name("mlflow-server.sh")
_started: list[dict] = []


def ensure_tracking_server(configured: str | None, state: str | Path = ".marpipe", host: str | None = None) -> str:
    """Config ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else start a server for this run.

    A started server binds ``host`` (config ``mlflow.host``; default: this host's name, which the
    compute nodes reach) and, unless that is a loopback address, runs MLflow's basic-auth app: its
    credentials are exported as ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` with the URI.
    The URI is exported so that every job (local, or SLURM with ``--export=ALL``) logs to it. The
    started server keeps its port across restarts (``<state>/mlflow/port``, see
    ``mlflow-server.sh``), so the URI that jobs and ``MLFLOW_TRACKING_URI`` hold
    stays valid. A given URI that does not answer is only warned about: live logging is best
    effort, and ``marpipe mlflow-sync`` (the ``mlflow_sync`` rule) sends everything later.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        env = {**os.environ, "MARPIPE_STATE": str(Path(state).resolve()),
               "MARPIPE_MLFLOW_HOST": host or socket.gethostname()}
        uri = subprocess.run(["bash", str(SERVER_SCRIPT), "up"], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        _started.append(env)
        password = Path(state) / "mlflow" / "auth" / "password"
        if password.is_file():
            os.environ["MLFLOW_TRACKING_USERNAME"] = "marpipe"
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password.read_text().strip()
        print(f"[marpipe] MLflow: started a tracking server at {uri} (state in {state}/mlflow)", file=sys.stderr)
    else:
        from marpipe.io.tracking import MLflowUnreachable, check_reachable
        try:
            check_reachable(uri)
        except MLflowUnreachable as e:
            print(f"[marpipe] WARNING: {e} Jobs keep their metrics in metrics.jsonl; the mlflow_sync rule "
                  f"sends them once the server answers.", file=sys.stderr)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def recorded_uri(state: str | Path = ".marpipe") -> str | None:
    """The URI of the pipeline's own server as last started (``<state>/mlflow/uri``), if any."""
    f = Path(state) / "mlflow" / "uri"
    return (f.read_text().strip() or None) if f.is_file() else None


def stop_tracking_server() -> None:
    """Stop the server :func:`ensure_tracking_server` started (its data stays in the state folder)."""
    while _started:
        subprocess.run(["bash", str(SERVER_SCRIPT), "down"], env=_started.pop(), capture_output=True)
