"""The train and warm-up stages: one (model, reward, variant) GRPO run, resumable.

Outputs in the run folder: ``checkpoints/step-*.safetensors``, ``metrics.jsonl`` and, last,
``summary.json`` (what Snakemake waits for; only what the run computed, paths relative to the run
folder); per-attempt facts (wall time, the step resumed from, commit, SLURM job id) go to
``attempts.jsonl`` and the MLflow run's tags. Rerunning an interrupted job continues from its
newest valid checkpoint, byte-identically: ``docs/pipeline.md``, "Byte-stable, resumable" and
"Tracking"."""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import torch

from marpipe import dist
from marpipe.config import GRPOConfig
from marpipe.experiment import Experiment, row_id
from marpipe.io.checkpoint import disk_use, latest_valid, list_checkpoints
from marpipe.io.files import canonical_json, read_prompt_set, sha256_file, write_json
from marpipe.io.tracking import MLflowRun, read_jsonl, run_status
from marpipe.stages.resources import load_base_model
from marpipe.stages.select import keep_for_selection
from marpipe.trainer import PromptItem, Trainer, dtype_policy


def run_key(model: str, row: str) -> str:
    """The MLflow run of a (model, row id) -- ``tiny-nova/base``, ``tiny-nova/hps-mte/seed0``:
    training and evaluation metrics of one run share it."""
    return f"{model}/{row}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


# fields of the training config that do not change a step's values: a run may be extended
# (more steps) or checkpointed differently and still be the same MLflow run
_NOT_LINEAGE = ("steps", "save_every")


def train_hash(exp: Experiment, model: str, reward: str | None, variant: str, seed: int | None = None) -> str:
    """The row's training lineage: a hash of its model and resolved training config (without
    ``steps``/``save_every``); "" for a base row. The MLflow run of a row is continued only
    by a run with the same hash (:mod:`marpipe.io.tracking`)."""
    if reward is None:
        return ""
    try:
        cfg = exp.warmup_config(model) if variant == "warmup" else exp.train_config(model, reward, variant, seed)
    except (KeyError, ValueError):      # a row the config no longer has (an old score file): no lineage
        return ""
    d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_LINEAGE}
    return hashlib.sha256(canonical_json({"model": model, "train": d}).encode()).hexdigest()[:16]


def run_tags(exp: Experiment, model: str, reward: str | None, variant: str, seed: int | None = None) -> dict:
    """``row``: the table row (``hps-mte``, all seeds); ``seed``: the run's training seed."""
    tags = {"model": model, "label": exp.label(model), "reward": reward or "", "variant": variant,
            "row": variant if reward is None else f"{reward}-{variant}", "seed": "" if seed is None else str(seed),
            "world": exp.cfg["world"],
            "config_hash": exp.config_hash, "git_commit": git_commit(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", "")}
    lineage = train_hash(exp, model, reward, variant, seed)
    if lineage:
        tags["train_hash"] = lineage
    return tags


def _append_attempt(out: Path, record: dict) -> None:
    """One line per attempt (wall time, resumed step, commit, job id): a log, not an artifact."""
    with open(out / "attempts.jsonl", "a") as f:
        f.write(canonical_json(record) + "\n")


def write_summary(out: Path, model: str, cfg: GRPOConfig) -> dict:
    """``summary.json``: what the run computed, byte-stable (no time, no attempt, no absolute path)."""
    out = Path(out)
    rows = read_jsonl(out / "metrics.jsonl")      # the whole run, also across resumes
    final = latest_valid(out / "checkpoints")
    if final is None or not rows:
        raise FileNotFoundError(f"{out}: no valid checkpoint or no metrics rows; the run did not train")
    summary = {"model": model, "reward": cfg.reward, "steps": cfg.steps,
               "final_checkpoint": final.relative_to(out).as_posix(),   # relative to the run folder
               "final_checkpoint_sha256": sha256_file(final), "config": cfg.to_dict(),
               "reward_first": rows[0]["reward_mean"], "reward_last": rows[-1]["reward_mean"]}
    write_json(out / "summary.json", summary)
    return summary


def _train(exp: Experiment, model: str, cfg: GRPOConfig, reward_name: str, out: Path, prompts: Path,
           base_weights: Path | None, key: str, tags: dict, resources: str, progress: bool, keep=None) -> dict:
    device = dist.setup(exp.cfg.get("device"))
    torch.manual_seed(cfg.seed)
    net = load_base_model(exp, model, device, Path(resources) / "models", weights=base_weights)
    reward = exp.build_reward(reward_name, resources, device=device)   # scorers on the job's GPU
    items = [PromptItem(r["prompt"], r["metadata"]) for r in read_prompt_set(prompts)]
    policy = dtype_policy(net, cfg.trained_parts, device)
    print(f"[marpipe] dtype policy: {policy}")
    mlflow = MLflowRun(key, exp.cfg["experiment"], params={"train": cfg.to_dict(), "model": model, "dtype": policy},
                       tags=tags, tracking_uri=exp.cfg["mlflow"].get("tracking_uri")) if dist.rank() == 0 else None
    with run_status(mlflow):    # the MLflow run ends FINISHED, FAILED or KILLED (SIGTERM/SIGINT), with its end time
        trainer = Trainer(net, cfg, items, reward, out, device=device, mlflow=mlflow, progress=progress, keep=keep)
        t0 = time.perf_counter()
        history = trainer.train(resume=True)
        summary = {}
        if dist.rank() == 0:
            summary = write_summary(out, model, cfg)
            attempt = {"seconds": time.perf_counter() - t0,
                       "resumed_from": (history[0]["step"] - 1) if history else cfg.steps, "tags": tags}
            _append_attempt(out, attempt)
            n = len(list_checkpoints(out / "checkpoints"))
            print(f"[marpipe] disk: {out} holds {disk_use(out) / 1e9:.2f} GB ({n} checkpoint{'s' * (n != 1)})")
            summary = {**summary, **attempt}    # returned (the CLI prints the time), not written
    dist.teardown()
    return summary


def train_run(exp: Experiment, model: str, reward: str, variant: str, out: str | Path, prompts: str | Path,
              base_weights: str | Path | None = None, resources: str = "resources", progress: bool = True,
              seed: int | None = None) -> dict:
    """One run: (model, reward, variant, training seed); ``seed`` None: the config's first seed."""
    seed = exp.seeds[0] if seed is None else seed
    cfg = exp.train_config(model, reward, variant, seed)
    return _train(exp, model, cfg, reward, Path(out), Path(prompts), Path(base_weights) if base_weights else None,
                  run_key(model, row_id(reward, variant, seed)), run_tags(exp, model, reward, variant, seed),
                  resources, progress, keep=keep_for_selection(exp, reward, variant, Path(out)))


def warmup_run(exp: Experiment, model: str, out: str | Path, prompts: str | Path, resources: str = "resources",
               progress: bool = True) -> dict:
    """Harmon's diffusion-head warm-up: GRPO with the AR part frozen (App. B)."""
    cfg = exp.warmup_config(model)
    out = Path(out)
    keep = None if exp.cfg["selection"].get("keep_all_checkpoints") else (lambda saved: set())   # the newest
    summary = _train(exp, model, cfg, cfg.reward, out, Path(prompts), None, run_key(model, "warmup"),
                     run_tags(exp, model, cfg.reward, "warmup"), resources, progress, keep=keep)
    if summary:
        from marpipe.io.checkpoint import load_model_weights, write_safetensors
        write_safetensors(out / "warm.safetensors", load_model_weights(out / summary["final_checkpoint"]))
    return summary
