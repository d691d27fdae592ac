"""Fixture weights defined bit for bit, whatever CPU builds them: torch's initialisers give other
floats under other CPU capabilities, so :func:`rewrite_weight_file` replaces every floating tensor that is
not a constant fill with integers from numpy's PCG64 (keyed on repository and tensor name, so a
repository's ``.safetensors`` and ``.bin`` agree) times a power of two near ``1/sqrt(fan_in)``: exact in
the tensor's dtype, left to no kernel. See ``docs/development.md``.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
#: integer bits per dtype: k * 2**-e with |k| < 2**bits is exact in the dtype
_BITS = {torch.float64: 15, torch.float32: 15, torch.float16: 10, torch.bfloat16: 7}


def is_constant(t: torch.Tensor) -> bool:
    return t.numel() <= 1 or bool((t == t.reshape(-1)[0]).all())


def defined_tensor(key: str, t: torch.Tensor) -> torch.Tensor:
    """``t``'s replacement: uniform in ``[-bound, bound)``, drawn from the stream of ``key``."""
    fan_in = math.prod(t.shape[1:]) if t.dim() >= 2 else 256
    exp = round(0.5 * math.log2(max(fan_in, 1)))              # bound = 2**-exp
    bits = _BITS[t.dtype]
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    k = np.random.Generator(np.random.PCG64(seed)).integers(-2 ** bits, 2 ** bits, size=tuple(t.shape),
                                                             dtype=np.int32)
    values = torch.from_numpy(k.astype(np.float64) * 2.0 ** -(bits + exp))   # exact: a power-of-two scale
    return values.to(t.dtype).contiguous()


def define(obj, key: str):
    """``obj`` (a tensor, or dicts / lists / tuples of them, as state dicts and checkpoints nest) with
    every non-constant floating tensor replaced by :func:`defined_tensor` of ``key/<its path>``."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.dtype in _BITS and not is_constant(obj):
            return defined_tensor(key, obj)
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, define(v, f"{key}/{k}")) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(define(v, f"{key}/{i}") for i, v in enumerate(obj))
    return obj


def rewrite_weight_file(path: Path, key: str) -> None:
    """Rewrite the weight file ``path`` in its own format with :func:`define`'s tensors. The tensors
    are keyed on ``key`` and their names, not on the file, so both formats of a state dict agree."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        save_file(define(load_file(str(path)), key), str(path), metadata=metadata)
    else:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        # a checkpoint that wraps its state dict keys it under the same tensor names
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = {**obj, "state_dict": define(obj["state_dict"], key)}
        else:
            obj = define(obj, key)
        torch.save(obj, path)
