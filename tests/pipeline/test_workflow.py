"""The Snakemake workflow: lint, the paper's dry run, and bad configs failing before any job."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipeline_config import ROOT

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(*args, cwd=ROOT):
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def job_counts(stdout: str) -> dict[str, int]:
    block = stdout.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def jobs(stdout: str) -> list[dict]:
    """The dry run's job blocks: rule name and its input/wildcards lines."""
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", stdout):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            field = lambda k: (re.search(rf"^    {k}: (.*)$", block, re.M) or [None, ""])[1]  # noqa: B023
            out.append({"rule": m.group(1), "input": field("input"), "wildcards": field("wildcards")})
    return out


@pytest.mark.parametrize("configfile", ["config.yaml", "config/small.yaml"])
def test_lint_reports_nothing(configfile):
    r = snakemake("--lint", "--configfile", configfile)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations, your workflow is in a good condition!" in r.stdout + r.stderr
    assert "Lints for" not in r.stdout + r.stderr


def test_paper_dry_run_schedules_every_job_through_the_slurm_profile():
    r = snakemake("-n", "--profile", "slurm", "all")
    assert r.returncode == 0, r.stderr
    counts = job_counts(r.stdout)
    # NOVA: 4 variants x 2 rewards (Table 2 is on NOVA only); Harmon: Table 1's grpo and sim x 2 rewards;
    # per suite 2 base rows + 4 + 2 trained rows
    assert counts["download_base_model"] == 2 and counts["verify_base_model"] == 2
    assert counts["warmup_head"] == 1                      # Harmon only
    assert counts["train"] == 12 and counts["select_checkpoint"] == 12
    assert counts["generate"] == 16 and counts["evaluate"] == 16
    assert counts["prompts"] == 9
    assert counts["download_weights"] == 12                # every metric/reward model of config.yaml and the
                                                           # tokenizer, processor and CLIP backbone folders
    for rule in ("tables", "figures", "mlflow_sync", "dvc_push", "all"):
        assert counts[rule] == 1
    # Harmon trains from its warmed-up head; NOVA from the downloaded model
    trains = [b for b in jobs(r.stdout) if b["rule"] == "train"]
    harmon = [b for b in trains if "model=harmon" in b["wildcards"]]
    nova = [b for b in trains if "model=nova" in b["wildcards"]]
    assert len(nova) == 8 and len(harmon) == 4
    assert not any(f"variant={v}," in b["wildcards"] for b in harmon for v in ("fix_decoder", "mte"))
    assert all("results/runs/harmon/warmup/warm.safetensors" in b["input"] for b in harmon)
    assert not any("warmup" in b["input"] for b in nova)
    # downloads are pinned by config and verified before anything trains
    assert re.search(r"rule verify_base_model:\n    input: resources/models/nova/MANIFEST.sha256", r.stdout)


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c["train"].update(topk=0.3), "config.train.topk: unknown key"),
    (lambda c: c["train"].update(lr="fast"), "config.train.lr = 'fast': 'fast' is not of type 'number'"),
    (lambda c: c["train"].update(top_k=1.5), "config.train.top_k = 1.5: 1.5 is greater than the maximum of 1"),
    (lambda c: c["variants"]["mte"].update(fix_decoder=False), "+MTE and +Sim build on +Fix Decoder"),
])
def test_bad_config_fails_with_one_clear_message_before_any_job(tmp_path, mutate, message):
    cfg = yaml.safe_load((ROOT / "config" / "small.yaml").read_text())
    mutate(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = snakemake("all", "-n", "--profile", "local", "--configfile", str(bad))
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert message in out
    assert "Job stats" not in out and "rule " not in r.stdout


def test_a_duplicate_key_stops_snakemake_naming_file_and_line(tmp_path):
    """Snakemake's own YAML reader keeps the last of two keys; the workflow reads the file again strictly."""
    text = (ROOT / "config" / "small.yaml").read_text()
    bad = tmp_path / "dup.yaml"
    bad.write_text(text + "\nseed: 1\n")
    r = snakemake("all", "-n", "--profile", "local", "--configfile", str(bad))
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f"{bad}:{len(text.splitlines()) + 2}:1: duplicate key 'seed'" in out
    assert "Job stats" not in out


def test_the_profiles_name_only_rules_that_exist():
    """A resource entry for a rule name that does not exist is silently ignored by snakemake."""
    r = snakemake("--list", "--configfile", str(ROOT / "config" / "small.yaml"))
    rules = set(r.stdout.split())
    for profile in ("slurm", "slurm-ci", "local"):
        named = set(yaml.safe_load((ROOT / profile / "config.yaml").read_text()).get("set-resources") or {})
        assert named <= rules, f"{profile}/config.yaml names no such rule: {sorted(named - rules)}"
    assert {"download_base_model", "download_weights", "train"} <= rules
