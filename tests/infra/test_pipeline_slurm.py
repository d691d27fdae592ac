"""The small-world DAG end to end through the real SLURM cluster, MLflow server and DVC remote.

One run of the whole pipeline (shrunk step counts, same DAG and rules), in a fresh git
repository made from this working tree; then the README's commands on it as written there:
the report, the tables rebuilt from MLflow alone, and `dvc pull` (the tables' pointers, then
all of them) into a fresh clone restoring byte-identical artifacts.
"""
import base64
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tests.pipeline.test_audit import readme_audit_blocks, readme_command
from tests.pipeline_config import ROOT, write_shrunk_config
from tests.stages.test_report import report_data

pytestmark = pytest.mark.slow                       # the whole small world through SLURM: minutes

BIN = Path(sys.executable).parent
# every output of the DAG: what dvc_push versions (tests/pipeline/test_audit.py checks the list is complete)
ARTIFACTS = ["resources", "results/verify", "results/tables", "results/figures", "results/scores", "results/images",
             "results/selected", "results/runs", "results/mlflow.json", "results/dvc.json"]
TABLES = ["results/scores", "results/tables"]      # what the tables are built from, and the tables


def readme(cmd: str) -> str:
    """A README command as this module runs it: the small world at CI sizes (config/ci.yaml for
    config/small.yaml); nothing else of it changes but the placeholders <url> and <repo>, which the
    audit test fills in."""
    return cmd.replace("config/small.yaml", "config/ci.yaml")


def sh(cmd, cwd, env=None, timeout=3600, check=True):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       shell=isinstance(cmd, str))
    if check and r.returncode:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def tree_hashes(root: Path, folders) -> dict[str, str]:
    out = {}
    for folder in folders:
        for p in [root / folder] if (root / folder).is_file() else sorted((root / folder).rglob("*")):
            if p.is_file():
                out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def slurm_job_ids() -> set[str]:
    """The ids of the jobs the controller knows (finished ones only until MinJobAge purges them)."""
    r = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(r.stdout.split())


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, slurm_cluster, mlflow_server):
    """Copy the working tree into a new git repo and run `snakemake --profile slurm-ci all` there."""
    base = tmp_path_factory.mktemp("e2e")
    repo, remote = base / "repo", base / "dvc-remote"
    files = sh(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    write_shrunk_config(repo / "config" / "ci.yaml")
    sh("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm init", repo)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": mlflow_server,
           "MARPIPE_DVC_REMOTE": str(remote), "OMP_NUM_THREADS": "1"}
    run = sh(["snakemake", "all", "--profile", "slurm-ci", "--configfile", "config/ci.yaml"], repo, env, check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    return {"repo": repo, "remote": remote, "env": env, "log": run.stdout + run.stderr}


def test_tables_have_the_papers_rows_and_columns(pipeline_run):
    t1 = pd.read_csv(pipeline_run["repo"] / "results/tables/table1.csv")
    assert list(t1.columns) == ["model", "base", "HPS", "ImageReward", "PickScore", "Aesthetic", "Color", "Shape",
                                "Texture", "2d-spatial", "3d-spatial", "Numeracy", "Complex"]
    assert list(t1["model"]) == ["NOVA", "+GRPO", "Ours", "Harmon", "+GRPO", "Ours"]
    assert t1.drop(columns=["model", "base"]).notna().all().all()
    t2 = pd.read_csv(pipeline_run["repo"] / "results/tables/table2.csv")
    assert list(t2["row"]) == ["NOVA", "GRPO", "+Fix Decoder", "+MTE", "+Sim (Ours)"]
    assert list(t2.columns) == ["row", "HPS", "Aesthetic", "Shape", "Texture", "2d-spatial", "checkpoint"]
    assert t2["checkpoint"].str.startswith("best*").sum() == 2 and t2["checkpoint"].str.startswith("fixed").sum() == 2


def test_jobs_went_through_slurm(pipeline_run):
    """Every rule but the light local ones (tables, figures, MLflow sync, DVC) was an sbatch job."""
    submitted = set(re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+)/",
                               pipeline_run["log"]))
    assert submitted == {"download_base_model", "verify_base_model", "download_weights", "prompts", "warmup_head",
                         "train", "select_checkpoint", "check_scorer", "generate", "evaluate"}


def test_readme_report_holds_the_tables(pipeline_run):
    """The README's report command after the run: the file it names, self-contained HTML (a zip for a
    .zip name), embeds Tables 1-2 byte for byte."""
    repo, env = pipeline_run["repo"], pipeline_run["env"]
    cmd = readme(readme_command("report"))
    argv = shlex.split(cmd)
    report = repo / argv[argv.index("--report") + 1]
    sh(cmd, repo, env)
    tables = ["results/tables/table1.csv", "results/tables/table2.csv", "results/tables/tables.html"]
    if report.suffix == ".zip":
        with zipfile.ZipFile(report) as z:
            for t in tables:
                member = next(n for n in z.namelist() if n.endswith("/" + t))
                assert z.read(member) == (repo / t).read_bytes(), t
    else:
        assert report.read_text().lstrip().lower().startswith("<!doctype html")
        results = report_data(report)["results"]
        for t in tables:
            embedded = base64.b64decode(results[t]["data_uri"].split("base64,", 1)[1])
            assert embedded == (repo / t).read_bytes(), t


def test_mlflow_alone_rebuilds_the_tables(pipeline_run):
    """The README's `marpipe tables ... --from-mlflow`: identical to the tables from the score files."""
    repo, env = pipeline_run["repo"], pipeline_run["env"]
    cmd = readme(readme_command("tables_from_mlflow"))
    argv = shlex.split(cmd)
    out = repo / argv[argv.index("--out-dir") + 1]
    assert not out.exists()
    sh(cmd, repo, env)
    for name in ("table1.csv", "table2.csv"):
        assert (out / name).read_bytes() == (repo / "results/tables" / name).read_bytes(), name


def test_dvc_pull_in_a_fresh_clone_restores_identical_artifacts(pipeline_run, tmp_path):
    """The README's "Audit with DVC" commands as written there (config/ci.yaml for config/small.yaml):
    the pointers committed with the remote in .dvc/config, then in a fresh clone the tables' `dvc pull`
    (results/scores and results/tables, nothing else), the whole `dvc pull` (every output of the DAG,
    byte-identical), the tables rebuilt identically from the pulled scores, `snakemake --touch`, and a
    dry run that schedules nothing."""
    repo, remote = pipeline_run["repo"], pipeline_run["remote"]
    assert remote.is_dir() and any(remote.rglob("*"))
    publish, audit = readme_audit_blocks()
    # an auditor's environment: the installed venv first on PATH, no MLflow server, no remote override
    env = {k: v for k, v in pipeline_run["env"].items() if k not in ("MLFLOW_TRACKING_URI", "MARPIPE_DVC_REMOTE")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subst = {"<url>": str(remote), "<repo>": str(repo)}

    def run(cmd, cwd):
        for old, new in subst.items():
            cmd = cmd.replace(old, new)
        return sh(readme(cmd), cwd, env)

    for cmd in publish:
        run(cmd, repo)
    assert not sh(["git", "status", "--porcelain", "--", "*.dvc", ".dvc/config"], repo, env).stdout
    assert audit[0].startswith("git clone ") and audit[0].endswith("&& cd marpipe-audit")
    run(audit[0].split(" && cd ")[0], tmp_path)
    clone = tmp_path / "marpipe-audit"
    run(readme_command("partial_pull"), clone)
    assert tree_hashes(clone, ARTIFACTS) == tree_hashes(repo, TABLES)
    for cmd in audit:
        if cmd.startswith(("marpipe tables ", "diff -r ")):
            run(cmd, clone)                          # the tables alone need nothing more
    out = {}
    for cmd in audit[1:]:
        if cmd == "make install" or cmd.startswith("source "):
            continue                                 # installed already: env's PATH starts with BIN
        out[cmd] = run(cmd, clone)                   # each must succeed (diff -r: identical tables)
    assert tree_hashes(clone, ARTIFACTS) == tree_hashes(repo, ARTIFACTS)
    touch = next(r for c, r in out.items() if "--touch" in c)
    assert "not touched" not in touch.stdout + touch.stderr          # no output of the DAG is missing
    dry = next(r for c, r in out.items() if c.startswith("snakemake all -n"))
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-4000:] + dry.stderr[-4000:]


def test_bad_config_submits_nothing(pipeline_run, tmp_path):
    import yaml
    repo, env = pipeline_run["repo"], pipeline_run["env"]
    cfg = yaml.safe_load((repo / "config" / "ci.yaml").read_text())
    cfg["train"]["top_k"] = 1.5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = slurm_job_ids()
    r = sh(["snakemake", "all", "--profile", "slurm-ci", "--configfile", str(tmp_path / "bad.yaml")], repo, env,
           check=False)
    assert r.returncode != 0
    assert "config.train.top_k = 1.5: 1.5 is greater than the maximum of 1" in r.stdout + r.stderr
    # no job id the controller did not know before (finished jobs may age out meanwhile: no count)
    assert not slurm_job_ids() - before
