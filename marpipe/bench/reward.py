"""``marpipe bench reward-rise`` and ``marpipe bench warmup``: does a variant's GRPO raise a simple
reward from a pre-trained tiny model, and what does the head warm-up (AR frozen) do to each base
model's reward, quality and grain, measured on held-out world prompts before and after. What they
measured: docs/method.md, docs/results.md.
"""
from __future__ import annotations

import json
import statistics
import tempfile

import torch

from marpipe.bench.train import VARIANTS
from marpipe.config import GRPOConfig
from marpipe.models.registry import model_family
from marpipe.rewards import build_reward
from marpipe.trainer import PromptItem, Trainer

# reward-rise trains the demo's model at its own 8 AR x 10 head steps, the paper's shares trained
RISE = dict(group_size=4, prompts_per_step=3, train_ar_steps=2, train_diffusion_steps=4)


def _held_out(n: int):
    """``n`` unseen style prompts (texts, metadata): the held-out set of both reward benches."""
    from marpipe.world.prompts import make_split
    test = make_split("style", n, seed=1)
    return [m["prompt"] for m in test], test


def _train_prompts() -> list[PromptItem]:
    from marpipe.world.prompts import make_split
    return [PromptItem(m["prompt"], m) for m in make_split("train", 2000)]


def total_variation(images: torch.Tensor) -> float:
    """Mean absolute difference of neighbouring pixels: the grain of noisy samples."""
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return float((dx + dy) / 2)


def bench_reward_rise(weights: str, steps: int = 30, seeds=(0, 1), reward: str = "redness", lr: float = 3e-4,
                      held_out: int = 24, as_json: bool = False, device: str | None = None,
                      preset: str = "paper") -> dict:
    """``marpipe bench reward-rise``: does each variant raise a simple reward?

    Trains every variant for ``steps`` steps from the same pre-trained tiny model
    (``weights``) on the world's training prompts, once per seed, and reports the
    mean training reward of the first and last five steps and the mean reward of
    images sampled (fixed seed) for ``held_out`` unseen style prompts before and after;
    the loss assembled by ``preset`` (``paper`` | ``reference``, the reference trainer of the
    model's family). The per-step reward, KL and gradient norm (before clipping) of every run
    are in the report's ``curves``; the table adds the last five steps' KL and the median norm.
    """
    from marpipe.models.registry import load_model
    from marpipe.rollout import sample_images

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    score = build_reward(reward)
    train = _train_prompts()
    texts, meta = _held_out(held_out)

    def held_out_reward(model) -> float:
        images = sample_images(model, texts, seed=0, device=device)
        return float(score(images, texts, meta).mean())

    base = load_model(weights, device=device)
    family = model_family(base)
    before = held_out_reward(base)
    report = {"weights": weights, "reward": reward, "steps": steps, "lr": lr, "preset": preset,
              "model_family": family, "held_out_before": before, "runs": {}, "curves": {}}
    for variant in VARIANTS:
        for seed in seeds:
            model = load_model(weights, device=device)
            cfg = GRPOConfig(**RISE, lr=lr, **VARIANTS[variant], steps=steps, save_every=10**6, seed=seed,
                             preset=preset, model_family=family)
            with tempfile.TemporaryDirectory() as d:
                rows = Trainer(model, cfg, train, score, d, device=device, progress=False).train()
            curves = {k: [row[k] for row in rows] for k in ("reward_mean", "kl", "grad_norm")}
            r = curves["reward_mean"]
            report["curves"][f"{variant}/seed{seed}"] = curves
            report["runs"][f"{variant}/seed{seed}"] = {
                "train_first5": statistics.mean(r[:5]), "train_last5": statistics.mean(r[-5:]),
                "held_out_after": held_out_reward(model), "kl_last5": statistics.mean(curves["kl"][-5:]),
                "grad_norm_median": statistics.median(curves["grad_norm"])}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{reward} reward, {steps} steps at lr {lr}, preset {preset} ({family}); held-out: {held_out} "
              f"style prompts, before training {before:.4f}")
        print(f"  {'variant/seed':<18} {'train first 5':>14} {'train last 5':>13} {'held-out after':>15} "
              f"{'KL last 5':>10} {'median |g|':>11}")
        for key, r in report["runs"].items():
            print(f"  {key:<18} {r['train_first5']:>14.4f} {r['train_last5']:>13.4f} {r['held_out_after']:>15.4f} "
                  f"{r['kl_last5']:>10.2e} {r['grad_norm_median']:>11.3g}")
    return report


def bench_warmup(models: dict, cfg: GRPOConfig, reward, scorers: dict | None = None,
                 held_out: int = 48, as_json: bool = False, device: str | None = None) -> dict:
    """``marpipe bench warmup``: what the head warm-up (GRPO, AR frozen) does to each model.

    ``models`` maps a name to a loaded base model (on ``device``); each is measured,
    warmed up in place with ``cfg`` on the world's training prompts, and measured again. A measurement samples one
    image (fixed seed) for each of ``held_out`` unseen style prompts and reports the
    warm-up's ``reward``, every extra scorer in ``scorers`` (name -> reward callable)
    and the images' total variation (renders of the same prompts give the clean level).
    """
    from marpipe.rollout import sample_images
    from marpipe.world import render

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scorers = {"reward": reward, **(scorers or {})}
    texts, meta = _held_out(held_out)
    train = _train_prompts()

    def measure(images) -> dict:
        out = {k: float(f(images, texts, meta).mean()) for k, f in scorers.items()}
        return {**out, "total_variation": total_variation(images)}

    report = {"steps": cfg.steps, "lr": cfg.lr, "held_out": held_out,
              "renders": measure(render(meta, 0)), "models": {}}
    for name, model in models.items():
        before = measure(sample_images(model, texts, seed=0, device=device))
        with tempfile.TemporaryDirectory() as d:
            rows = Trainer(model, cfg, train, reward, d, device=device, progress=False).train()
        r = [row["reward_mean"] for row in rows]
        k = max(1, min(5, len(r) // 2))
        report["models"][name] = {"before": before, "after": measure(sample_images(model, texts, seed=0, device=device)),
                                  "train_first": statistics.mean(r[:k]), "train_last": statistics.mean(r[-k:])}
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    cols = list(report["renders"])
    print(f"head warm-up: {cfg.steps} steps at lr {cfg.lr}, AR frozen; held-out: {held_out} style prompts")
    print(f"  {'':<24}" + "".join(f"{c:>16}" for c in cols))
    print(f"  {'renders (clean)':<24}" + "".join(f"{report['renders'][c]:>16.4f}" for c in cols))
    for name, m in report["models"].items():
        for when in ("before", "after"):
            print(f"  {name + ' ' + when:<24}" + "".join(f"{m[when][c]:>16.4f}" for c in cols))
        print(f"  {name}: training reward {m['train_first']:.4f} -> {m['train_last']:.4f}")
    return report
