"""``marpipe preflight``: what it reads from sinfo and from Snakemake's plan, the lines it prints, and the
paper run's booked GPU-hours. (The whole command runs on the CI cluster in the rehearsal, `.ci/run`.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from marpipe import preflight as P

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

SINFO = """cpu* (null) 2 64000
gpu gpu:h100:4(S:0-1) 3 512000
gpu gpu:h100:8(S:0-1) 1 1024000
debug gpu:2 1 24105
"""


def test_sinfo_gives_each_partitions_largest_node():
    assert P.parse_sinfo(SINFO) == {"cpu": {"gpus": 0, "mem_mb": 64000, "nodes": 2},
                                    "gpu": {"gpus": 8, "mem_mb": 1024000, "nodes": 4},
                                    "debug": {"gpus": 2, "mem_mb": 24105, "nodes": 1}}


def test_a_rule_asking_more_than_a_node_holds_fails_naming_it_and_the_fix():
    parts = P.parse_sinfo(SINFO)
    jobs = [P.Job("train", {}, {"slurm_partition": "debug", "gpu": "3", "mem_mb": "4000"}),
            P.Job("tables", {}, {"slurm_partition": "cpu", "mem_mb": "1000"}),
            P.Job("generate", {}, {"slurm_partition": "a100", "gpu": "1"})]
    lines = {c.detail.split(":")[0]: c for c in P.check_partitions(jobs, parts)}
    assert not lines["debug"].ok and "rule train asks 3 GPUs on one node; its largest node has 2" in lines["debug"].detail
    assert lines["debug"].fix == "set-resources train: gpu: 2 in the profile"
    assert lines["cpu"].ok and "ask no GPUs" in lines["cpu"].detail
    assert not lines["a100"].ok and "sinfo does not list" in lines["a100"].detail


def test_an_accepted_failure_says_so_and_does_not_fail_the_run():
    c = P.Check("gpu-nova", False, "sees no CUDA GPU", "ask for a GPU node", accepted="--accept-no-gpu")
    assert c.line().startswith("FAIL  gpu-nova") and c.line().endswith("[accepted: --accept-no-gpu]")
    assert "fix: ask for a GPU node" in P.Check("gpu-nova", False, "x", "ask for a GPU node").line()


def test_the_paper_runs_booked_gpu_hours_come_from_the_profile():
    """The plan of `snakemake --profile slurm all` (config.yaml): each GPU rule's jobs x GPUs x runtime limit."""
    r = subprocess.run([SNAKEMAKE, "all", "-n", "--profile", "slurm"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {rule: (n, g, booked) for rule, n, g, booked, _ in P.gpu_hours(P.parse_plan(r.stdout), ROOT / "no-run")}
    assert rows["train"] == (12, 3, 12 * 3 * 24.0)
    assert rows["warmup_head"] == (1, 1, 12.0)
    assert rows["generate"] == (16, 1, 16 * 12.0) and rows["evaluate"] == (16, 1, 16 * 8.0)
    assert rows["verify_base_model"] == (2, 1, 2.0)
    assert 1150 < sum(b for *_, b in rows.values()) < 1250          # ~1,200 GPU-hours booked


def test_measured_hours_come_from_an_earlier_runs_benchmarks(tmp_path):
    for i, secs in enumerate((3600.0, 7200.0)):
        f = tmp_path / "benchmarks" / "train" / f"run{i}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"s\th:m:s\tmax_rss\n{secs}\t1:00:00\t10\n")
    jobs = [P.Job("train", {}, {"gpu": "3", "runtime": "1440"})] * 2
    assert P.gpu_hours(jobs, tmp_path) == [("train", 2, 3, 144.0, 1.5 * 6)]
