"""Rewards and metrics as plain callables, registered by name.

A reward is any callable ``(images, prompts, metadata) -> Tensor[B]``: float images ``[B, 3, H,
W]`` in ``[0, 1]`` (what every model's ``decode`` returns), ``B`` prompt strings and ``B``
metadata dicts (whatever the prompt set carries; empty when nothing). Factories are registered
with :func:`register_reward` and built with :func:`build_reward`, so the trainer, the CLI and the
Snakemake rules only ever name rewards (``reward: hps``), never import them."""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

# Modules that register rewards when imported. Their names are read from the source
# (``@register_reward("name")``) so that listing them (config validation, at Snakefile
# parse time) needs no import of torch; a module is imported when one of its rewards is built.
PLUGINS = ("marpipe.world.scorers", "marpipe.world.learned", "marpipe.metrics.train_rewards")
_DECLARED = re.compile(r"""@register_reward\(\s*["']([^"']+)["']""")


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


def _plugin_path(module: str) -> Path:
    return Path(__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")


def _declared() -> dict[str, str]:
    """Reward name -> plugin module, read from the plugins' source."""
    out = {}
    for module in PLUGINS:
        path = _plugin_path(module)
        if path.exists():
            out.update({name: module for name in _DECLARED.findall(path.read_text())})
    return out


def available_rewards() -> list[str]:
    """Every reward name that :func:`build_reward` can build (imports nothing heavy)."""
    return sorted(set(_REGISTRY) | set(_declared()))


def build_reward(name: str, device=None, **kwargs) -> Reward:
    """Build the reward registered as ``name`` (kwargs go to its factory). ``device``: where a
    scorer with weights runs (the training / evaluation job's device), for factories that take one."""
    if name not in _REGISTRY and name in _declared():
        import importlib
        importlib.import_module(_declared()[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(available_rewards())}")
    factory = _REGISTRY[name]
    if device is not None and "device" in inspect.signature(factory).parameters:
        kwargs["device"] = str(device)
    return factory(**kwargs)


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
