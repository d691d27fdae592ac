"""Training checkpoints as single safetensors files, written atomically and byte-stable.

A checkpoint holds the model state (``model.*``), the optimizer state (``optim.*`` tensors + param
groups in the metadata), RNG states (``rng.*``) and the step (:func:`save_checkpoint`). A kill
mid-write leaves the previous checkpoint valid, and a truncated or unreadable file is skipped by
:func:`latest_valid`; the same tensors and metadata give the same bytes in any process
(:func:`write_safetensors`), so a run and its killed-and-resumed twin have equal sha256."""
from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from marpipe.io.files import canonical_json

PATTERN = re.compile(r"step-(\d+)\.safetensors$")


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:06d}.safetensors"


# torch dtype -> safetensors name, in the order safetensors lays tensors out (its Dtype enum,
# descending): element sizes never grow along it, so every tensor is aligned to its size.
_DTYPES = {torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.float32: "F32",
           torch.uint32: "U32", torch.int32: "I32", torch.bfloat16: "BF16", torch.float16: "F16",
           torch.uint16: "U16", torch.int16: "I16", torch.float8_e4m3fn: "F8_E4M3",
           torch.float8_e5m2: "F8_E5M2", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_RANK = {dt: i for i, dt in enumerate(_DTYPES)}


def safetensors_header(tensors: Mapping[str, torch.Tensor],
                       metadata: Mapping[str, str] | None = None) -> tuple[bytes, list[tuple[str, torch.Tensor]]]:
    """The header (length prefix, JSON, space padding) and the tensors in file order.

    The layout is safetensors' own (0.4 to 0.8): tensors by dtype (:data:`_DTYPES` order),
    then by name; compact JSON; the header padded with spaces to a multiple of 8 bytes; so
    without metadata the bytes equal ``safetensors.torch.save``'s. The one difference:
    ``__metadata__`` (first) has its keys sorted.
    """
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str to str")
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} has no safetensors name")
    order = sorted(tensors.items(), key=lambda kv: (_RANK[kv[1].dtype], kv[0]))
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for name, t in order:
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """A safetensors file whose bytes depend on ``tensors`` and ``metadata`` only, written
    atomically (temporary file in the same folder, fsync, rename, fsync of the folder).
    Tensors are streamed one at a time: no copy of the whole file in memory. safetensors' own
    writer keeps ``__metadata__`` in a Rust ``HashMap`` whose iteration order is seeded per process
    (two saves of identical data differ in the header), so the header is written here; JSON
    metadata values are canonical JSON, and no time, pid, host or path goes in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    head, order = safetensors_header(tensors, metadata)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")   # the pid names the file, it is not in it
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for _, t in order:
                if t.numel():
                    f.write(t.reshape(-1).view(torch.uint8).numpy())   # a view: no copy
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


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
                    optimizer: torch.optim.Optimizer | None, meta: dict | None = None,
                    trained: set[str] | None = None) -> Path:
    """``meta`` must be plain JSON data; it is stored as canonical JSON. ``trained``: the names of the
    trained parameters, the only model tensors written (the rest is the run's start weights)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if trained is None or k in trained}
    metadata = {"step": str(step), "meta": canonical_json(meta or {})}
    if optimizer is not None:
        opt, groups = _optimizer_tensors(optimizer)
        tensors.update(opt)
        metadata["optimizer"] = canonical_json(groups)
    tensors.update(_rng_tensors())
    return write_safetensors(checkpoint_path(folder, step), tensors, metadata)


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return sorted(found)


def prune(folder: str | Path, keep: Callable[[list[int]], set[int]]) -> list[int]:
    """Delete the checkpoints of ``folder`` but the newest and those ``keep(saved steps)`` names;
    returns the deleted steps. Checkpoints are written atomically, so no file is read here (reading
    every kept checkpoint at every save would cost more than the save)."""
    saved = [s for s, _ in list_checkpoints(folder)]
    if not saved:
        return []
    kept = {saved[-1], *keep(saved)}
    gone = [s for s in saved if s not in kept]
    for s in gone:
        checkpoint_path(folder, s).unlink()
    return gone


def disk_use(folder: str | Path) -> int:
    """Bytes of the files below ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


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
    load_overlay(model, model_sd, path)
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


def load_overlay(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load ``tensors`` over ``model``'s: every tensor must name one of the model's (a checkpoint or a
    weights file holds the trained parameters; what it lacks stays as the model was built)."""
    unexpected = model.load_state_dict(dict(tensors), strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{source}: {len(unexpected)} tensors name nothing in {type(model).__name__} "
                         f"(e.g. {sorted(unexpected)[:3]}): weights of another model or variant")


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint (keys without the ``model.`` prefix), or of a plain
    weights file (as saved by the select stage)."""
    tensors = load_file(str(path))
    if not any(k.startswith("rng.") for k in tensors):
        return tensors
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
