"""``marpipe preflight --profile P``: check the cluster before a run submits its jobs, and say what the run costs.

One line per check, ``ok`` or ``FAIL`` with the fix (the lock, the partitions, a GPU probe job per
job environment, the hub, the disk, the MLflow server), then the estimate from Snakemake's own dry
run with the same profile: GPU-hours booked per rule family (measured ones where an earlier run
left benchmark files) and the disk the run takes. ``--accept-no-gpu`` accepts the failed GPU line
on a cluster without GPUs (the CI's). Exit status 1 when any check fails. The checks in full:
``README.md``, "Preflight"; ``docs/cluster.md``."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from marpipe.workflow_hooks import DEFAULT_DEPLOYMENT

REPO_ROOT = Path(__file__).resolve().parents[1]

#: what each job environment must import (the pipeline's own: what its rules use)
ENV_IMPORTS = {"pipeline": ("marpipe", "open_clip", "transformers", "mlflow", "snakemake"),
               "nova": ("marpipe", "diffnext", "transformers"),
               "harmon": ("marpipe", "transformers", "einops", "timm", "scipy")}
PROBE = """
import importlib, json, sys
out = {"python": sys.executable, "missing": []}
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception as e:
        out["missing"].append(f"{m} ({type(e).__name__}: {e})"[:200])
import torch
out.update(torch=torch.__version__, cuda=torch.cuda.is_available(), gpus=torch.cuda.device_count())
out["names"] = [torch.cuda.get_device_name(i) for i in range(out["gpus"])]
import socket
out["node"] = socket.gethostname()
print("PROBE" + json.dumps(out))
"""
#: prompts per suite when the prompt sets are not downloaded yet (the pinned files' counts: config.yaml's
#: comments): the HPS v2 benchmark's 4 x 800, each T2I-CompBench category's val file 300
PROMPTS_IF_UNKNOWN = {"hps_benchmark": 3200, "txt": 300}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    accepted: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.name:<14} {self.detail}"
        tail = f" [accepted: {self.accepted}]" if self.accepted else f"\n      fix: {self.fix}" if self.fix else ""
        return f"FAIL  {self.name:<14} {self.detail}{tail}"


@dataclass
class Job:
    rule: str
    wildcards: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return int(self.resources.get("gpu", 0) or 0)

    @property
    def hours(self) -> float:
        return float(self.resources.get("runtime", 0) or 0) / 60


# --- the plan --------------------------------------------------------------------------------------------
def parse_plan(text: str) -> list[Job]:
    """The jobs of a Snakemake dry run's output (``rule R:`` blocks with ``wildcards:`` and ``resources:``)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:\n)", "\n" + text):
        m = re.match(r"(?:local)?rule (\S+):\n", block)
        if not m:
            continue
        job = Job(m.group(1))
        for key in ("wildcards", "resources"):
            line = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            if line:
                setattr(job, key, dict(kv.split("=", 1) for kv in line.group(1).split(", ") if "=" in kv))
        jobs.append(job)
    return jobs


def snakemake_plan(profile: str, configfiles: list[str], directory: str, extra: list[str]) -> tuple[list[Job], str]:
    exe = str(Path(sys.executable).with_name("snakemake"))
    cmd = [exe, "all", "-n", "--profile", profile, "--directory", directory, *extra]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    r = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"marpipe preflight: the dry run failed:\n{r.stderr[-3000:]}")
    return parse_plan(r.stdout), r.stderr


# --- checks ----------------------------------------------------------------------------------------------
def check_lock(cfg: dict, configfile: str) -> Check:
    """Every download of the config is pinned or locked (``marpipe lock``)."""
    from marpipe import lock as L
    lock = L.read(L.lock_path(configfile))
    msg = L.refusal(L.apply(cfg, lock), lock, configfile)
    if msg:
        keys = [x.strip().split(" ")[0] for x in msg.splitlines()[1:-1]]
        return Check("lock", False, f"{len(keys)} downloads neither pinned nor locked: {', '.join(keys[:3])}"
                     + (f" and {len(keys) - 3} more" if len(keys) > 3 else ""),
                     f"marpipe lock --config {configfile} (on a machine with hub access), then commit "
                     f"{L.lock_path(configfile)}")
    n = len(L.sources(cfg))
    return Check("lock", True, f"{n} downloads pinned or locked" + (f" ({L.lock_path(configfile)})" if lock else ""))


def parse_sinfo(text: str) -> dict[str, dict]:
    """{partition: {"gpus": max GPUs on a node, "mem_mb": max node memory, "nodes": count}} of
    ``sinfo -h -o "%P %G %D %m"``."""
    parts: dict[str, dict] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        name = f[0].rstrip("*")
        gpus = sum(int(n) for n in re.findall(r"gpu(?::[^:,()\s]+)?:(\d+)", f[1]))
        p = parts.setdefault(name, {"gpus": 0, "mem_mb": 0, "nodes": 0})
        p["gpus"] = max(p["gpus"], gpus)
        p["mem_mb"] = max(p["mem_mb"], int(re.sub(r"\D", "", f[3]) or 0))
        p["nodes"] += int(re.sub(r"\D", "", f[2]) or 0)
    return parts


def check_partitions(jobs: list[Job], parts: dict[str, dict]) -> list[Check]:
    """Each partition the jobs use exists with nodes that hold the GPUs and memory they ask for
    (``sinfo``), a multi-GPU job on one node."""
    out = []
    by_part: dict[str, list[Job]] = {}
    for j in jobs:
        if j.rule != "all":
            by_part.setdefault(j.resources.get("slurm_partition", ""), []).append(j)
    for name, js in sorted(by_part.items()):
        if name not in parts:
            out.append(Check("partition", False, f"{name or '(none)'}: {len(js)} jobs ({', '.join(sorted({j.rule for j in js}))}) "
                             f"go to a partition sinfo does not list (it lists {', '.join(sorted(parts)) or 'none'})",
                             "set slurm_partition in the profile's default-resources / set-resources to one of those"))
            continue
        p, worst = parts[name], max(js, key=lambda j: j.gpus)
        mem = max(js, key=lambda j: int(j.resources.get("mem_mb", 0) or 0))
        if worst.gpus > p["gpus"]:
            out.append(Check("partition", False, f"{name}: rule {worst.rule} asks {worst.gpus} GPUs on one node; its "
                             f"largest node has {p['gpus']}", f"set-resources {worst.rule}: gpu: {p['gpus']} in the profile"))
        elif int(mem.resources.get("mem_mb", 0) or 0) > p["mem_mb"] > 0:
            out.append(Check("partition", False, f"{name}: rule {mem.rule} asks {mem.resources['mem_mb']} MB; its largest "
                             f"node has {p['mem_mb']} MB", f"set-resources {mem.rule}: mem_mb in the profile"))
        else:
            asks = f"at most {worst.gpus} GPUs ({worst.rule}) on one node" if worst.gpus else "no GPUs"
            out.append(Check("partition", True, f"{name}: {p['nodes']} node(s), up to {p['gpus']} GPUs and {p['mem_mb']} MB "
                             f"a node; its {len(js)} jobs ask {asks}"))
    return out


def srun(partition: str | None, gpus: int, argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``argv`` in a short job on ``partition`` (``srun``), or here when there is no SLURM (``partition`` None)."""
    if partition is not None:
        argv = ["srun", "-p", partition, "-N", "1", "-n", "1", "-t", "10", "--mem", "4000",
                *([f"--gpus={gpus}"] if gpus else []), *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def check_env(env: str, python: str, partition: str | None, accept_no_gpu: bool) -> Check:
    """A short probe job on the GPU partition sees its GPUs with torch and imports the job
    environment's packages (the official ``diffnext`` for NOVA, Harmon's remote-code imports)."""
    name = f"gpu-{env}"
    if not Path(python).exists():
        return Check(name, False, f"{python} not found", "make install official-venvs (on the shared filesystem), or "
                     f"point the profile's config.deployment.{env} at the environment")
    r = srun(partition, 1, [python, "-c", PROBE, *ENV_IMPORTS[env]])
    line = next((x for x in r.stdout.splitlines() if x.startswith("PROBE")), None)
    if line is None:
        return Check(name, False, f"the probe job failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}",
                     "run it by hand: srun -p <gpu partition> --gpus=1 <python> -c 'import torch'")
    p = json.loads(line[5:])
    where = f"on {p['node']}" + (f" (partition {partition})" if partition else "")
    if p["missing"]:
        return Check(name, False, f"{python} {where} cannot import {'; '.join(p['missing'])}",
                     "make install official-venvs (it builds every job environment)")
    if not p["cuda"]:
        return Check(name, False, f"torch {p['torch']} {where} sees no CUDA GPU (torch.cuda.is_available() is False)",
                     "ask for a GPU node (slurm_partition / gpu_model / slurm_extra in the profile) or a CUDA build of torch",
                     accepted="--accept-no-gpu" if accept_no_gpu else "")
    return Check(name, True, f"torch {p['torch']} {where}: {p['gpus']} x {', '.join(sorted(set(p['names'])))}; "
                 f"imports {', '.join(ENV_IMPORTS[env])}")


def check_hub(cfg: dict, partition: str | None) -> Check:
    """The hub (``$HF_ENDPOINT``, else huggingface.co) answers from the downloads' partition."""
    from marpipe import lock as L
    srcs = L.sources(cfg)
    repo = next((s["repo_id"] for s in srcs.values() if "repo_id" in s), None)
    if repo is None:
        return Check("hub", True, "no hub downloads in this config")
    url = f"{L.endpoint()}/api/models/{repo}"
    code = f"import urllib.request; print('HTTP', urllib.request.urlopen({url!r}, timeout=20).status)"
    return reach("hub", url + " (the download jobs' partition)", code, partition,
                 "give that partition's nodes internet (or HTTPS_PROXY), or set HF_ENDPOINT to a mirror, or run "
                 "the download rules on the login node first")


def reach(name: str, what: str, code: str, partition: str | None, fix: str) -> Check:
    """Run ``code`` (it prints ``HTTP 200`` when the address answers) in a job on ``partition``."""
    r = srun(partition, 0, [sys.executable, "-c", code], timeout=300)
    where = f"a node of partition {partition}" if partition else "this machine"
    if "HTTP 200" in r.stdout:
        return Check(name, True, f"{what} answers from {where}")
    why = ((r.stderr or r.stdout).strip().splitlines() or ["no output"])[-1][-200:]
    return Check(name, False, f"{what} does not answer from {where}: {why}", fix)


def check_mlflow(cfg: dict, state: Path, partition: str | None) -> Check:
    """The tracking server, started as the run would start it, answers from a compute node."""
    from marpipe.io import tracking_server
    uri = tracking_server.ensure_tracking_server((cfg.get("mlflow") or {}).get("tracking_uri"), state=state,
                                                 host=(cfg.get("mlflow") or {}).get("host"))
    try:
        if not uri.startswith("http"):
            return Check("mlflow", True, f"{uri}: a file store (no server to reach)")
        code = ("import base64, os, urllib.request as u; r = u.Request(os.environ['MLFLOW_TRACKING_URI'] + '/health');"
                "user = os.environ.get('MLFLOW_TRACKING_USERNAME'); pw = os.environ.get('MLFLOW_TRACKING_PASSWORD', '');"
                "user and r.add_header('Authorization', 'Basic ' + base64.b64encode(f'{user}:{pw}'.encode()).decode());"
                "print('HTTP', u.urlopen(r, timeout=20).status)")
        return reach("mlflow", uri, code, partition, "set mlflow.host to an address of this host the nodes reach "
                     "(or mlflow.tracking_uri to a server they reach)")
    finally:
        tracking_server.stop_tracking_server()


# --- the estimate ----------------------------------------------------------------------------------------
def measured_hours(directory: Path, rule: str) -> float | None:
    """Mean wall hours of a rule's jobs in an earlier run (Snakemake benchmark files), if any."""
    secs = []
    for f in (directory / "benchmarks" / rule).rglob("*.tsv"):
        rows = f.read_text().splitlines()
        if len(rows) > 1:
            secs.append(float(rows[1].split("\t")[0]))
    return sum(secs) / len(secs) / 3600 if secs else None


def gpu_hours(jobs: list[Job], directory: Path) -> list[tuple[str, int, int, float, float | None]]:
    """(rule, jobs, GPUs a job, booked GPU-hours, measured GPU-hours or None) per rule family with GPUs."""
    rows = []
    for rule in dict.fromkeys(j.rule for j in jobs):
        js = [j for j in jobs if j.rule == rule and j.gpus]
        if not js:
            continue
        m = measured_hours(directory, rule)
        rows.append((rule, len(js), max(j.gpus for j in js), sum(j.gpus * j.hours for j in js),
                     None if m is None else m * sum(j.gpus for j in js)))
    return rows


def _prompt_count(exp, suite: str, directory: Path) -> int:
    n = 0
    for name in set(exp.suite_prompt_sets(suite).values()):
        spec = exp.cfg["prompts"][name]
        f = directory / "resources" / "prompts" / f"{name}.jsonl"
        if f.exists():
            n += sum(1 for line in f.read_text().splitlines() if line.strip())
        else:
            n += spec.get("n") or PROMPTS_IF_UNKNOWN.get(spec.get("format", "jsonl"), 0)
    return n


def disk_estimate(exp, jobs: list[Job], lock: dict | None, directory: Path) -> dict[str, float]:
    """GB for the downloads (the lock's file sizes), the checkpoints (two at rest per run and one being
    written: float32 weights and AdamW's two moments of every weight, taking the hub's weight files as
    16-bit), the image bundles (uint8) and the DVC cache (a second copy of what is versioned)."""
    files = {k: sum(f["size"] for f in e["files"].values()) for k, e in (lock or {}).get("sources", {}).items()
             if "files" in e}
    downloads = sum(files.values()) + sum(e.get("size", 0) for e in (lock or {}).get("sources", {}).values())
    weights = {m: files.get(f"models.{m}.source", 0) for m in exp.models}
    runs = [j for j in jobs if j.rule == "train"]
    ckpt = sum(3 * 6 * weights.get(j.wildcards.get("model"), 0) for j in runs)
    images = 0
    for j in jobs:
        if j.rule == "generate":
            size = (exp.cfg["models"][j.wildcards["model"]].get("sampling") or {}).get("image_size", 512)
            per = exp.cfg["evaluation"][j.wildcards["suite"]].get("images_per_prompt", 1)
            images += _prompt_count(exp, j.wildcards["suite"], directory) * per * size * size * 3
    return {"downloads": downloads / 1e9, "checkpoints": ckpt / 1e9, "images": images / 1e9,
            "dvc cache": (ckpt / 3 + images) / 1e9}


def profile_deployment(profile: str) -> dict:
    """The profile's ``config: deployment:`` (each model family's environment), as the Snakefile reads it."""
    folder = Path(profile) if Path(profile).is_dir() else REPO_ROOT / profile
    f = folder / "config.yaml"
    cfg = yaml.safe_load(f.read_text()) if f.is_file() else {}
    return ((cfg or {}).get("config") or {}).get("deployment") or {}


# --- the command -----------------------------------------------------------------------------------------
def preflight(profile: str, configfiles: list[str], directory: str, extra: list[str], accept_no_gpu: bool,
              out=print) -> int:
    from snakemake.utils import update_config

    from marpipe import experiment as E
    from marpipe import lock as L
    configfiles = configfiles or ["config.yaml"]
    work = Path(directory).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg: dict = {}
    for f in configfiles:
        update_config(cfg, E.read_config(REPO_ROOT / f if not Path(f).is_absolute() else f))
    deployment = {**DEFAULT_DEPLOYMENT, **profile_deployment(profile)}
    lock = L.read(L.lock_path(REPO_ROOT / configfiles[0] if not Path(configfiles[0]).is_absolute() else configfiles[0]))
    exp = E.load(L.apply(cfg, lock))
    jobs, _ = snakemake_plan(profile, configfiles, str(work), extra)
    slurm = shutil.which("sinfo") is not None and "slurm" in Path(profile).name
    out(f"marpipe preflight: profile {profile}, {', '.join(configfiles)}, {len(jobs) - 1} jobs planned, results in {work}")

    checks = [check_lock(cfg, configfiles[0])]
    if "slurm" in Path(profile).name and not slurm:
        checks.append(Check("partition", False, f"--profile {profile} submits to SLURM, but sinfo is not on this "
                            "machine's PATH: nothing here can check the partitions or probe a node",
                            "run marpipe preflight on the cluster's login node (where snakemake will run)"))
    gpu_part = next((j.resources.get("slurm_partition") for j in jobs if j.gpus), None) if slurm else None
    dl_part = next((j.resources.get("slurm_partition") for j in jobs if j.rule.startswith("download")), None) if slurm else None
    if slurm:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %G %D %m"], capture_output=True, text=True)
        checks += check_partitions(jobs, parse_sinfo(r.stdout))
    families = {"pipeline": sys.executable}
    for m in exp.models:
        adapter = exp.adapter(m)
        if deployment.get(adapter):
            families[adapter] = str((REPO_ROOT / deployment[adapter] / "bin" / "python").absolute())
    for env, py in families.items():
        checks.append(check_env(env, py, gpu_part, accept_no_gpu))
    checks.append(check_hub(exp.cfg, dl_part))
    disk = disk_estimate(exp, jobs, lock, work)
    need, free = sum(disk.values()), shutil.disk_usage(work).free / 1e9
    checks.append(Check("disk", free >= need, f"{free:,.1f} GB free at {work}, the run's estimate {need:,.1f} GB",
                        "free space, or run in another --directory (results, checkpoints and the DVC cache live there)"))
    checks.append(check_mlflow(exp.cfg, work / ".marpipe", gpu_part))
    for c in checks:
        out(c.line())

    out("\nestimate (from the plan; booked = GPUs x the profile's runtime limit; measured = an earlier run's "
        "benchmarks/ x GPUs)")
    out(f"  {'rule':<20} {'jobs':>5} {'GPUs/job':>9} {'booked GPU-h':>13} {'measured GPU-h':>15}")
    rows = gpu_hours(jobs, work)
    for rule, n, g, booked, meas in rows:
        out(f"  {rule:<20} {n:>5} {g:>9} {booked:>13,.1f} {'-' if meas is None else f'{meas:,.2f}':>15}")
    out(f"  {'total':<20} {sum(r[1] for r in rows):>5} {'':>9} {sum(r[3] for r in rows):>13,.1f}")
    out("  disk: " + ", ".join(f"{k} {v:,.1f} GB" for k, v in disk.items()) + f"; total {need:,.1f} GB"
        + ("" if lock else " (downloads and checkpoints unknown until `marpipe lock` records the files' sizes)"))
    failed = [c for c in checks if not c.ok and not c.accepted]
    accepted = [c for c in checks if not c.ok and c.accepted]
    out(f"\n{len(checks) - len(failed) - len(accepted)} of {len(checks)} checks passed"
        + (f", {len(accepted)} failed but accepted ({accepted[0].accepted})" if accepted else "") + (
        f"; fix the {len(failed)} FAIL line(s) before `snakemake --profile {profile} all`" if failed else ""))
    return 1 if failed else 0
