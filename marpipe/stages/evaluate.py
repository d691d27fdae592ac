"""The generate and evaluate stages: images for each benchmark, then their scores.

Every row (model x reward x variant, and each base model) is sampled on the same
prompts with the same seeds, so rows differ only by their weights. Scores are
written as JSON and logged to the row's MLflow run.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from marpipe import stats
from marpipe.experiment import Experiment, row_id
from marpipe.io.files import (
    atomic_write_bytes,
    canonical_json,
    from_uint8,
    npy_bytes,
    open_images,
    read_json,
    read_prompt_set,
    to_uint8,
    write_bundle,
    write_json,
)
from marpipe.models.download import MANIFEST
from marpipe.rollout import RolloutPlan, rollout
from marpipe.stages.resources import load_base_model


def suite_prompts(exp: Experiment, suite: str, prompt_dir: str | Path) -> list[dict]:
    """The suite's prompts in a fixed order; compbench prompts carry their column."""
    sets = exp.suite_prompt_sets(suite)
    if suite == "preference":
        return read_prompt_set(Path(prompt_dir) / f"{next(iter(sets.values()))}.jsonl")
    rows = []
    for col, name in sets.items():
        rows += [{"prompt": r["prompt"], "metadata": {**r["metadata"], "column": col}}
                 for r in read_prompt_set(Path(prompt_dir) / f"{name}.jsonl")]
    return rows


@torch.no_grad()
def job_device(exp: Experiment) -> torch.device:
    """The config's ``device``, else CUDA when the job has a GPU."""
    return torch.device(exp.cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))


def generate(exp: Experiment, model: str, suite: str, out: str | Path, prompt_dir: str | Path,
             weights: str | Path | list | None = None, row: str = "base", resources: str = "resources") -> Path:
    """Sample the suite's images into the bundle ``out``. Each rollout batch is kept as it is made
    (uint8, ``<out>.parts/``), so a killed job resumes from its last complete batch; the bundle is
    then streamed from the parts (memory: one batch) and the parts removed."""
    ev = exp.cfg["evaluation"]
    ipp, seed, bs = ev[suite]["images_per_prompt"], ev["seed"], ev["batch_size"]
    device = job_device(exp)
    prompts = suite_prompts(exp, suite, prompt_dir)
    plan = RolloutPlan((), torch.zeros(0, 0, dtype=torch.long), 1)
    per_batch = max(1, bs // ipp)
    files = [] if weights is None else [weights] if isinstance(weights, (str, Path)) else list(weights)
    info = {"model": model, "row": row, "suite": suite, "images_per_prompt": ipp, "seed": seed,
            "weights": " + ".join(str(w) for w in files) or "base"}
    key = {"info": info, "per_batch": per_batch, "device": device.type,
           "prompts": hashlib.sha256(canonical_json(prompts).encode()).hexdigest(),
           "weights": [_file_stamp(w) for w in files],
           "base": _file_stamp(Path(resources) / "models" / model / MANIFEST)}
    parts = _parts_folder(out, key)
    starts = range(0, len(prompts), per_batch)
    net = None
    for start in starts:
        part = parts / f"{start:09d}.npy"
        if part.exists():
            continue
        if net is None:
            net = load_base_model(exp, model, device, Path(resources) / "models", weights=weights).eval()
        chunk = prompts[start: start + per_batch]
        ids = list(range(start, start + len(chunk)))
        ro = rollout(net, [p["prompt"] for p in chunk], ipp, plan, seed=seed, step=0, prompt_ids=ids, device=device)
        atomic_write_bytes(part, npy_bytes(to_uint8(ro.images)))
        del ro
    shape = (len(prompts) * ipp, *np.load(parts / f"{0:09d}.npy", mmap_mode="r").shape[1:])
    write_bundle(out, (np.load(parts / f"{start:09d}.npy") for start in starts), shape,
                 [p["prompt"] for p in prompts], [p["metadata"] for p in prompts],
                 [i for i in range(len(prompts)) for _ in range(ipp)], info)
    shutil.rmtree(parts)
    return Path(out)


def _file_stamp(path: str | Path) -> list[int] | None:
    """(size, mtime in ns) of a file, None without one: a rewritten input changes it."""
    if not Path(path).exists():
        return None
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _parts_folder(out: str | Path, key: dict) -> Path:
    """``<out>.parts/``, holding the batches of an earlier try with the same ``key`` (else emptied)."""
    parts = Path(f"{out}.parts")
    text = canonical_json(key)
    if parts.exists() and not ((parts / "key.json").exists() and (parts / "key.json").read_text() == text):
        shutil.rmtree(parts)
    if not parts.exists():
        atomic_write_bytes(parts / "key.json", text.encode())
    return parts


def evaluate(exp: Experiment, bundle: str | Path, suite: str, out: str | Path, model: str, reward: str | None,
             variant: str, selection: str | Path | None = None, resources: str = "resources",
             seed: int | None = None) -> dict:
    """Score one run's images (``seed``: its training seed; None for a base row). The record's
    ``row`` is the table row (``hps-mte``); the tables aggregate the records of its seeds."""
    from marpipe.rewards import build_reward
    data = open_images(bundle)
    ev = exp.cfg["evaluation"]
    images, idx = data["images"], data["prompt_index"]
    prompts = [data["prompts"][i] for i in idx]
    meta = [data["metadata"][i] for i in idx]
    specs = ev["preference"]["metrics"] if suite == "preference" else ev["compbench"]["categories"]
    scores, per_style, scorer_for, per_image = {}, {}, {}, {}
    for col, spec in specs.items():
        sel = [k for k, m in enumerate(meta) if suite == "preference" or m.get("column") == col]
        if not sel:
            continue
        fn = build_reward(spec["scorer"], device=job_device(exp),
                          **{**exp.scorer_kwargs(spec["scorer"], resources), **spec.get("kwargs", {})})
        v = []
        for s in range(0, len(sel), ev["batch_size"]):
            part = sel[s: s + ev["batch_size"]]
            # floats, not tensors, kept between batches: small tensors left on the heap fragment it
            v += (fn(from_uint8(images[part]), [prompts[k] for k in part], [meta[k] for k in part]).float().cpu()
                  * spec.get("scale", 1.0)).tolist()
        scores[col] = stats.cell_estimate(v)
        per_image[col] = {"prompt_index": [int(idx[k]) for k in sel], "value": v}
        scorer_for[col] = spec["scorer"]
        styles = defaultdict(list)
        for k, val in zip(sel, v):
            if "style" in meta[k]:
                styles[meta[k]["style"]].append(val)
        if styles:
            per_style[col] = {s: sum(x) / len(x) for s, x in sorted(styles.items())}
    images.close()
    checkpoint = read_json(selection) if selection else {"step": 0, "rule": "base"}
    row = "base" if reward is None else f"{reward}-{variant}"
    styles_of_prompt = [m.get("style") for m in data["metadata"]]
    strata = ({"by": "style", "of_prompt": styles_of_prompt}
              if suite == "preference" and styles_of_prompt and None not in styles_of_prompt else None)
    seed = None if reward is None else (exp.seeds[0] if seed is None else seed)
    record = {"model": model, "label": exp.label(model), "row": row, "reward": reward, "variant": variant,
              "seed": seed, "suite": suite, "scores": scores, "per_style": per_style, "n_images": len(images),
              "per_image": per_image, "strata": strata,
              "checkpoint": {"step": checkpoint["step"], "rule": checkpoint["rule"]},
              "scorer_for": scorer_for, "world": exp.cfg["world"]}
    write_json(out, record)
    log_scores(exp, record)
    return record


def log_scores(exp: Experiment, record: dict, tracking_uri: str | None = None) -> bool:
    """Best effort: send a score record to its MLflow run (``marpipe mlflow-sync`` replays later)."""
    from marpipe.io.tracking import MLflowRun
    from marpipe.stages.train import run_key, run_tags
    seed = record.get("seed")
    tags = {**run_tags(exp, record["model"], record["reward"], record["variant"], seed),
            "checkpoint_rule": record["checkpoint"]["rule"], "checkpoint_step": str(record["checkpoint"]["step"])}
    run = MLflowRun(run_key(record["model"], row_id(record["reward"], record["variant"], seed)), exp.cfg["experiment"],
                    tags=tags,
                    tracking_uri=tracking_uri or exp.cfg["mlflow"].get("tracking_uri"))
    if not run.active:
        return False
    # one point per evaluated checkpoint (its step): a re-sync of the same record adds nothing, a
    # record whose scores moved (changed code, same training config) adds newer points
    run.log_step(record["checkpoint"]["step"], {f"eval.{record['suite']}.{col}": v
                                                for col, v in record["scores"].items()})
    if not run.active:
        print("[marpipe] scores not in MLflow yet; `marpipe mlflow-sync` will send them", file=sys.stderr)
    return run.active
