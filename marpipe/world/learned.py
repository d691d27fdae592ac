"""Learned scorers of the small world: a tiny open_clip CLIP and a quality MLP.

The world CLIP (HPS / PickScore / CLIP role) is a real ``open_clip.CLIP`` from a tiny config,
saved and loaded as an open_clip ``local-dir`` folder, so rewards run open_clip's own feature and
cosine path; the quality MLP (LAION-Aesthetic role) scores its image embedding. Rewards:
``world_hps``, ``world_pickscore``, ``world_aesthetic``, ``world_mixed`` (the paper's HPS + GIT +
GroundingDINO mix); :func:`train_scorers` trains and writes both models."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from marpipe.rewards import Reward, build_reward, combine, register_reward
from marpipe.world.prompts import CATEGORIES, STYLES, make_split
from marpipe.world.render import PIXEL_CORRUPTIONS, corrupt, mismatch_metadata, render

CLIP_SUBDIR = "clip"
QUALITY_SUBDIR = "aesthetic"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def world_clip_config(embed_dim: int = 64, vision_width: int = 64, vision_layers: int = 2,
                      text_width: int = 64, text_layers: int = 2, context_length: int = 32) -> dict:
    """``model_cfg`` of the tiny world CLIP (open_clip's CLIP constructor arguments)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": vision_width,
                       "layers": vision_layers, "head_width": 32, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                     "heads": max(1, text_width // 32), "layers": text_layers, "mlp_ratio": 2.0},
    }


def preprocess_config(image_size: int = 32) -> dict:
    return {"size": image_size, "mode": "RGB", "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
            "interpolation": "bicubic", "resize_mode": "squash", "fill_color": 0}


# --- the world CLIP ------------------------------------------------------------------

@dataclass
class WorldClip:
    """An open_clip CLIP with its tokenizer and preprocessing (tensor in, features out)."""
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> normalised model input (resized if needed)."""
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic",
                              align_corners=False, antialias=True).clamp(0, 1)
        return (x - self.mean.to(x)) / self.std.to(x)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.preprocess(images), normalize=True)

    def text_features(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(prompts)).to(device), normalize=True)

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``[B]`` cosine of normalised image and text features (HPS's score, unscaled)."""
        return (self.image_features(images) * self.text_features(prompts, images.device)).sum(-1)


def new_world_clip(model_cfg: dict | None = None, seed: int = 0) -> WorldClip:
    """A freshly initialised world CLIP built by open_clip's own classes."""
    import open_clip
    cfg = model_cfg or world_clip_config()
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    tokenizer = open_clip.get_tokenizer("", context_length=cfg["text_cfg"]["context_length"])
    pre = preprocess_config(cfg["vision_cfg"]["image_size"])
    return WorldClip(model, tokenizer, pre["size"], torch.tensor(pre["mean"]).view(1, 3, 1, 1),
                     torch.tensor(pre["std"]).view(1, 3, 1, 1))


def save_world_clip(clip: WorldClip, model_cfg: dict, directory: str | Path) -> Path:
    """Write an open_clip ``local-dir`` folder: ``open_clip_config.json`` + ``model.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_config(clip.image_size)}
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in clip.model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    return directory


def load_world_clip(directory: str | Path, device: str | torch.device = "cpu") -> WorldClip:
    """Load a saved world CLIP through open_clip's ``local-dir:`` schema (strict weights)."""
    import open_clip
    directory = resolve_clip_dir(directory)
    model = open_clip.create_model(f"local-dir:{directory}", device=device, load_weights=True)
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{directory}")
    pre = json.loads((directory / "open_clip_config.json").read_text())["preprocess_cfg"]
    return WorldClip(model, tokenizer, int(pre["size"]), torch.tensor(pre["mean"]).view(1, 3, 1, 1),
                     torch.tensor(pre["std"]).view(1, 3, 1, 1))


def resolve_clip_dir(path: str | Path) -> Path:
    """Accept either the CLIP folder itself or a :func:`train_scorers` output folder."""
    path = Path(path)
    if (path / "open_clip_config.json").is_file():
        return path
    if (path / CLIP_SUBDIR / "open_clip_config.json").is_file():
        return path / CLIP_SUBDIR
    raise FileNotFoundError(f"no world CLIP (open_clip_config.json) in {path} or {path / CLIP_SUBDIR}")


# --- the quality MLP -----------------------------------------------------------------

class QualityMLP(torch.nn.Module):
    """LAION-aesthetic-shaped head on a normalised CLIP image embedding.

    LAION's predictor is 768-1024-128-64-16-1 with dropout and no activations;
    here the widths are scaled to the 64-d world embedding (64-128-32-16-1) and
    GELUs are added, which a 64-d embedding needs to separate corruptions.
    """

    def __init__(self, embed_dim: int = 64, hidden: Sequence[int] = (128, 32, 16),
                 dropout: Sequence[float] = (0.2, 0.2, 0.1)):
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = embed_dim
        for h, p in zip(hidden, dropout):
            layers += [torch.nn.Linear(width, h), torch.nn.GELU(), torch.nn.Dropout(p)]
            width = h
        layers.append(torch.nn.Linear(width, 1))
        self.layers = torch.nn.Sequential(*layers)
        self.config = {"embed_dim": embed_dim, "hidden": list(hidden), "dropout": list(dropout)}

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding).squeeze(-1)


def save_quality(mlp: QualityMLP, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(mlp.config, indent=2))
    save_file({k: v.detach().cpu().contiguous() for k, v in mlp.state_dict().items()},
              str(directory / "model.safetensors"))
    return directory


def load_quality(directory: str | Path, device: str | torch.device = "cpu") -> QualityMLP:
    """Load a saved quality MLP (strict)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        directory = directory / QUALITY_SUBDIR
    mlp = QualityMLP(**json.loads((directory / "config.json").read_text()))
    mlp.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return mlp.to(device).eval()


# --- training data ------------------------------------------------------------------

@dataclass
class ContrastiveBatch:
    images: torch.Tensor        # [2B, 3, 32, 32]: clean renders of prompts, then of mismatched prompts
    texts: list[str]            # [2B] matching prompts
    extra_images: torch.Tensor  # [B, 3, 32, 32]: corrupted clean renders (negatives only)


def contrastive_batch(pool: Sequence[dict], batch_size: int, rng: np.random.Generator) -> ContrastiveBatch:
    """Sample prompts from ``pool`` and build (positives, hard negatives) for one step."""
    idx = rng.choice(len(pool), size=batch_size, replace=False)
    metas = [pool[i] for i in idx]
    wrong = [mismatch_metadata(m, rng) for m in metas]
    seeds = [int(s) for s in rng.integers(0, 2 ** 31, size=2 * batch_size)]
    clean = render(metas, seeds[:batch_size])
    mismatched = render(wrong, seeds[batch_size:])
    corrupted = corrupt_mixed(clean, rng)[0]
    return ContrastiveBatch(torch.cat([clean, mismatched]),
                            [m["prompt"] for m in metas] + [w["prompt"] for w in wrong], corrupted)


def corrupt_mixed(images: torch.Tensor, rng: np.random.Generator,
                  min_strength: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image corrupted by a random kind and strength; returns (images, strengths)."""
    out, strengths = [], []
    for img in images:
        kind = PIXEL_CORRUPTIONS[int(rng.integers(len(PIXEL_CORRUPTIONS)))]
        s = float(rng.uniform(min_strength, 1.0))
        out.append(corrupt(img[None], kind, int(rng.integers(2 ** 31)), s))
        strengths.append(s)
    return torch.cat(out), torch.tensor(strengths)


def contrastive_loss(clip: WorldClip, batch: ContrastiveBatch) -> torch.Tensor:
    """Symmetric CLIP loss; texts also compete against the corrupted renders."""
    img = clip.image_features(torch.cat([batch.images, batch.extra_images]))
    txt = clip.text_features(batch.texts)
    n = txt.shape[0]
    scale = clip.model.logit_scale.exp().clamp(max=100.0)
    logits_i2t = scale * img[:n] @ txt.T
    logits_t2i = scale * txt @ img.T
    target = torch.arange(n)
    return 0.5 * (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits_t2i, target))


def heldout_pool(n: int, seed: int) -> list[dict]:
    """Held-out prompts: every val category and every style, equally."""
    names = [f"val_{c}" for c in CATEGORIES] + [f"style_{s}" for s in STYLES]
    per = max(1, math.ceil(n / len(names)))
    pool = [m for i, name in enumerate(names) for m in make_split(name, per, seed + i)]
    return pool[:n]


# --- evaluation ---------------------------------------------------------------------

@torch.no_grad()
def clip_accuracy(clip: WorldClip, metas: Sequence[dict], seed: int) -> dict[str, float]:
    """Fraction of held-out pairs where the clean matching pair scores higher than a negative.

    ``mismatched_text``: same image, minimally changed prompt;
    ``mismatched_image``: same prompt, render of the changed prompt;
    ``<corruption>``: same prompt, corrupted render.
    """
    rng = np.random.default_rng(seed)
    texts = [m["prompt"] for m in metas]
    wrong = [mismatch_metadata(m, rng) for m in metas]
    clean = render(list(metas), [seed + i for i in range(len(metas))])
    pos = clip.cosine(clean, texts)
    acc = {
        "mismatched_text": (pos > clip.cosine(clean, [w["prompt"] for w in wrong])).float().mean().item(),
        "mismatched_image": (pos > clip.cosine(render(wrong, seed + 10_000), texts)).float().mean().item(),
    }
    for kind in PIXEL_CORRUPTIONS:
        acc[kind] = (pos > clip.cosine(corrupt(clean, kind, seed), texts)).float().mean().item()
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


@torch.no_grad()
def quality_accuracy(clip: WorldClip, mlp: QualityMLP, metas: Sequence[dict], seed: int) -> dict[str, float]:
    """Fraction of held-out renders scored above their corrupted version (per corruption)."""
    clean = render(list(metas), [seed + i for i in range(len(metas))])
    base = mlp(clip.image_features(clean))
    acc = {kind: (base > mlp(clip.image_features(corrupt(clean, kind, seed)))).float().mean().item()
           for kind in PIXEL_CORRUPTIONS}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


# --- training -----------------------------------------------------------------------

def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_clip(steps: int, seed: int = 0, batch_size: int = 32, lr: float = 2e-3,
               model_cfg: dict | None = None, pool_size: int = 4000,
               log_every: int = 0) -> tuple[WorldClip, list[float]]:
    """Train a world CLIP from scratch; returns it (eval mode) and the per-step losses. CLIP's
    contrastive loss on (render, prompt) pairs plus hard negatives: texts and renders of a minimally
    changed prompt (:func:`~marpipe.world.render.mismatch_metadata`) and corrupted renders. The
    49408-row token table keeps its random init (only ~40 words occur; updating it would dominate
    CPU step time)."""
    cfg = model_cfg or world_clip_config()
    clip = new_world_clip(cfg, seed)
    pool = make_split("train", pool_size, seed)
    rng = np.random.default_rng([seed, 1])
    # The 49408 x width token table stays at its random init: the world uses ~40
    # words, and updating the whole table would dominate the step time on CPU.
    clip.model.token_embedding.requires_grad_(False)
    params = [(n, p) for n, p in clip.model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    losses: list[float] = []
    clip.model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=max(1, steps // 20))
        loss = contrastive_loss(clip, contrastive_batch(pool, batch_size, rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[world clip] step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    clip.model.eval()
    return clip, losses


def train_quality(clip: WorldClip, steps: int, seed: int = 0, n_images: int = 1024,
                  batch_size: int = 128, lr: float = 1e-3) -> tuple[QualityMLP, list[float]]:
    """Fit the quality MLP on frozen CLIP embeddings of clean and corrupted renders, regressing 1
    for clean renders and ``1 - strength`` for corrupted ones."""
    rng = np.random.default_rng([seed, 2])
    metas = make_split("train", n_images, seed + 1)
    clean = render(metas, [int(s) for s in rng.integers(0, 2 ** 31, size=n_images)])
    bad, strength = corrupt_mixed(clean, rng, min_strength=0.2)
    with torch.no_grad():
        emb = torch.cat([clip.image_features(clean), clip.image_features(bad)])
    target = torch.cat([torch.ones(n_images), 1.0 - strength])
    torch.manual_seed(seed)
    mlp = QualityMLP(embed_dim=emb.shape[1])
    opt = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    mlp.train()
    for _ in range(steps):
        idx = torch.randint(0, emb.shape[0], (batch_size,), generator=gen)
        loss = F.mse_loss(mlp(emb[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return mlp.eval(), losses


def train_scorers(out_dir: str | Path, seed: int = 0, steps: int = 1000, quality_steps: int = 1500,
                  batch_size: int = 32, eval_pairs: int = 240, threads: int | None = 1,
                  log_every: int = 100, model_cfg: dict | None = None, pool_size: int = 4000,
                  quality_images: int = 1024) -> dict:
    """Train the world CLIP and the quality MLP, write them under ``out_dir``.

    Layout: ``out_dir/clip/`` (open_clip local-dir), ``out_dir/aesthetic/``,
    ``out_dir/metrics.json`` (held-out accuracies, losses, timings). Returns the
    metrics dict and prints the accuracies.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    t0 = time.time()
    model_cfg = model_cfg or world_clip_config()
    clip, clip_losses = train_clip(steps, seed, batch_size, model_cfg=model_cfg, pool_size=pool_size,
                                   log_every=log_every)
    t_clip = time.time() - t0
    t1 = time.time()
    mlp, quality_losses = train_quality(clip, quality_steps, seed, n_images=quality_images)
    t_quality = time.time() - t1
    save_world_clip(clip, model_cfg, out_dir / CLIP_SUBDIR)
    save_quality(mlp, out_dir / QUALITY_SUBDIR)
    heldout = heldout_pool(eval_pairs, seed + 100)
    metrics = {
        "seed": seed, "steps": steps, "quality_steps": quality_steps, "batch_size": batch_size,
        "clip_accuracy": clip_accuracy(clip, heldout, seed + 200),
        "quality_accuracy": quality_accuracy(clip, mlp, heldout, seed + 300),
        "clip_loss_first": float(np.mean(clip_losses[:20])), "clip_loss_last": float(np.mean(clip_losses[-20:])),
        "quality_loss_last": float(np.mean(quality_losses[-50:])),
        "train_seconds_clip": t_clip, "train_seconds_quality": t_quality,
        "torch_threads": torch.get_num_threads(), "eval_pairs": len(heldout),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"[world scorers] clip accuracy {json.dumps(metrics['clip_accuracy'])}")
    print(f"[world scorers] quality accuracy {json.dumps(metrics['quality_accuracy'])}")
    print(f"[world scorers] train time clip {t_clip:.1f}s quality {t_quality:.1f}s")
    return metrics


# --- rewards ------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _cached_clip(directory: str, device: str) -> WorldClip:
    return load_world_clip(directory, device)


@lru_cache(maxsize=8)
def _cached_quality(directory: str, device: str) -> QualityMLP:
    return load_quality(directory, device)


def clip_cosine_reward(weights_dir: str | Path) -> Reward:
    """``(images, prompts, metadata) -> [B]`` raw cosine of the world CLIP."""
    directory = str(resolve_clip_dir(weights_dir))

    @torch.no_grad()
    def score(images, prompts, metadata):
        clip = _cached_clip(directory, str(images.device))
        return clip.cosine(images, prompts)
    return score


@register_reward("world_hps")
def world_hps(weights_dir: str) -> Reward:
    """HPS role: raw cosine of the learned world CLIP, in [-1, 1] (``weights_dir``: train_scorers output or its clip/)."""
    return clip_cosine_reward(weights_dir)


@register_reward("world_pickscore")
def world_pickscore(weights_dir: str) -> Reward:
    """PickScore role: ``logit_scale.exp() * cosine`` of the world CLIP (PickScore's formula)."""
    directory = str(resolve_clip_dir(weights_dir))

    @torch.no_grad()
    def score(images, prompts, metadata):
        clip = _cached_clip(directory, str(images.device))
        return clip.model.logit_scale.exp() * clip.cosine(images, prompts)
    return score


@register_reward("world_aesthetic")
def world_aesthetic(weights_dir: str) -> Reward:
    """LAION-aesthetic role: quality MLP on the world CLIP image embedding (~1 clean, ~0 corrupted)."""
    clip_dir = str(resolve_clip_dir(weights_dir))
    root = Path(weights_dir)
    quality_dir = str(root if (root / "config.json").is_file() else root / QUALITY_SUBDIR)

    @torch.no_grad()
    def score(images, prompts, metadata):
        clip = _cached_clip(clip_dir, str(images.device))
        mlp = _cached_quality(quality_dir, str(images.device))
        return mlp(clip.image_features(images))
    return score


@register_reward("world_mixed")
def world_mixed(weights_dir: str, w_hps: float = 1.0, w_vqa: float = 1.0, w_detect: float = 1.0) -> Reward:
    """The paper's mixed reward in the world: world_hps + world_vqa + world_detect (weights configurable)."""
    parts = {"hps": world_hps(weights_dir), "vqa": build_reward("world_vqa"),
             "detect": build_reward("world_detect")}
    return combine(parts, {"hps": w_hps, "vqa": w_vqa, "detect": w_detect})


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m marpipe.world.learned OUT_DIR [--seed S] [--steps N] ...``"""
    import argparse
    parser = argparse.ArgumentParser(description="Train the small world's learned scorers.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--quality-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-pairs", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    train_scorers(args.out_dir, seed=args.seed, steps=args.steps, quality_steps=args.quality_steps,
                  batch_size=args.batch_size, eval_pairs=args.eval_pairs, threads=args.threads)


if __name__ == "__main__":
    main()
