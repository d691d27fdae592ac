"""Shared helpers for the infrastructure tests (real SLURM cluster, real MLflow server).

These tests use what `.ci/cluster.sh up` and `workflow/scripts/mlflow-server.sh up` started (`.ci/run`
always starts both). Where that infrastructure is absent they skip and say why; they
are never faked. Under ``MARPIPE_REQUIRE_INFRA=1`` (``.ci/run`` sets it) they FAIL instead, with
the same reason: CI cannot go green by skipping the only tests that reach the cluster and the server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("MARPIPE_STATE", "/tmp/marpipe-ci"))
REQUIRED = os.environ.get("MARPIPE_REQUIRE_INFRA") == "1"


def unavailable(reason: str):
    """Skip with ``reason``, or fail with it where the infrastructure is required (CI)."""
    if REQUIRED:
        pytest.fail(f"infrastructure required (MARPIPE_REQUIRE_INFRA=1) but unusable: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "infra: needs the CI infrastructure (.ci/cluster.sh, workflow/scripts/mlflow-server.sh); "
        "skipped with a reason when it is not up",
    )


def _run(cmd: list[str], timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Name of the node of a responding SLURM cluster; skips if there is none."""
    if shutil.which("sinfo") is None:
        unavailable("SLURM is not installed (no `sinfo` on PATH): run `.ci/cluster.sh up`")
    try:
        ping = _run(["scontrol", "ping"])
        nodes = _run(["sinfo", "-h", "-N", "-o", "%N %T"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"SLURM cluster is not responding ({exc}): run `.ci/cluster.sh up`")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        unavailable(
            "SLURM controller is not responding (`scontrol ping`: "
            f"{(ping.stdout + ping.stderr).strip().splitlines()[-1:]!r}): "
            "run `.ci/cluster.sh up`"
        )
    ready = [
        line.split()[0]
        for line in nodes.stdout.splitlines()
        if line.split()[1].rstrip("*~#") in {"idle", "mixed", "allocated", "completing"}
    ]
    if not ready:
        unavailable(f"no SLURM node is usable (sinfo: {nodes.stdout.strip()!r})")
    return ready[0]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    """URI of a running MLflow tracking server; skips if there is none.

    Taken from MLFLOW_TRACKING_URI when it is an http(s) URI, else from the file
    that `workflow/scripts/mlflow-server.sh up` writes ($MARPIPE_STATE/mlflow/uri).
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        unavailable("mlflow is not installed (extra `pipeline`)")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith("http"):
        uri_file = STATE / "mlflow" / "uri"
        if not uri_file.is_file():
            unavailable(f"no MLflow server: {uri_file} missing; run `workflow/scripts/mlflow-server.sh up`")
        uri = uri_file.read_text().strip()
    if not _healthy(uri):
        unavailable(f"MLflow server at {uri} does not answer /health: run `workflow/scripts/mlflow-server.sh up`")
    return uri
