"""Small file helpers: atomic writes, JSON, manifests, image bundles.

Importing this module does not import torch (the Snakefile's config cache writes
through it at parse time); the image helpers import it when called.

Byte-stable artifacts: what the pipeline writes is a function of its inputs only, so
two identical runs (or a run and its killed-and-resumed twin) give files with equal
sha256. JSON is canonical (:func:`canonical_json`): sorted keys, fixed separators,
ASCII, floats as Python's ``repr`` (shortest round-trip), a trailing newline in files.
No timestamps, pids, hostnames or absolute paths go into artifact bytes; temporary
files may carry a pid in their *name* only. Image bundles are zip files with fixed
entry dates (:func:`save_images`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def canonical_json(obj: Any, indent: int | None = None) -> str:
    """The one text of ``obj``: sorted keys, separators ``","`` and ``": "`` (indented) or
    ``","`` and ``":"`` (compact), ASCII only, floats as ``repr`` (NaN/Infinity as Python
    writes them). Anything that is not plain JSON data (a tensor, a numpy float32, a set)
    raises ``TypeError`` rather than being written in some ad hoc form."""
    return json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=True, allow_nan=True,
                      separators=(",", ": ") if indent is not None else (",", ":"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Canonical JSON (:func:`canonical_json`, indent 2) plus a trailing newline, written atomically."""
    return atomic_write_bytes(path, (canonical_json(obj, indent=2) + "\n").encode("ascii"))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B,3,H,W]`` in [0,1] -> ``[B,H,W,3]`` uint8 (what a PNG would hold)."""
    import torch
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    import torch
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def save_images(path: str | Path, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict],
                prompt_index: Sequence[int], info: dict) -> Path:
    """An image bundle: uint8 images, their prompts/metadata, and which prompt each image is for."""
    arrays = {"images": to_uint8(images), "prompt_index": np.asarray(prompt_index, dtype=np.int64),
              "prompts": np.asarray(canonical_json(list(prompts))),
              "metadata": np.asarray(canonical_json(list(metadata))), "info": np.asarray(canonical_json(info))}
    return atomic_write_bytes(path, npz_bytes(arrays))


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)   # the earliest date a zip entry can hold; fixed, so no clock in the bytes


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What ``np.savez_compressed`` writes, minus the clock: ``np.savez`` stamps every zip entry
    with the current time, so two saves of the same arrays differ. Entries are written in the
    given order with a fixed date and permissions; ``np.load`` reads the result as usual."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, member.getvalue(), compresslevel=6)
    return buf.getvalue()


def load_images(path: str | Path) -> dict:
    with np.load(path) as z:
        return {"images": from_uint8(z["images"]), "prompt_index": z["prompt_index"].tolist(),
                "prompts": json.loads(str(z["prompts"])), "metadata": json.loads(str(z["metadata"])),
                "info": json.loads(str(z["info"]))}


def read_prompt_set(path: str | Path) -> list[dict]:
    """A prompt set: JSON lines with 'prompt' and optional 'metadata'."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: empty prompt set")
    return [{"prompt": r["prompt"], "metadata": r.get("metadata", {})} for r in rows]


def write_prompt_set(path: str | Path, rows: Sequence[dict]) -> Path:
    text = "".join(json.dumps({"prompt": r["prompt"], "metadata": r.get("metadata", {})}, sort_keys=True) + "\n"
                   for r in rows)
    return atomic_write_bytes(path, text.encode())
