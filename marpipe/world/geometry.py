"""Pixel geometry shared by the renderer and the scorers.

Shape and texture masks are defined on pixel centres of an ``h x w`` box, so
the renderer draws exactly the templates the scorers fit; the renderer also
uses :func:`fit_shape` to only emit occlusion layouts that stay legible.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from marpipe.world.prompts import SHAPES

TEXTURE_PERIOD = 4


@lru_cache(maxsize=4096)
def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """Boolean ``[h, w]`` mask of ``shape`` filling its box (touches all four sides)."""
    v = (np.arange(h)[:, None] + 0.5) / h          # pixel centres, top -> bottom
    u = (np.arange(w)[None, :] + 0.5) / w
    eps = 1e-6
    if shape == "square":
        m = np.ones((h, w), dtype=bool)
    elif shape == "circle":
        m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25 + eps
        m |= _touch_sides(m)
    elif shape == "triangle":  # apex up; row i spans half-width proportional to its bottom edge
        bottom = (np.arange(h)[:, None] + 1.0) / h
        m = np.abs(u - 0.5) <= 0.5 * bottom + eps
    elif shape == "cross":
        m = (np.abs(u - 0.5) <= 1 / 6 + eps) | (np.abs(v - 0.5) <= 1 / 6 + eps)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m = np.broadcast_to(m, (h, w)).copy()
    m.setflags(write=False)
    return m


def _touch_sides(m: np.ndarray) -> np.ndarray:
    """Pixels that make a mask reach all four sides of its box (for tiny circles)."""
    extra = np.zeros_like(m)
    h, w = m.shape
    extra[0, w // 2 - (1 - w % 2): w // 2 + 1] = True
    extra[-1, w // 2 - (1 - w % 2): w // 2 + 1] = True
    extra[h // 2 - (1 - h % 2): h // 2 + 1, 0] = True
    extra[h // 2 - (1 - h % 2): h // 2 + 1, -1] = True
    return extra


@lru_cache(maxsize=1024)
def texture_mask(texture: str, h: int, w: int) -> np.ndarray:
    """Boolean ``[h, w]`` mask of the pixels drawn in the darker shade.

    Patterns have period ``TEXTURE_PERIOD`` and are anchored on the box centre
    (the two central rows/columns are shaded), so thin parts such as a cross's
    arms still carry the pattern.
    """
    rows = ((np.arange(h)[:, None] - (h // 2 - 1)) % TEXTURE_PERIOD) < 2
    cols = ((np.arange(w)[None, :] - (w // 2 - 1)) % TEXTURE_PERIOD) < 2
    if texture == "plain":
        m = np.zeros((h, w), dtype=bool)
    elif texture == "striped":  # horizontal stripes, 2 px shade / 2 px base
        m = np.broadcast_to(rows, (h, w))
    elif texture == "dotted":   # 2x2 dots on a 4 px grid
        m = rows & cols
    else:
        raise ValueError(f"unknown texture {texture!r}")
    m = np.broadcast_to(m, (h, w)).copy()
    m.setflags(write=False)
    return m


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask (min-label propagation)."""
    if not mask.any():
        return []
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neigh = np.minimum.reduce([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2],
                                   padded[1:-1, 2:], labels])
        neigh = np.where(mask, neigh, big)
        if np.array_equal(neigh, labels):
            break
        labels = neigh
    return [labels == v for v in np.unique(labels[mask])]


def _fit_iou(shape: str, box: tuple[int, int, int], visible: np.ndarray,
             excluded: np.ndarray) -> tuple[float, float]:
    """(IoU, completeness) of the template ``shape`` in ``box`` against ``visible``.

    Template pixels in ``excluded`` (other objects, outside the canvas) may be
    hidden, so they do not count against the fit.
    """
    x, y, s = box
    h, w = visible.shape
    tmpl = shape_mask(shape, s, s)
    ys, xs = slice(max(y, 0), min(y + s, h)), slice(max(x, 0), min(x + s, w))
    t = tmpl[ys.start - y: ys.stop - y, xs.start - x: xs.stop - x]
    v, q = visible[ys, xs], excluded[ys, xs]
    inter = int((t & v).sum())
    union = int(visible.sum()) + int((t & ~q & ~v).sum())
    return inter / max(union, 1), inter / max(int(t.sum()), 1)


def fit_shape(visible: np.ndarray, excluded: np.ndarray) -> tuple[str, float, tuple[int, int, int], float]:
    """Best (shape, IoU, box, completeness) over shapes and boxes containing ``visible``."""
    ys, xs = np.nonzero(visible)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    side = max(x1 - x0, y1 - y0) + 1
    best = ("unknown", -1.0, (x0, y0, side), 0.0)
    for s in range(side, side + 3):
        for bx in range(x1 - s + 1, x0 + 1):
            for by in range(y1 - s + 1, y0 + 1):
                for shape in SHAPES:
                    iou, comp = _fit_iou(shape, (bx, by, s), visible, excluded)
                    if iou > best[1] + 1e-9:
                        best = (shape, iou, (bx, by, s), comp)
        if best[1] > 0.999:  # a whole, unoccluded object: no need for bigger boxes
            break
    return best


