"""Shared machinery for the real metrics / reward models (:class:`Metric`).

Every metric loads **offline** from a local folder (``from_pretrained``, failing with a
:class:`WeightsError` that names the missing or mismatched file or key and the fix), scores float
images ``[B, 3, H, W]`` in ``[0, 1]`` in chunks of ``batch_size`` under bf16 autocast on CUDA
(``score``), and is a reward (``__call__(images, prompts, metadata)``, :mod:`marpipe.rewards`).
Nothing heavy is imported here: ``open_clip`` / ``transformers`` only inside the loaders."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch


class WeightsError(RuntimeError):
    """A weights folder is missing, incomplete or does not fit the architecture."""


#: metric name -> its folder's key under ``weights:`` in config.yaml, where they differ
WEIGHTS_KEY = {"detector": "gdino"}


def fix_hint(metric: str, weights_dir: str | os.PathLike | None = None, kwarg: str | None = None) -> str:
    """How to (re)download a weights folder: ``marpipe fetch-weights <key>`` (the snakemake
    rule ``download_weights``). ``<key>`` is the folder's name when it lies in
    ``resources/metrics/`` (or when it is a second folder, ``kwarg``), else the metric's usual key.
    ``kwarg``: a scorer's second folder (e.g. ``tokenizer_dir``), named in the config as
    ``scorers.<metric>.weights.<kwarg>``."""
    key = WEIGHTS_KEY.get(metric, metric)
    if weights_dir is not None and (kwarg or Path(weights_dir).parent.name == "metrics"):
        key = Path(weights_dir).name
    where = f"it is config `scorers.{metric}.weights.{kwarg}`; " if kwarg else ""
    return (f"{where}download it: `marpipe fetch-weights {key}` (or `snakemake "
            f"resources/metrics/{key}/MANIFEST.sha256`; {key} = the folder's key under `weights:` "
            f"in the config)")


def require_dir(path: str | os.PathLike | None, metric: str, kwarg: str, what: str) -> Path:
    """A scorer's second folder (``kwarg``, e.g. ``tokenizer_dir``), or a :class:`WeightsError`
    naming the config key that should set it."""
    if path is None:
        raise WeightsError(f"[{metric}] no {what} folder given: set config `scorers.{metric}.weights."
                           f"{kwarg}` to the `weights:` entry that downloads it")
    return Path(path)


def require_file(weights_dir: str | os.PathLike, names: str | Sequence[str], metric: str,
                 kwarg: str | None = None) -> Path:
    """Return the first of ``names`` that exists in ``weights_dir``; else raise a clear error
    (``kwarg``: the folder is the scorer's ``kwarg`` folder, see :func:`fix_hint`)."""
    d = Path(weights_dir)
    names = [names] if isinstance(names, str) else list(names)
    if not d.is_dir():
        raise WeightsError(f"[{metric}] weights folder {str(d)!r} does not exist; {fix_hint(metric, d, kwarg)}")
    for n in names:
        if (d / n).exists():
            return d / n
    raise WeightsError(f"[{metric}] missing file {' or '.join(repr(n) for n in names)} in "
                       f"{str(d)!r}; {fix_hint(metric, d, kwarg)}")


def read_json(path: Path | None) -> dict:
    if path is None or not Path(path).exists():
        return {}
    with open(path) as f:
        return json.load(f)


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file or a torch checkpoint (weights only) as a flat state dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return obj


def load_state_dict_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *,
                           metric: str, source: str | os.PathLike,
                           ignore_unexpected: Iterable[str] = ()) -> None:
    """``load_state_dict`` that reports missing / unexpected / shape-mismatched keys clearly.

    ``ignore_unexpected``: key prefixes known to be present in the official checkpoint
    but unused at inference (documented per metric).
    """
    ignore = tuple(ignore_unexpected)
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        def head(xs):
            return ", ".join(xs[:5]) + (f" ... (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch: {head(mismatched)}")
        raise WeightsError(f"[{metric}] {str(source)!r} does not fit the architecture ("
                           + "; ".join(parts) + "). The file is corrupt or for another model "
                           f"config; {fix_hint(metric)}")
    module.load_state_dict(state, strict=True)


def autocast_ctx(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA (fp32 elsewhere)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Round to the 256 levels of an 8-bit PNG (what the reference scripts read from disk)."""
    return images.clamp(0, 1).mul(255).round().div(255)


class Metric:
    """Base class: batching, device / dtype handling and the reward-call signature."""

    name: str = "metric"
    #: the scale in which benchmark numbers are reported (HPS reports x100)
    report_scale: float = 1.0

    def __init__(self, device="cpu", dtype=torch.float32, batch_size: int = 32,
                 autocast: bool = True, quantize: bool = True):
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.autocast = autocast
        #: round inputs to 8 bits first, as the references read saved PNGs
        self.quantize = quantize

    # -- to implement ------------------------------------------------------
    def _score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    # -- public API --------------------------------------------------------
    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores ``[B]`` (float32, on CPU) for images ``[B,3,H,W]`` in [0,1] and B prompts, in chunks
        of ``batch_size`` (a batch of 8 equals 8 singles), under bf16 autocast on CUDA (the
        references run fp16/"amp" autocast on GPU too)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be [B,3,H,W], got {tuple(images.shape)}")
        prompts = list(prompts)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i:i + self.batch_size].to(self.device, torch.float32)
            if self.quantize:
                x = quantize_uint8(x)
            with autocast_ctx(self.device, self.autocast):
                s = self._score_batch(x, prompts[i:i + self.batch_size])
            out.append(s.float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, images, prompts, metadata=None) -> torch.Tensor:
        return self.score(images, prompts)
