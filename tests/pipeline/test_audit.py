"""The audit path (README, "Audit with DVC"): committed DVC pointers always come with the remote
that holds them, `dvc_push` versions every output of the DAG (so a pulled clone can be marked up
to date), and its pointers restore the files in a fresh clone. Fast: no SLURM, no training.

The end to end version (a real run, `dvc pull`, `snakemake --touch`, a dry run that schedules
nothing) is tests/infra/test_pipeline_slurm.py::test_dvc_pull_in_a_fresh_clone_restores_identical_artifacts,
which runs the README's commands as `readme_audit_blocks` and `readme_command` return them.
"""
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from configobj import ConfigObj

from tests.pipeline_config import ROOT

BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DVC = str(BIN / "dvc")


def readme_audit_blocks(readme: Path = ROOT / "README.md") -> tuple[list[str], list[str]]:
    """The README's "Audit with DVC" section: (publish commands, audit commands), one command a
    line, comments stripped. The first bash block commits the pointers with the remote, the
    second is what an auditor runs from a fresh clone."""
    text = readme.read_text()
    section = text.split("\n## Audit with DVC\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "README 'Audit with DVC': expected two bash blocks (publish, audit)"
    return bash_lines(blocks[0]), bash_lines(blocks[1])


def bash_lines(block: str) -> list[str]:
    """The commands of a bash block, one a line, comments stripped."""
    return [ln.split("  #", 1)[0].strip() for ln in block.splitlines() if ln.strip()]


#: the README's single commands that tests/infra/test_pipeline_slurm.py runs as written, by how each begins
README_COMMANDS = {
    "report": "snakemake --report ",
    "tables_from_mlflow": "marpipe tables --config config/small.yaml --from-mlflow ",
    "partial_pull": "dvc pull results/",
}


def readme_command(what: str, readme: Path = ROOT / "README.md") -> str:
    """The one README command that begins as README_COMMANDS[what] says: a line of a bash block (its
    comment stripped) or a code span of the prose (a line break in it read as a blank)."""
    text = readme.read_text()
    lines = sum((bash_lines(b) for b in re.findall(r"```bash\n(.*?)```", text, re.S)), [])
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", prose)]
    found = {c for c in lines + spans if c.startswith(README_COMMANDS[what])}
    assert len(found) == 1, f"README: expected one command beginning {README_COMMANDS[what]!r}, found {found}"
    return found.pop()


def git(*args, cwd=ROOT, check=True):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)


def default_remote(config_text: str) -> str | None:
    """The URL of the default remote a DVC config file names (None: none, or not defined)."""
    cfg = ConfigObj(io.StringIO(config_text).read().splitlines())
    name = cfg.get("core", {}).get("remote")
    return cfg.get(f'remote "{name}"', {}).get("url") if name else None


def test_tracked_pointers_come_with_the_default_remote_in_the_committed_config():
    if git("rev-parse", "--is-inside-work-tree", check=False).returncode:
        pytest.skip("not a git checkout")
    pointers = git("ls-files", "--", "*.dvc").stdout.split()
    staged = git("show", ":.dvc/config", check=False)      # the committed (index) version, not config.local
    remote = default_remote(staged.stdout) if staged.returncode == 0 else None
    assert not pointers or remote, (
        f"{pointers} are tracked but the committed .dvc/config names no default remote that holds their "
        f"files: commit them with `dvc remote add -f -d marpipe <url>` (README, 'Audit with DVC'), or "
        f"`git rm --cached` them")


def test_default_remote_reads_dvcs_config_format():
    assert default_remote("[core]\n    autostage = false\n") is None
    assert default_remote("[core]\n    remote = marpipe\n['remote \"marpipe\"']\n    url = s3://b/x\n") == "s3://b/x"
    assert default_remote("[core]\n    remote = gone\n") is None


@pytest.mark.parametrize("configfile", ["config/small.yaml", "config.yaml"])
def test_dvc_push_versions_every_output_of_the_dag(configfile):
    """A job whose output a pulled clone lacks runs again, and so does every job after it."""
    r = subprocess.run([SNAKEMAKE, "all", "-n", "--forceall", "-p", "--configfile", configfile], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    outputs = {f for line in re.findall(r"^    output: (.*)$", r.stdout, re.M) for f in line.split(", ")}
    cmd = shlex.split(re.search(r"^Shell command: (marpipe dvc-push .*)$", r.stdout, re.M)[1].split(" > ")[0])
    out = cmd[cmd.index("--out") + 1]
    versioned = [a for a in cmd[cmd.index("--out") + 2:]]
    assert outputs and out == "results/dvc.json"         # dvc_push versions its own record too
    unversioned = sorted(f for f in outputs - {out}
                         if not any(f == p or f.startswith(p.rstrip("/") + "/") for p in versioned))
    assert not unversioned, f"outputs of the DAG that dvc_push does not version: {unversioned}"


def test_readme_audit_is_pull_touch_and_a_dry_run_that_schedules_nothing():
    publish, audit = readme_audit_blocks()
    assert any(c.startswith("dvc remote add -f -d marpipe ") for c in publish)
    assert any(".dvc/config" in c and c.startswith("git add ") for c in publish)
    assert audit[0].startswith("git clone ") and "make install" in audit
    order = [next(i for i, c in enumerate(audit) if c.startswith(p))
             for p in ("make install", "dvc pull", "snakemake all --touch --no-hooks", "snakemake all -n")]
    assert order == sorted(order)


def test_readme_command_reads_one_block_line_or_one_span(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("Build `snakemake --report r.html\n--configfile c.yaml`, or `dvc pull results/a.dvc`.\n\n"
                      "```bash\nmarpipe tables --config config/small.yaml --from-mlflow --out-dir t  # why\n```\n")
    assert readme_command("report", readme) == "snakemake --report r.html --configfile c.yaml"
    assert readme_command("tables_from_mlflow", readme).endswith("--from-mlflow --out-dir t")
    assert readme_command("partial_pull", readme) == "dvc pull results/a.dvc"
    monkeypatch.setitem(README_COMMANDS, "any_marpipe", "marpipe ")
    readme.write_text(readme.read_text() + "Then `marpipe tables --out-dir u`.\n")
    with pytest.raises(AssertionError, match="expected one command beginning 'marpipe '"):
        readme_command("any_marpipe", readme)


def test_pushed_pointers_restore_every_output_in_a_fresh_clone(tmp_path, monkeypatch):
    """dvc_version on a miniature of the layout, the README's publish step, then clone and pull."""
    from marpipe.audit import dvc_version
    repo, remote, clone = tmp_path / "repo", tmp_path / "remote", tmp_path / "clone"
    files = {"resources/models/m/MANIFEST.sha256": "a", "resources/prompts/train.jsonl": "{}\n",
             "results/verify/m.json": "{}", "results/tables/table1.csv": "x\n", "results/runs/m/r/v/summary.json": "{}",
             "results/mlflow.json": "{}"}
    for f, text in files.items():
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text(text)
    ignore = "/resources/\n/results/verify/\n/results/tables/\n/results/runs/\n/results/mlflow.json\n/results/dvc.json\n"
    (repo / ".gitignore").write_text(ignore)            # as the project's .gitignore: every output ignored
    git("init", "-q", cwd=repo)
    monkeypatch.chdir(repo)
    exp = SimpleNamespace(cfg={"dvc": {"remote": None, "push": True}})
    info = dvc_version(exp, ["resources", "results/verify", "results/tables", "results/runs", "results/mlflow.json",
                             "results/absent"], "results/dvc.json", remote=str(remote), repo=repo)
    assert info["pushed"] and set(info["pointers"]) == {"resources", "results/verify", "results/tables",
                                                        "results/runs", "results/mlflow.json"}
    assert (repo / "results/dvc.json.dvc").is_file()
    # every path was ignored already: DVC wrote no .gitignore, the pointers are the only new files
    assert (repo / ".gitignore").read_text() == ignore
    assert [p for p in repo.rglob(".gitignore") if ".dvc" not in p.parts] == [repo / ".gitignore"]
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run([DVC, "remote", "add", "-f", "-d", "marpipe", str(remote)], cwd=repo, check=True,
                   capture_output=True)
    subprocess.run("git add -A && git commit -qm results", shell=True, cwd=repo, check=True,
                   env={**os.environ, **env})
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert default_remote((clone / ".dvc/config").read_text()) == str(remote)
    r = subprocess.run([DVC, "pull", "-q"], cwd=clone, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for f, text in files.items():
        assert (clone / f).read_text() == text, f
    assert (clone / "results/dvc.json").read_bytes() == (repo / "results/dvc.json").read_bytes()
