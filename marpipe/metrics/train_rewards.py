"""Training rewards (registered in :mod:`marpipe.rewards`): ``hps``, ``git_vqa``, ``gdino``,
``mixed`` (+ ``pickscore``, ``imagereward``, ``aesthetic`` for convenience).

They follow T2I-R1 (``src/t2i-r1/src/utils/reward_{hps,git,gdino}.py``; the mixed
reward = HPS + GIT + GroundingDINO, summed unweighted by the reference trainer). The
per-prompt metadata is that of ``geneval_and_t2i_data_final.json``: ``task_type``,
``nouns``, ``attr_nouns``, ``spatial_info`` ``{obj1, obj2, locality}``, ``numeracy_info``
``[{obj_name, num}]``. Models load lazily on first call (factories are cheap).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from marpipe.rewards import combine, register_reward

from .compbench import determine_position


def _lazy(loader):
    box = []

    def get():
        if not box:
            box.append(loader())
        return box[0]
    return get


def _metric_reward(cls_path: str, weights_dir, device, batch_size, **kw):
    def load():
        import importlib
        mod, name = cls_path.rsplit(".", 1)
        return getattr(importlib.import_module(mod), name).from_pretrained(
            weights_dir, device=device, batch_size=batch_size, **kw)
    get = _lazy(load)

    def reward(images, prompts, metadata=None):
        return get().score(images, prompts)
    return reward


@register_reward("hps")
def hps_reward(weights_dir, device="cpu", batch_size=16, **kw):
    """HPS v2.1 raw cosine (T2I-R1 ``reward_hps``: diagonal of normalised features, no x100)."""
    return _metric_reward("marpipe.metrics.clip_metrics.HPSv21", weights_dir, device, batch_size, **kw)


@register_reward("pickscore")
def pickscore_reward(weights_dir, processor_dir=None, device="cpu", batch_size=16, **kw):
    """``processor_dir``: laion/CLIP-ViT-H-14-laion2B-s32B-b79K (config ``scorers.pickscore.weights``)."""
    return _metric_reward("marpipe.metrics.clip_metrics.PickScore", weights_dir, device, batch_size,
                          processor_dir=processor_dir, **kw)


@register_reward("imagereward")
def imagereward_reward(weights_dir, tokenizer_dir=None, device="cpu", batch_size=16, **kw):
    """``tokenizer_dir``: bert-base-uncased (config ``scorers.imagereward.weights``)."""
    return _metric_reward("marpipe.metrics.imagereward.ImageReward", weights_dir, device, batch_size,
                          tokenizer_dir=tokenizer_dir, **kw)


@register_reward("aesthetic")
def aesthetic_reward(weights_dir, clip_dir=None, device="cpu", batch_size=16, **kw):
    """``clip_dir``: the OpenAI CLIP ViT-L/14 backbone (config ``scorers.aesthetic.weights``)."""
    return _metric_reward("marpipe.metrics.clip_metrics.Aesthetic", weights_dir, device, batch_size,
                          clip_dir=clip_dir, **kw)


def git_vqa_score(vqa, images, metadata: Sequence[dict]) -> torch.Tensor:
    """T2I-R1 ``GIT.__call__``: 0 for spatial/numeracy prompts; else the mean yes-prob over
    ``attr_nouns`` (or ``nouns``); 1 when there is nothing to ask."""
    out = torch.zeros(images.shape[0])
    qs, who = [], []
    for i, m in enumerate(metadata):
        m = m or {}
        if m.get("task_type") in ("spatial", "numeracy"):
            continue
        items = m.get("attr_nouns") if m.get("attr_nouns") is not None else m.get("nouns")
        if not items:
            out[i] = 1.0
            continue
        qs += [f"{x}?" for x in items]
        who += [i] * len(items)
    if qs:
        p = vqa.score_questions(images[torch.tensor(who)], qs)
        for i in set(who):
            sel = torch.tensor([j for j, w in enumerate(who) if w == i])
            out[i] = p[sel].mean()
    return out


@register_reward("git_vqa")
def git_vqa_reward(weights_dir, device="cpu", batch_size=16):
    get = _lazy(lambda: __import__("marpipe.metrics.vqa", fromlist=["GitVQA"]).GitVQA.from_pretrained(
        weights_dir, device=device, batch_size=batch_size))

    def reward(images, prompts, metadata):
        return git_vqa_score(get(), images, metadata)
    return reward


# --- GroundingDINO reward (T2I-R1 reward_gdino.py) ------------------------------

#: T2I-R1 aliases of CompBench localities; "above" has no branch there and scores 0.
_GDINO_ALIASES = {"right of": "on the right of", "left of": "on the left of",
                  "below": "on the bottom of", "top of": "on the top of"}


def gdino_score(dets: list[dict], meta: dict, width: int, height: int) -> float:
    """One image. ``dets`` from the detector (pixel boxes, label = the queried noun).

    * object: fraction of ``nouns`` detected;
    * spatial: +0.2 per object detected; if both, + ``determine_position`` / 2 on the most
      confident box of each -- on boxes in NORMALISED [0,1] coordinates as the reference
      (so the 150 distance threshold of "near" always passes);
    * numeracy: per object (weight 1/n): NMS(0.5) count == expected -> 1, detected but
      wrong count -> 0.2, absent -> 0.
    """
    from torchvision.ops import nms
    nouns = meta.get("nouns") or []
    if not nouns:
        return 1.0
    labels = [d["label"] for d in dets]
    task = meta.get("task_type")
    if task == "spatial":
        si = meta["spatial_info"]
        s = sum(0.2 for o in (si["obj1"], si["obj2"]) if o in labels)
        if abs(s - 0.4) < 1e-9:
            def best(o):
                d = max((d for d in dets if d["label"] == o), key=lambda d: d["score"])
                b = d["box"]
                return [b[0] / width, b[1] / height, b[2] / width, b[3] / height]
            loc = _GDINO_ALIASES.get(si["locality"], si["locality"])
            s += determine_position(loc, best(si["obj1"]), best(si["obj2"])) / 2
        return float(s)
    if task == "numeracy":
        info = meta["numeracy_info"]
        w, s = 1.0 / len(info), 0.0
        for item in info:
            ds = [d for d in dets if d["label"] == item["obj_name"]]
            if not ds:
                continue
            keep = nms(torch.tensor([d["box"] for d in ds], dtype=torch.float32),
                       torch.tensor([d["score"] for d in ds], dtype=torch.float32), 0.5)
            s += w * (1.0 if keep.numel() == item["num"] else 0.2)
        return s
    return sum(1.0 / len(nouns) for n in nouns if n in labels)


@register_reward("gdino")
def gdino_reward(weights_dir, device="cpu", box_threshold=0.3):
    get = _lazy(lambda: __import__("marpipe.metrics.detection", fromlist=["ZeroShotDetector"])
                .ZeroShotDetector.from_pretrained(weights_dir, device=device, box_threshold=box_threshold))

    def reward(images, prompts, metadata):
        metadata = [m or {} for m in metadata]
        dets = get().detect(images, [m.get("nouns") or [] for m in metadata])
        h, w = images.shape[-2:]
        return torch.tensor([gdino_score(d, m, w, h) for d, m in zip(dets, metadata)])
    return reward


@register_reward("mixed")
def mixed_reward(weights: dict | None = None, components: dict | None = None, **shared):
    """Sum of rewards. ``components``: ``{name: kwargs}`` (default hps + git_vqa + gdino,
    each needing ``weights_dir`` in its kwargs); ``weights``: ``{name: w}`` (default 1 =
    the reference's unweighted sum)."""
    from marpipe.rewards import build_reward
    components = components or {"hps": {}, "git_vqa": {}, "gdino": {}}
    built = {n: build_reward(n, **{**shared, **(kw or {})}) for n, kw in components.items()}
    return combine(built, weights)


@register_reward("compbench")
def compbench_reward(category: str, vqa_dir=None, clip_dir=None, detector_dir=None, depth_dir=None,
                     device="cpu", **_):
    """One T2I-CompBench category as a per-image scorer (the category's models load on first call).

    Each image is scored against its own prompt, so the per-image scores averaged by the
    evaluate stage equal the category score however images are batched.
    """
    from marpipe.metrics.compbench import evaluate_category
    needs = {"color": ("vqa",), "shape": ("vqa",), "texture": ("vqa",), "non_spatial": ("clip",),
             "spatial": ("detector",), "3d_spatial": ("detector", "depth"), "numeracy": ("detector",),
             "complex": ("vqa", "clip", "detector")}
    if category not in needs:
        raise KeyError(f"unknown T2I-CompBench category {category!r}; known: {', '.join(needs)}")
    dirs = {"vqa": vqa_dir, "clip": clip_dir, "detector": detector_dir, "depth": depth_dir}
    models: dict = {}

    def load():
        from marpipe.metrics import load_metric
        from marpipe.metrics.detection import DepthEstimator, ZeroShotDetector
        loaders = {"vqa": lambda d: load_metric("blip_vqa", d, device=device),
                   "clip": lambda d: load_metric("clip_b32", d, device=device),
                   "detector": lambda d: ZeroShotDetector.from_pretrained(d, device=device),
                   "depth": lambda d: DepthEstimator.from_pretrained(d, device=device)}
        for part in needs[category]:
            if dirs[part] is None:
                raise ValueError(f"compbench {category}: needs {part}_dir (config scorers.compbench)")
            models[part] = loaders[part](dirs[part])

    def score(images, prompts, metadata):
        if not models:
            load()
        out = evaluate_category(category, images, list(prompts), list(range(len(prompts))),
                                metadata=list(metadata), **models)
        return torch.tensor(out["per_image"], dtype=torch.float32)
    return score
