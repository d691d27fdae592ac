"""The train and warm-up stages: one (model, reward, variant) GRPO run, resumable.

Outputs in the run folder: ``checkpoints/step-*.safetensors``, ``metrics.jsonl``
and, last, ``summary.json`` (what Snakemake waits for). Rerunning an
interrupted job continues from its newest valid checkpoint.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import torch

from marpipe import dist
from marpipe.config import GRPOConfig
from marpipe.experiment import Experiment
from marpipe.io.checkpoint import latest_valid
from marpipe.io.files import read_prompt_set, write_json
from marpipe.io.tracking import MLflowRun, read_jsonl
from marpipe.stages.resources import load_base_model
from marpipe.trainer import PromptItem, Trainer


def run_key(model: str, row: str) -> str:
    """The MLflow run of a (model, row): training and evaluation metrics share it."""
    return f"{model}/{row}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


def run_tags(exp: Experiment, model: str, reward: str | None, variant: str) -> dict:
    return {"model": model, "label": exp.label(model), "reward": reward or "", "variant": variant,
            "row": variant if reward is None else f"{reward}-{variant}", "world": exp.cfg["world"],
            "config_hash": exp.config_hash, "git_commit": git_commit(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", "")}


def _train(exp: Experiment, model: str, cfg: GRPOConfig, reward_name: str, out: Path, prompts: Path,
           base_weights: Path | None, key: str, tags: dict, resources: str, progress: bool) -> dict:
    device = dist.setup(exp.cfg.get("device"))
    torch.manual_seed(cfg.seed)
    net = load_base_model(exp, model, device, Path(resources) / "models", weights=base_weights)
    reward = exp.build_reward(reward_name, resources)
    items = [PromptItem(r["prompt"], r["metadata"]) for r in read_prompt_set(prompts)]
    mlflow = MLflowRun(key, exp.cfg["experiment"], params={"train": cfg.to_dict(), "model": model},
                       tags=tags, tracking_uri=exp.cfg["mlflow"].get("tracking_uri")) if dist.rank() == 0 else None
    trainer = Trainer(net, cfg, items, reward, out, device=device, mlflow=mlflow, progress=progress)
    t0 = time.perf_counter()
    history = trainer.train(resume=True)
    summary = {}
    if dist.rank() == 0:
        rows = read_jsonl(out / "metrics.jsonl")      # the whole run, also across resumes
        summary = {"model": model, "reward": cfg.reward, "steps": cfg.steps, "seconds": time.perf_counter() - t0,
                   "resumed_from": (history[0]["step"] - 1) if history else cfg.steps,
                   "final_checkpoint": str(latest_valid(out / "checkpoints")), "config": cfg.to_dict(),
                   "tags": tags, "reward_first": rows[0]["reward_mean"], "reward_last": rows[-1]["reward_mean"]}
        write_json(out / "summary.json", summary)
    dist.teardown()
    return summary


def train_run(exp: Experiment, model: str, reward: str, variant: str, out: str | Path, prompts: str | Path,
              base_weights: str | Path | None = None, resources: str = "resources", progress: bool = True) -> dict:
    cfg = exp.train_config(model, reward, variant)
    row = f"{reward}-{variant}"
    return _train(exp, model, cfg, reward, Path(out), Path(prompts), Path(base_weights) if base_weights else None,
                  run_key(model, row), run_tags(exp, model, reward, variant), resources, progress)


def warmup_run(exp: Experiment, model: str, out: str | Path, prompts: str | Path, resources: str = "resources",
               progress: bool = True) -> dict:
    """Harmon's diffusion-head warm-up: GRPO with the AR part frozen (App. B)."""
    cfg = exp.warmup_config(model)
    out = Path(out)
    summary = _train(exp, model, cfg, cfg.reward, out, Path(prompts), None, run_key(model, "warmup"),
                     run_tags(exp, model, cfg.reward, "warmup"), resources, progress)
    if summary:
        from marpipe.io.checkpoint import load_model_weights
        from safetensors.torch import save_file
        save_file(load_model_weights(summary["final_checkpoint"]), str(out / "warm.safetensors"))
    return summary
