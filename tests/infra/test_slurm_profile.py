"""Proof that the `slurm/` Snakemake profile really runs jobs through SLURM.

A throwaway workflow (tests/infra/fixtures/Snakefile) runs with
`--profile <repo>/slurm --directory <tmp>`. Each job writes the SLURM job id,
partition and CUDA_VISIBLE_DEVICES it saw; the test then asks the controller
(`squeue --states=all`, jobs stay listed for MinJobAge=300 s) about every id.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.infra, pytest.mark.timeout(900)]

FIXTURE = REPO / "tests" / "infra" / "fixtures" / "Snakefile"
# rule -> (partition the profile must send it to, must it see a GPU)
EXPECTED = {
    "prompts": ("cpu", False),
    "train": ("gpu", True),
    "tables": ("cpu", False),
}


def _snakemake(*args: str, cwd, timeout: float) -> subprocess.CompletedProcess:
    pytest.importorskip(
        "snakemake_executor_plugin_slurm",
        reason="snakemake-executor-plugin-slurm is not installed (extra `pipeline`)",
    )
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _record(path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in path.read_text().split())


def test_profile_is_found_from_repo_root(tmp_path):
    """`--profile slurm-ci` (relative) resolves to the repo's folder when run from the root."""
    res = _snakemake(
        "--profile", "slurm-ci", "--snakefile", str(FIXTURE),
        "--directory", str(tmp_path), "--dry-run", "all",
        cwd=REPO, timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"Using profile {REPO / 'slurm-ci'}" in out or "Using profile slurm-ci" in out, out
    # the profile's set-resources reach the jobs
    train = out[out.index("rule train:"):]
    assert "slurm_partition=gpu" in train and "gpu=1" in train, out


def test_workflow_runs_through_sbatch(slurm_cluster, tmp_path):
    res = _snakemake(
        "--profile", str(REPO / "slurm-ci"), "--snakefile", str(FIXTURE),
        "--directory", str(tmp_path), "all",
        cwd=tmp_path, timeout=840,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    assert f"Using profile {REPO / 'slurm-ci'}" in log

    job_ids = {}
    for rule, (partition, wants_gpu) in EXPECTED.items():
        out = tmp_path / "out" / f"{rule}.txt"
        assert out.is_file(), f"{out} missing\n{log[-4000:]}"
        rec = _record(out)
        assert re.fullmatch(r"\d+", rec["job"]), f"{rule}: not run by SLURM: {rec}"
        assert rec["partition"] == partition, f"{rule}: {rec}"
        if wants_gpu:
            assert rec["cuda"] not in ("", "unset"), f"{rule}: no CUDA_VISIBLE_DEVICES: {rec}"
        else:
            assert rec["cuda"] == "unset", f"{rule}: got a GPU it did not ask for: {rec}"
        assert f"submitted with SLURM jobid {rec['job']}" in log, rec
        job_ids[rule] = rec["job"]
    assert len(set(job_ids.values())) == len(job_ids), job_ids

    # The controller knows these jobs, as completed, in the expected partitions.
    q = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", "%i %P %T", "-j", ",".join(job_ids.values())],
        capture_output=True, text=True, timeout=30,
    )
    seen = {line.split()[0]: line.split()[1:] for line in q.stdout.splitlines()}
    for rule, jid in job_ids.items():
        assert jid in seen, f"job {jid} ({rule}) unknown to squeue: {q.stdout}{q.stderr}"
        assert seen[jid] == [EXPECTED[rule][0], "COMPLETED"], (rule, seen[jid])
