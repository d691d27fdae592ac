"""Rewards and metrics as plain callables, registered by name.

A reward is any callable ``(images, prompts, metadata) -> Tensor[B]``:

* ``images``: float tensor ``[B, 3, H, W]`` in ``[0, 1]`` (what every model's
  ``decode`` returns);
* ``prompts``: ``list[str]`` of length ``B``;
* ``metadata``: ``list[dict]`` of length ``B`` (whatever the prompt set carries:
  category, objects, counts... ; empty dicts when there is nothing).

Factories are registered with :func:`register_reward` and built with
:func:`build_reward`, so the trainer, the CLI and the Snakemake rules only ever
name rewards (``reward: hps``), never import them.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch


class Reward(Protocol):
    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict]) -> torch.Tensor: ...


_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str):
    """Decorator: register a factory ``(**kwargs) -> Reward`` under ``name``."""
    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"reward {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory
    return deco


def available_rewards() -> list[str]:
    _import_plugins()
    return sorted(_REGISTRY)


def build_reward(name: str, **kwargs) -> Reward:
    """Build the reward registered as ``name`` (kwargs go to its factory)."""
    _import_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def _import_plugins() -> None:
    # Modules that register rewards when imported. Optional ones may be absent.
    import importlib
    for mod in ("marpipe.world.scorers", "marpipe.world.learned", "marpipe.metrics"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # only tolerate the module itself missing
            if e.name is None or not mod.startswith(e.name):
                raise


# --- simple scorers (used by tests and benchmarks) ---------------------------

@register_reward("brightness")
def brightness(target: float = 1.0) -> Reward:
    """Mean closeness of pixel intensities to ``target``: ``1 - |mean(img) - target|``."""
    def score(images, prompts, metadata):
        return 1.0 - (images.float().mean(dim=(1, 2, 3)) - target).abs()
    return score


@register_reward("redness")
def redness() -> Reward:
    """Mean of (R - (G + B) / 2): higher for redder images. A dense, smooth signal."""
    def score(images, prompts, metadata):
        x = images.float()
        return (x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])).mean(dim=(1, 2))
    return score


def combine(rewards: dict[str, Reward], weights: dict[str, float] | None = None) -> Reward:
    """Weighted sum of rewards (the paper's mixed reward is an unweighted sum)."""
    weights = weights or {}

    def score(images, prompts, metadata):
        total = None
        for name, fn in rewards.items():
            r = weights.get(name, 1.0) * fn(images, prompts, metadata).float()
            total = r if total is None else total + r
        return total
    return score
