"""Model specs resolved to a :class:`~marpipe.models.protocol.MARModel` (:func:`load_model`: ``tiny-nova`` /
``tiny-harmon``, a saved tiny ``.safetensors``, ``nova:<dir>`` / ``harmon:<dir>``, or a name given to
:func:`register_spec`), and a model folder's modules built by the builder registered
(:func:`register_architecture`) for the architecture the folder declares as the official repositories
do: NOVA ``model_index.json`` ``_class_name``, Harmon ``config.json`` ``architectures`` then
``model_type``. See docs/development.md.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TINY = ("tiny-nova", "tiny-harmon")
FAMILIES = ("nova", "harmon")

# spec name -> factory(device=, dtype=, gradient_checkpointing=, sampling=) -> model
_SPECS: dict[str, Callable[..., Any]] = {}
# family -> architecture name -> builder(folder, dtype) -> Built
_ARCHITECTURES: dict[str, dict[str, Callable[[Path, torch.dtype], Built]]] = {f: {} for f in FAMILIES}
# where each family's folder declares its architecture: (file, keys read in order)
DECLARED_IN = {"nova": ("model_index.json", ("_class_name",)),
               "harmon": ("config.json", ("architectures", "model_type"))}


@dataclasses.dataclass
class Built:
    """What an architecture builder returns: the modules, randomly initialised (the adapter then
    loads the folder's weights into them strictly), and the defaults the folder carries."""
    modules: dict[str, Any]
    sampling: dict | None = None       # the folder's own sampling defaults (else the adapter's)
    image_size: int | None = None      # the folder's own generation size (Harmon)
    note: str = ""                     # said in the model's ``source`` after the folder


def register_spec(name: str, factory: Callable[..., Any]) -> None:
    """Make ``load_model(name)`` call ``factory(device=, dtype=, gradient_checkpointing=, sampling=)``."""
    if name in TINY or ":" in name or name.endswith(".safetensors"):
        raise ValueError(f"{name!r} is a built-in spec form; register another name")
    _SPECS[name] = factory


def register_architecture(family: str, name: str, builder: Callable[[Path, torch.dtype], Built]) -> None:
    """Build ``family`` folders that declare the architecture ``name`` with ``builder(folder, dtype)``."""
    _ARCHITECTURES[family][name] = builder


def declared_architectures(family: str, folder: str | Path) -> list[str]:
    """The architecture names ``folder`` declares for ``family`` (:data:`DECLARED_IN`), in order."""
    file, keys = DECLARED_IN[family]
    path = Path(folder) / file
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    names: list[str] = []
    for key in keys:
        value = data.get(key)
        names += [value] if isinstance(value, str) else [v for v in value or () if isinstance(v, str)]
    return names


def build_architecture(family: str, folder: str | Path, dtype: torch.dtype) -> Built:
    """The modules of ``folder``, built by the builder registered for the architecture it declares."""
    folder = Path(folder)
    names = declared_architectures(family, folder)
    registered = _ARCHITECTURES[family]
    for name in names:
        if name in registered:
            return registered[name](folder, dtype)
    file, keys = DECLARED_IN[family]
    where = f"{file} {' / '.join(keys)}"
    found = (f"declares the architecture {' / '.join(map(repr, names))} ({where})" if names
             else f"declares no architecture ({where}: not there)")
    raise ValueError(f"{folder}: {found}, and no {family} builder is registered for it (registered: "
                     f"{', '.join(sorted(registered)) or 'none'}). Load the official folder "
                     f"(python -m marpipe.models.download {family}), or register a builder for that name "
                     f"first (marpipe.models.registry.register_architecture).")


def model_family(model) -> str | None:
    """``nova`` | ``harmon``: which real model a loaded model is or stands in for (a tiny model's
    ``kind``, the adapter's class), or None; ``train.preset: reference`` follows that family's trainer."""
    kind = getattr(getattr(model, "cfg", None), "kind", None)
    if kind in FAMILIES:
        return kind
    name = type(model).__name__.lower()
    return next((f for f in FAMILIES if f in name), None)


def default_dtype(device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               gradient_checkpointing: bool = False, sampling: dict | None = None, **tiny_overrides):
    """Build the model named by ``spec`` on ``device``.

    ``dtype``: tiny models and registered specs default to float32; the adapters over a folder to
    bfloat16 on CUDA (float32 on CPU). ``sampling`` overrides the model's default sampling settings.
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
    if spec in _SPECS:
        return _SPECS[spec](device=device, dtype=dtype or torch.float32, gradient_checkpointing=gradient_checkpointing,
                            sampling=sampling)
    family, sep, folder = spec.partition(":")
    if sep and family in FAMILIES:
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
    raise ValueError(f"unknown model spec {spec!r}: use one of {', '.join(TINY + tuple(sorted(_SPECS)))}, a tiny "
                     f"'.safetensors' file, 'nova:<dir>' or 'harmon:<dir>'")
