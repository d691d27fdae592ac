"""Small file helpers: atomic writes, JSON, manifests, image bundles.

Importing this module does not import torch (the Snakefile's config cache writes
through it at parse time); the image helpers import it when called.
"""
from __future__ import annotations

import hashlib
import json
import os
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


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, images=to_uint8(images), prompt_index=np.asarray(prompt_index, dtype=np.int64),
                        prompts=np.asarray(json.dumps(list(prompts))),
                        metadata=np.asarray(json.dumps(list(metadata))), info=np.asarray(json.dumps(info)))
    os.replace(tmp, path)
    return path


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
