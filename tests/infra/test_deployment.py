"""Where the jobs run: each model family in the deployment the profile names (the project's venvs by
default), the conda alternative valid where Snakemake builds it, and a run that cannot find an
environment stopping before any job."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
REHEARSAL = str(ROOT / "config" / "rehearsal.yaml")


def shell_commands(*args, cwd=ROOT) -> dict[str, list[str]]:
    """{rule: [shell command, ...]} of a dry run."""
    r = subprocess.run([SNAKEMAKE, "all", "-n", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", r.stdout):
        m = re.match(r"(?:local)?rule (\w+):", block)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if m and cmd:
            out.setdefault(m.group(1), []).append(cmd.group(1))
    return out


def test_the_cluster_profile_runs_each_model_family_in_its_venv(tmp_path):
    cmds = shell_commands("--profile", "slurm", "--configfile", REHEARSAL, "--directory", str(tmp_path))
    nova, harmon = (str(ROOT / f".venv-{f}" / "bin" / "python") for f in ("nova", "harmon"))
    assert any(c.startswith(f"{nova} -m marpipe fetch-model nova ") for c in cmds["download_base_model"])
    assert any(c.startswith(f"{harmon} -m marpipe verify-model harmon ") for c in cmds["verify_base_model"])
    assert all(c.startswith(f"{harmon} -m marpipe warmup ") for c in cmds["warmup_head"])
    # training books 3 GPUs on one node: torch's launcher, one DDP rank per GPU, in the family's interpreter
    assert {c.split(" train ")[0] for c in cmds["train"]} == {
        f"{py} -m torch.distributed.run --standalone --nproc_per_node=3 -m marpipe" for py in (nova, harmon)}
    assert {c.split(" generate ")[0] for c in cmds["generate"]} == {f"{nova} -m marpipe", f"{harmon} -m marpipe"}
    # the other rules: marpipe of the environment Snakemake runs in
    for rule in ("download_weights", "prompts", "evaluate", "select_checkpoint", "tables"):
        assert all(c.startswith("marpipe ") for c in cmds[rule]), rule


def test_a_profile_points_a_family_at_another_environment(tmp_path):
    prof = tmp_path / "site"
    prof.mkdir()
    cfg = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    cfg["config"] = {"deployment": {"nova": "/opt/envs/nova"}}
    (prof / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmds = shell_commands("--profile", str(prof), "--configfile", REHEARSAL, "--directory", str(tmp_path / "w"))
    assert all(c.startswith("/opt/envs/nova/bin/python -m marpipe") for c in cmds["download_base_model"]
               if " nova " in c)
    assert any(c.startswith(str(ROOT / ".venv-harmon")) for c in cmds["download_base_model"])   # the default


def test_a_run_whose_environment_is_missing_stops_before_any_job(tmp_path):
    prof = tmp_path / "site"
    prof.mkdir()
    (prof / "config.yaml").write_text(yaml.safe_dump({"cores": 1, "config": {"deployment": {"nova": "no/such/venv"}}}))
    work = tmp_path / "w"
    r = subprocess.run([SNAKEMAKE, "all", "--profile", str(prof), "--configfile", REHEARSAL, "--directory", str(work)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}"})
    assert r.returncode != 0
    assert "deployment.nova = no/such/venv" in r.stderr and "make install official-venvs" in r.stderr, r.stderr[-2000:]
    assert not (work / "resources").exists() and not (work / "logs").exists()


# --- the conda alternative, as Snakemake builds it --------------------------------------------------------
def _pip_lines(env_file: Path) -> list[str]:
    deps = yaml.safe_load(env_file.read_text())["dependencies"]
    return next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)


@pytest.mark.parametrize("name", ["pipeline", "nova", "harmon"])
def test_conda_env_files_resolve_from_snakemakes_copy(name, tmp_path, monkeypatch):
    """Snakemake copies an env file to .snakemake/conda/<hash>.yaml and conda's pip installer runs
    ``pip install -r <a file beside it>`` from there: every path the pip lines name must resolve in that
    layout (pip's own parser, with MARPIPE_ROOT as the workflow sets it)."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements
    src = ROOT / "envs" / f"{name}.yaml"
    conda = tmp_path / "work" / ".snakemake" / "conda"
    conda.mkdir(parents=True)
    copy = conda / f"{hashlib.md5(src.read_bytes()).hexdigest()}.yaml"
    shutil.copy(src, copy)
    req = conda / "condaenv.requirements.txt"
    req.write_text("\n".join(_pip_lines(copy)) + "\n")
    monkeypatch.chdir(conda)
    monkeypatch.setenv("MARPIPE_ROOT", str(ROOT))
    parsed = list(parse_requirements(str(req), session=PipSession()))
    assert parsed, "no requirements"
    for r in parsed:
        if r.is_editable:
            folder = Path(re.sub(r"\[.*\]$", "", r.requirement))
            assert (folder / "pyproject.toml").is_file(), r.requirement
    names = {re.split(r"[=<>\[ ]", r.requirement)[0].lower() for r in parsed if not r.is_editable}
    if name == "nova":
        assert {"transformers", "diffusers", "torch"} <= names
    if name == "harmon":
        assert {"einops", "timm", "transformers"} <= names

