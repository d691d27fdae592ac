"""Small file helpers: atomic writes, JSON, manifests, image bundles.

What the pipeline writes is a function of its inputs only, so two identical runs (or a run and
its killed-and-resumed twin) give files with equal sha256: canonical JSON (:func:`canonical_json`),
no timestamps, pids, hostnames or absolute paths in artifact bytes (a temporary file may carry a
pid in its *name*), zip image bundles with fixed entry dates (:func:`write_bundle`). Importing
this module does not import torch (the Snakefile's config cache writes through it at parse time)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    arr = to_uint8(images)
    return write_bundle(path, [arr], arr.shape, prompts, metadata, prompt_index, info)


IMAGES_MEMBER = "images.npy"


def npy_header(dtype, shape: Sequence[int]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of ``dtype`` and ``shape``."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": tuple(int(x) for x in shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:                      # a header over 64 KiB
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


def _zip_info(name: str, compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16
    return info


def write_bundle(path: str | Path, chunks: Iterable[np.ndarray], shape: Sequence[int], prompts: Sequence[str],
                 metadata: Sequence[dict], prompt_index: Sequence[int], info: dict) -> Path:
    """An image bundle streamed from ``chunks`` (uint8 ``[n,H,W,3]``, in order, ``shape[0]`` rows
    in all), written atomically with at most one chunk in memory. ``images.npy`` is stored
    uncompressed (readers can map it, :func:`open_images`); the small members are deflated. The
    bytes are a function of the rows, not of how they are chunked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(x) for x in shape)
    small = {"prompt_index": np.asarray(prompt_index, dtype=np.int64),
             "prompts": np.asarray(canonical_json(list(prompts))),
             "metadata": np.asarray(canonical_json(list(metadata))), "info": np.asarray(canonical_json(info))}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w") as z:
            with z.open(_zip_info(IMAGES_MEMBER, zipfile.ZIP_STORED), "w", force_zip64=True) as member:
                member.write(npy_header(np.uint8, shape))
                rows = 0
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk)
                    if chunk.dtype != np.uint8 or chunk.shape[1:] != shape[1:]:
                        raise ValueError(f"{path}: a chunk of {chunk.dtype} {chunk.shape} in a bundle of uint8 {shape}")
                    member.write(chunk.reshape(-1).data)
                    rows += len(chunk)
                if rows != shape[0]:
                    raise ValueError(f"{path}: {rows} images written, {shape[0]} expected")
            for name, arr in small.items():
                z.writestr(_zip_info(f"{name}.npy", zipfile.ZIP_DEFLATED), npy_bytes(arr), compresslevel=6)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)   # the earliest date a zip entry can hold; fixed, so no clock in the bytes


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What ``np.savez_compressed`` writes, minus the clock: ``np.savez`` stamps every zip entry
    with the current time, so two saves of the same arrays differ. Entries are written in the
    given order with a fixed date and permissions; ``np.load`` reads the result as usual."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            z.writestr(_zip_info(f"{name}.npy", zipfile.ZIP_DEFLATED), npy_bytes(arr), compresslevel=6)
    return buf.getvalue()


def load_images(path: str | Path) -> dict:
    """A whole bundle, its images as float ``[N,3,H,W]`` in [0,1] (:func:`open_images` reads rows)."""
    with np.load(path) as z:
        return {"images": from_uint8(z["images"]), **_small_members(z)}


def _small_members(z) -> dict:
    return {"prompt_index": z["prompt_index"].tolist(), "prompts": json.loads(str(z["prompts"])),
            "metadata": json.loads(str(z["metadata"])), "info": json.loads(str(z["info"]))}


def open_images(path: str | Path) -> dict:
    """A bundle's small members as :func:`load_images` gives them, and ``images``: its uint8
    ``[N,H,W,3]`` images as a :class:`BundleImages`, which reads only the rows asked for."""
    with np.load(path) as z:
        return {"images": BundleImages(path), **_small_members(z)}


class BundleImages:
    """The images of a bundle, read by rows: ``rows[i]``, ``rows[a:b]``, ``rows[[i, j, ...]]``
    give uint8 arrays read from the file then and there. A stored member (what
    :func:`write_bundle` writes) is read at its offset in the file (read, not mapped: the
    pages of a mapping read through stay in the process's resident set; :meth:`memmap`
    maps it); a deflated one (older bundles) is decompressed forward, one pass while the
    rows asked for ascend."""

    READ_BLOCK = 16 << 20

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip = self._stream = None
        with zipfile.ZipFile(self.path) as z:
            info = z.getinfo(IMAGES_MEMBER)
            self.stored = info.compress_type == zipfile.ZIP_STORED
            with z.open(info) as f:
                self.shape, self.dtype, header = _npy_layout(f, self.path)
        if self.stored:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ValueError(f"{self.path}: no local header for {IMAGES_MEMBER}")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
            self.offset = info.header_offset + 30 + name_len + extra_len + header
        else:
            self.offset = header
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[[key]][0]
        idx = (np.arange(*key.indices(len(self))) if isinstance(key, slice)
               else np.asarray(key, dtype=np.int64).reshape(-1))
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: rows {idx.min()}..{idx.max()} of {len(self)}")
        idx = np.where(idx < 0, idx + len(self), idx)
        rows, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(-1).view(np.uint8)
        # runs of consecutive rows, one read each
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        with self._reader() as f:
            for run in np.split(np.arange(len(rows)), breaks):
                if not len(run):
                    continue
                f.seek(self.offset + int(rows[run[0]]) * self.row_bytes)
                dest = memoryview(flat[run[0] * self.row_bytes: (run[-1] + 1) * self.row_bytes])
                for s in range(0, len(dest), self.READ_BLOCK):
                    part = dest[s: s + self.READ_BLOCK]
                    if f.readinto(part) != len(part):
                        raise ValueError(f"{self.path}: {IMAGES_MEMBER} ends early")
        return out if len(rows) == len(idx) and np.array_equal(rows, idx) else out[inverse.reshape(-1)]

    def memmap(self) -> np.memmap:
        """The images mapped read-only (a stored member only)."""
        if not self.stored:
            raise ValueError(f"{self.path}: {IMAGES_MEMBER} is compressed; read rows instead")
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)

    def _reader(self):
        if self.stored:
            return open(self.path, "rb")
        if self._stream is None:
            self._zip = zipfile.ZipFile(self.path)
            self._stream = self._zip.open(IMAGES_MEMBER)
        return contextlib.nullcontext(self._stream)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._zip.close()
            self._zip = self._stream = None

    def __enter__(self) -> BundleImages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _npy_layout(f, path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the ``.npy`` stream ``f`` (at its start)."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if fortran or dtype.hasobject:
        raise ValueError(f"{path}: {IMAGES_MEMBER} is not a C-ordered array of plain values")
    return tuple(shape), dtype, f.tell()


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
