"""Verify a fetched base model right after download: the conformance suite and a sample grid,
so that a broken environment fails in minutes, not after a day of training.

The checks draw test inputs from the global torch RNG, so it is seeded first (config ``seed``):
the JSON's numeric details are then the same in every run on the same machine type."""
from __future__ import annotations

from pathlib import Path

import torch

from marpipe.experiment import Experiment
from marpipe.io.files import write_json
from marpipe.models.conformance import check_model
from marpipe.rollout import sample_images
from marpipe.stages.resources import load_base_model


def verify_base_model(exp: Experiment, model: str, out_json: str | Path, out_grid: str | Path,
                      root: str | Path = "resources/models", n_prompts: int = 8) -> bool:
    from marpipe.stages.figures import prompt_grid
    device = exp.cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    net = load_base_model(exp, model, device, root)
    torch.manual_seed(exp.cfg["seed"])
    results = check_model(net, device=device)
    prompts = ["a red circle", "a blue square left of a green circle", "two yellow triangles",
               "a purple striped square", "a cat on a sofa", "a photo of a mountain lake",
               "three dotted circles", "an orange cross above a blue circle"][:n_prompts]
    images = sample_images(net, prompts, seed=exp.cfg["seed"], images_per_prompt=1, device=device)
    label = exp.label(model) if exp.label(model) == model else f"{exp.label(model)} ({model})"
    prompt_grid(images.float().cpu(), prompts, out_grid, label=label)   # 128-px tiles, prompts on top
    ok = all(passed for _, passed, _ in results)
    write_json(out_json, {"model": model, "passed": ok,
                          "checks": [{"name": n, "passed": p, "detail": d} for n, p, d in results]})
    for name, passed, detail in results:
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}")
    if not ok:
        print(f"[marpipe] {model}: conformance FAILED; see {out_json}")
    return ok
