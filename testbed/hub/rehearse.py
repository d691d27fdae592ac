"""``make rehearse`` (``python -m testbed.hub.rehearse [--profile slurm|local] [--directory rehearsal]
[-- SNAKEMAKE_ARGS]``): the README's cluster commands on the paper DAG at tiny sizes, on CPU against the
local hub, the way a user runs them (:func:`rehearse`). See ``docs/cluster.md``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from marpipe.demo import prepare_workdir  # the working folder, its own git repository

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = "config/rehearsal.yaml"
HUB_DIR = ".marpipe/hub"
PORT = 18765

#: the one-node CI cluster (.ci/cluster.sh: 2 CPUs, ~24 GB, two stand-in GPUs, no slurmdbd). Every
#: rule the paper profile sizes is given here (a --set-resources on the command line replaces the
#: profile's list), so each job fits on the node; GPU rules keep their gpu partition and ask for one
#: stand-in GPU (`launcher` runs plain `marpipe`), but `train` for both (CI_RANKS): its jobs run as a
#: real cluster runs them, torchrun over 2 gloo ranks (torch's DDP), through the `.bin/torchrun` shim.
CI_GPU_RULES = ("verify_base_model", "warmup_head", "train", "generate", "evaluate")
CI_RANKS = {"train": 2}
CI_CPU_RULES = ("download_weights", "download_base_model", "select_checkpoint", "tables", "figures")


def ci_overrides(mem_mb: int = 2000, gpu_mem_mb: int = 4000) -> list[str]:
    """Snakemake arguments that fit ``--profile slurm`` onto the one-node CI cluster (``gpu_mem_mb``:
    the model rules, which hold a model family's side venv, the tiny models and the reward's scorers:
    ~1 GB resident measured)."""
    res = [f"{r}:{k}={v}" for r in CI_GPU_RULES
           for k, v in (("gpu", CI_RANKS.get(r, 1)), ("slurm_partition", "gpu"), ("cpus_per_gpu", 1),
                        ("mem_mb", gpu_mem_mb), ("runtime", 30))]
    res += [f"{r}:{k}={v}" for r in CI_CPU_RULES
            for k, v in (("slurm_partition", "cpu"), ("cpus_per_task", 1), ("mem_mb", mem_mb), ("runtime", 30))]
    return ["--slurm-status-command", "squeue",            # no slurmdbd: sacct does not answer
            "--slurm-init-seconds-before-status-checks", "2",  # tiny jobs: poll early
            "--slurm-no-account",                             # no accounting (plugin 2.8 still asks sacct, warns)
            "--jobs", "4",
            "--default-resources", "slurm_partition=cpu", f"mem_mb={mem_mb}", "runtime=30",
            "--set-resources", *res]


#: The README's cluster section, in its order (tests/models/test_rehearse.py holds the README to it). The
#: rehearsal runs every command after the install as written, with its own config for {config} and its
#: profile for `slurm`, adding only what the one-node cluster and its working folder need (:func:`steps`).
CLUSTER_COMMANDS = (
    "make install official-venvs",
    ".venv/bin/marpipe lock --config {config}",
    ".venv/bin/marpipe preflight --profile slurm --configfile {config}",
    ".venv/bin/snakemake --profile slurm all --configfile {config}",
    ".venv/bin/snakemake --report report.html --configfile {config}",
)


def steps(profile: str, directory: str, config: str = CONFIG, extra: list[str] | None = None) -> list[list[str]]:
    """The rehearsal's commands: :data:`CLUSTER_COMMANDS` after the install, ``.venv/bin`` being this
    interpreter's folder, with ``--directory`` and the one-node cluster's overrides (:func:`ci_overrides`;
    ``--cores 2`` without SLURM) before the trailing ``--configfile`` (it takes every following word)."""
    slurm = Path(profile).name.startswith("slurm")
    site = ci_overrides() if slurm else ["--cores", "2"]
    out = []
    for template in CLUSTER_COMMANDS[1:]:
        argv = [str(Path(sys.executable).with_name(w.rsplit("/", 1)[1])) if w.startswith(".venv/bin/") else
                profile if w == "slurm" else w for w in template.format(config=config).split()]
        if argv[1] == "preflight":
            argv += ["--directory", directory, *(["--accept-no-gpu"] if slurm else []), "--", *site]
        elif "--profile" in argv:
            argv = argv[:-2] + ["--directory", directory, *site] + argv[-2:] + list(extra or [])
        elif "--report" in argv:
            argv = argv[:-2] + ["--directory", directory] + argv[-2:]
        out.append(argv)
    return out


# --- the hub ------------------------------------------------------------------------------------------
def hub_answers(endpoint: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/xswu/HPSv2", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def stale_pins(endpoint: str, pins: dict[str, str]) -> list[str]:
    """``repo@revision`` of each pinned hub repository that the server at ``endpoint`` does not serve."""
    out = []
    for rid, rev in pins.items():
        if rid.startswith("http") or not rev:
            continue
        try:
            with urllib.request.urlopen(f"{endpoint}/api/models/{rid}/revision/{rev}", timeout=5) as r:
                if r.status == 200:
                    continue
        except Exception:
            pass
        out.append(f"{rid}@{rev[:7]}")
    return out


def ensure_hub(hub_dir: Path, config: Path, port: int = PORT) -> tuple[str, subprocess.Popen | None]:
    """Build the hub if its pins differ from the config's, serve it unless a server answers on ``port``."""
    from . import __main__ as hubcli
    index = hub_dir / "index.json"
    if not index.exists() or hubcli.check(hub_dir, config):
        print(f"[rehearse] building the local hub in {hub_dir} (~20 s)", flush=True)
        from .build import build_hub
        build_hub(hub_dir)
        problems = hubcli.check(hub_dir, config)
        if problems:
            raise SystemExit("[rehearse] the hub's pins differ from the config's (re-pin "
                             f"{config} from `python -m testbed.hub pins {hub_dir}`):\n  " + "\n  ".join(problems))
    endpoint = f"http://127.0.0.1:{port}"
    if hub_answers(endpoint):
        stale = stale_pins(endpoint, hubcli.config_pins(yaml.safe_load(Path(config).read_text())))
        if stale:
            raise SystemExit(f"[rehearse] the hub server at {endpoint} serves an older build ({', '.join(stale)} "
                             f"not found): stop that server and run again (this command then serves {hub_dir})")
        print(f"[rehearse] a hub already answers at {endpoint} (every pinned revision found)", flush=True)
        return endpoint, None
    log = open(hub_dir / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "testbed.hub", "serve", str(hub_dir), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    for _ in range(100):
        if hub_answers(endpoint, 0.5):
            break
        if proc.poll() is not None:
            raise SystemExit(f"[rehearse] the hub server exited ({proc.returncode}); see {hub_dir}/serve.log")
        time.sleep(0.2)
    else:
        proc.terminate()
        raise SystemExit(f"[rehearse] the hub server did not answer at {endpoint}; see {hub_dir}/serve.log")
    print(f"[rehearse] serving the local hub at {endpoint} (pid {proc.pid})", flush=True)
    return endpoint, proc


#: what a rehearsal writes, with a wide margin (measured: 146 MB in the working folder at its peak, DVC cache
#: included, plus the 78 MB hub: Harmon's fixture is tiny, testbed/official/harmon_tiny.py tiny_arch: ~1 MB checkpoints)
DISK_NEEDED_GB = 2


def check_disk(work: Path, need_gb: float = DISK_NEEDED_GB) -> None:
    free = shutil.disk_usage(work).free / 1e9
    if free < need_gb:
        raise SystemExit(f"[rehearse] {work} has {free:.1f} GB free; a rehearsal needs ~{need_gb} GB (checkpoints, "
                         f"images, their DVC cache copies): free space or pass another --directory")


def cluster_up() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "-h"], capture_output=True).returncode == 0


def rehearse(profile: str, directory: str, config: str = CONFIG, extra: list[str] | None = None,
             hub_dir: str = HUB_DIR, port: int = PORT) -> int:
    """The rehearsal; returns snakemake's exit status. It

    1. builds the local hub (``.marpipe/hub``) unless it is built and its pins match ``config/rehearsal.yaml``,
       and serves it (``HF_ENDPOINT``) unless a server already answers there;
    2. ``marpipe lock --config config/rehearsal.yaml`` against it: the config leaves the same downloads
       unpinned as ``config.yaml`` (NOVA, Harmon, five scorers, the HPS benchmark files at ``resolve/main``),
       the lock resolves them (``config/rehearsal.lock.yaml``; committed, so ``git diff`` shows a change);
    3. ``marpipe preflight --profile <profile>`` (its lines in the log; on the CI cluster the GPU probe fails,
       having no GPU, and ``--accept-no-gpu`` lets the rehearsal go on);
    4. runs ``snakemake all --profile <profile> --configfile config/rehearsal.yaml --directory <directory>``
       with the overrides the one-node CI cluster needs (:func:`ci_overrides`: no slurmdbd, one stand-in
       GPU per job, 2 CPUs, a few GB), the profile itself unchanged: its jobs run in the deployment the
       profile names (the project's venvs; NOVA's and Harmon's in ``.venv-nova`` / ``.venv-harmon``);
    5. prints each rule's job count and summed wall time (:func:`marpipe.demo.stage_times`).
    """
    from marpipe.demo import stage_times
    if profile.startswith("slurm") and not cluster_up():
        raise SystemExit(f"[rehearse] --profile {profile} needs a SLURM cluster and sinfo does not answer: start "
                         "the one-node cluster (.ci/cluster.sh up) or rehearse with PROFILE=local")
    work = prepare_workdir((REPO_ROOT / directory) if not Path(directory).is_absolute() else Path(directory))
    check_disk(work)
    endpoint, server = ensure_hub(REPO_ROOT / hub_dir, REPO_ROOT / config, port)
    env = dict(os.environ, HF_ENDPOINT=endpoint)
    lock, preflight, run, report = steps(profile, str(work), config, extra)
    t0 = time.monotonic()
    try:
        for step in (lock, preflight):
            print("[rehearse] HF_ENDPOINT=" + endpoint + " " + " ".join(shlex.quote(c) for c in step), flush=True)
            if subprocess.call(step, env=env, cwd=REPO_ROOT) != 0:
                raise SystemExit(f"[rehearse] `marpipe {step[1]}` failed (above): nothing was submitted")
        print("[rehearse] HF_ENDPOINT=" + endpoint + " " + " ".join(shlex.quote(c) for c in run), flush=True)
        rc = subprocess.call(run, env=env, cwd=REPO_ROOT)
        if rc == 0:
            print("[rehearse] " + " ".join(shlex.quote(c) for c in report), flush=True)
            rc = subprocess.call(report, env=env, cwd=REPO_ROOT)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    wall = time.monotonic() - t0
    times = stage_times(work / "benchmarks")
    print(f"[rehearse] snakemake exited {rc} after {wall / 60:.1f} min; per rule (jobs, summed job wall time):")
    for rule, jobs, secs in times:
        print(f"  {rule:<20} {jobs:>4} jobs {secs:>8.1f} s")
    print(f"  {'total':<20} {sum(j for _, j, _ in times):>4} jobs {sum(s for *_, s in times):>8.1f} s")
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m testbed.hub.rehearse", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="slurm")
    ap.add_argument("--directory", default="rehearsal")
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--hub", default=HUB_DIR)
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("snakemake_args", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    extra = a.snakemake_args[1:] if a.snakemake_args[:1] == ["--"] else a.snakemake_args
    return rehearse(a.profile, a.directory, a.config, extra, a.hub, a.port)


if __name__ == "__main__":
    sys.exit(main())
