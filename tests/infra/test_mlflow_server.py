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
