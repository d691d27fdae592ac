"""Resolve a model spec to a :class:`~marpipe.models.protocol.MARModel`.

Specs:

* ``tiny-nova`` / ``tiny-harmon``: a randomly initialised tiny model (preset sizes);
* ``path/to/model.safetensors``: a saved tiny model (:meth:`TinyMAR.load`);
* ``nova:<dir>`` / ``harmon:<dir>``: the adapters over a downloaded, manifest-verified folder
  (a stand-in folder written by ``save_*_standin`` is accepted too, and says so);
* ``nova-standin`` / ``harmon-standin``: the adapters over freshly built, randomly initialised
  stand-ins (NOT the real models; for the conformance suite and tests).
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY = ("tiny-nova", "tiny-harmon")
STANDINS = ("nova-standin", "harmon-standin")


def model_family(model) -> str | None:
    """``nova`` | ``harmon``: which real model a loaded model is or stands in for (a tiny model's
    ``kind``, the adapter's class), or None; ``train.preset: reference`` follows that family's trainer."""
    kind = getattr(getattr(model, "cfg", None), "kind", None)
    if kind in ("nova", "harmon"):
        return kind
    name = type(model).__name__.lower()
    return next((f for f in ("nova", "harmon") if f in name), None)


def default_dtype(device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               gradient_checkpointing: bool = False, sampling: dict | None = None, **tiny_overrides):
    """Build the model named by ``spec`` on ``device``.

    ``dtype``: tiny models and stand-ins default to float32; the real adapters to bfloat16 on
    CUDA (float32 on CPU). ``sampling`` overrides the model's default sampling settings.
    """
    spec = str(spec)
    if spec in TINY:
        from marpipe.models.tiny import TinyMAR, TinyMARConfig
        over = dict(tiny_overrides)
        if sampling is not None:
            over["sampling"] = sampling
        return TinyMAR(TinyMARConfig.preset(spec, **over)).to(device=device, dtype=dtype or torch.float32)
    if spec.endswith(".safetensors") and ":" not in spec.split("/")[0]:
        from marpipe.models.tiny import TinyMAR
        over = dict(tiny_overrides)
        if sampling is not None:
            over["sampling"] = sampling
        return TinyMAR.load(spec, **over).to(device=device, dtype=dtype or torch.float32)
    if spec in STANDINS:
        return _fresh_standin(spec, device, dtype or torch.float32, gradient_checkpointing, sampling)
    family, sep, folder = spec.partition(":")
    if sep and family in ("nova", "harmon"):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{spec}: {folder} is not a folder (download the model first: "
                                    f"python -m marpipe.models.download {family})")
        dtype = dtype or default_dtype(device)
        if family == "nova":
            from marpipe.models.nova import NovaMAR
            return NovaMAR.from_pretrained(folder, device=device, dtype=dtype, sampling=sampling,
                                           gradient_checkpointing=gradient_checkpointing)
        from marpipe.models.harmon import HarmonMAR
        return HarmonMAR.from_pretrained(folder, device=device, dtype=dtype, sampling=sampling,
                                         gradient_checkpointing=gradient_checkpointing)
    raise ValueError(f"unknown model spec {spec!r}: use one of {', '.join(TINY + STANDINS)}, a tiny "
                     f"'.safetensors' file, 'nova:<dir>' or 'harmon:<dir>'")


def _fresh_standin(spec, device, dtype, gradient_checkpointing, sampling, seed: int = 0):
    torch.manual_seed(seed)
    if spec == "nova-standin":
        from marpipe.models.nova import NovaMAR
        from marpipe.models.standins.nova import NovaStandinConfig, build_nova_standin
        cfg = NovaStandinConfig()
        p = build_nova_standin(cfg)
        m = NovaMAR(p["transformer"], p["vae"], p["text_encoder"], p["tokenizer"], p["scheduler"],
                    sampling=sampling or cfg.sampling, gradient_checkpointing=gradient_checkpointing,
                    source="nova-standin (NOT the real NOVA)")
    else:
        from marpipe.models.harmon import HarmonMAR
        from marpipe.models.standins.harmon import HarmonStandinConfig, build_harmon_standin
        cfg = HarmonStandinConfig()
        h, tok = build_harmon_standin(cfg)
        m = HarmonMAR(h, tok, sampling=sampling or cfg.sampling, image_size=cfg.image_size,
                      gradient_checkpointing=gradient_checkpointing, source="harmon-standin (NOT the real Harmon)")
    return m.to(device=device, dtype=dtype)
