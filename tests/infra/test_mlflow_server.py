"""The MLflow server from `workflow/scripts/mlflow-server.sh` takes runs from concurrent processes.

SLURM jobs log to one tracking server at the same time; two processes here log
params, metric series and an artifact at once, then `mlflow.search_runs` must
see both runs complete.

Pitfall pinned here (MLflow 3.17.2 and 3.18.0): when two processes call
`mlflow.set_experiment(name)` for a NEW name at the same moment, the loser gets
RESOURCE_ALREADY_EXISTS and set_experiment returns the experiment WITHOUT making
it active, so a bare `mlflow.start_run()` lands in "Default". Jobs must pass
`experiment_id=` (as below) or the experiment must exist before jobs start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

pytestmark = [pytest.mark.infra, pytest.mark.timeout(300)]

WRITER = textwrap.dedent(
    """
    import sys, mlflow
    experiment, worker = sys.argv[1], int(sys.argv[2])
    exp = mlflow.set_experiment(experiment)  # may not activate it (race, see above)
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=f"worker-{worker}"):
        mlflow.log_params({"worker": worker, "beta": 0.01})
        for step in range(20):
            mlflow.log_metric("reward", worker + step / 100, step=step)
        mlflow.log_text(f"hello from {worker}", "notes/hello.txt")
    """
)


def test_two_processes_log_concurrently(mlflow_server):
    import mlflow

    experiment = f"infra-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, experiment, str(w)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for w in (1, 2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=[experiment])
    assert len(runs) == 2, runs
    assert set(runs["params.worker"]) == {"1", "2"}
    assert set(runs["status"]) == {"FINISHED"}
    by_worker = runs.set_index("params.worker")
    assert by_worker.loc["1", "metrics.reward"] == pytest.approx(1.19)
    assert by_worker.loc["2", "metrics.reward"] == pytest.approx(2.19)

    client = mlflow.MlflowClient(mlflow_server)
    for run_id, worker in zip(runs["run_id"], runs["params.worker"]):
        assert len(client.get_metric_history(run_id, "reward")) == 20
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/notes/hello.txt")
        assert text == f"hello from {worker}"


def test_the_pipelines_server_off_loopback_asks_for_its_password(tmp_path):
    """The pipeline binds its server to this host's name (the compute nodes reach it), and off loopback
    with MLflow's basic auth: a client without the credentials the pipeline exports gets 401."""
    import socket

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from marpipe.io import tracking_server
    script = tracking_server.SERVER_SCRIPT
    env = {**os.environ, "MARPIPE_STATE": str(tmp_path), "MARPIPE_MLFLOW_AUTH": "on",
           "MARPIPE_MLFLOW_HOST": socket.gethostname()}
    env.pop("MLFLOW_TRACKING_URI", None)
    with socket.socket() as s:                     # a free port, not the CI server's
        s.bind(("127.0.0.1", 0))
        env["MARPIPE_MLFLOW_PORT"] = str(s.getsockname()[1])
    uri = subprocess.run(["bash", str(script), "up"], env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        assert uri == f"http://{socket.gethostname()}:{env['MARPIPE_MLFLOW_PORT']}"
        password = (tmp_path / "mlflow" / "auth" / "password")
        assert password.stat().st_mode & 0o077 == 0
        saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        try:
            with pytest.raises(MlflowException, match="401"):
                MlflowClient(uri).search_experiments()
            os.environ.update(MLFLOW_TRACKING_USERNAME="marpipe", MLFLOW_TRACKING_PASSWORD=password.read_text().strip())
            client = MlflowClient(uri)
            run = client.create_run(client.create_experiment(f"auth-{uuid.uuid4().hex[:8]}"))
            client.log_metric(run.info.run_id, "reward", 0.5, step=1)
            assert client.get_metric_history(run.info.run_id, "reward")[0].value == 0.5
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
    finally:
        subprocess.run(["bash", str(script), "down"], env=env, capture_output=True)
