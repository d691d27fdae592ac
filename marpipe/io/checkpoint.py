"""Training checkpoints as single safetensors files, written atomically.

A checkpoint holds the model state (``model.*``), the optimizer state
(``optim.*`` tensors + param groups in the metadata), RNG states (``rng.*``)
and the step. It is written to a temporary file in the same folder, fsynced and
renamed, so a kill mid-write leaves the previous checkpoint valid; a truncated
or unreadable file is skipped by :func:`latest_valid`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

PATTERN = re.compile(r"step-(\d+)\.safetensors$")


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:06d}.safetensors"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, val in state.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"optim.{pid}.{key}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _rng_tensors() -> dict:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def save_checkpoint(folder: str | Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, meta: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"step": str(step), "meta": json.dumps(meta or {})}
    if optimizer is not None:
        opt, groups = _optimizer_tensors(optimizer)
        tensors.update(opt)
        metadata["optimizer"] = json.dumps(groups)
    tensors.update(_rng_tensors())
    path = checkpoint_path(folder, step)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return sorted(found)


def is_valid(path: Path) -> bool:
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            meta = f.metadata() or {}
            for k in keys:  # touch every tensor: a truncated file fails here
                f.get_slice(k)
        load_file(str(path))
        return "step" in meta
    except Exception:
        return False


def latest_valid(folder: str | Path) -> Path | None:
    """The newest checkpoint that loads completely, or None."""
    for _, path in reversed(list_checkpoints(folder)):
        if is_valid(path):
            return path
    return None


def load_checkpoint(path: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> dict:
    """Load into ``model`` (strict) and ``optimizer``; returns ``{"step": int, "meta": dict}``."""
    path = Path(path)
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_sd, strict=True)
    if optimizer is not None:
        if "optimizer" not in metadata:
            raise ValueError(f"{path}: holds no optimizer state (a weights-only file cannot be resumed)")
        groups = json.loads(metadata["optimizer"])["param_groups"]
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
    return {"step": int(metadata["step"]), "meta": json.loads(metadata.get("meta", "{}"))}


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint (keys without the ``model.`` prefix), or of a plain
    weights file (as saved by the select stage)."""
    tensors = load_file(str(path))
    if not any(k.startswith("rng.") for k in tensors):
        return tensors
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
