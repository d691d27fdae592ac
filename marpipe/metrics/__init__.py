"""Real evaluation metrics and reward models (HPS v2.1, PickScore, Aesthetic, ImageReward,
T2I-CompBench parts), loaded offline from local weights folders:
``load_metric("hps", weights_dir, device="cuda").score(images, prompts)`` gives ``Tensor[B]``.
Importing this package is cheap (:mod:`marpipe.rewards` imports it to register ``hps``,
``git_vqa``, ``gdino``, ``mixed``, ...): open_clip, transformers and weights are touched only by
``from_pretrained``."""
from __future__ import annotations

from . import train_rewards  # noqa: F401  (registers rewards; imports torch only)
from .base import Metric, WeightsError

#: metric name -> "module.Class" (lazy)
METRICS = {
    "hps": "marpipe.metrics.clip_metrics.HPSv21",
    "pickscore": "marpipe.metrics.clip_metrics.PickScore",
    "aesthetic": "marpipe.metrics.clip_metrics.Aesthetic",
    "imagereward": "marpipe.metrics.imagereward.ImageReward",
    "clip_b32": "marpipe.metrics.clip_metrics.ClipScore",
    "blip_vqa": "marpipe.metrics.vqa.BlipVQA",
    "git_vqa": "marpipe.metrics.vqa.GitVQA",
}


def metric_class(name: str):
    import importlib
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    mod, cls = METRICS[name].rsplit(".", 1)
    return getattr(importlib.import_module(mod), cls)


def load_metric(name: str, weights_dir, **kw) -> Metric:
    return metric_class(name).from_pretrained(weights_dir, **kw)


__all__ = ["METRICS", "Metric", "WeightsError", "load_metric", "metric_class"]
