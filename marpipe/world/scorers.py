"""Verifiable scorers: read colour, shape, texture, position, occlusion and count back from
small-world images (:func:`read_image`) and score them against prompt metadata by
T2I-CompBench's rules, the detectors and VQA replaced by the reading (clean renders score exactly
1). Rewards registered here: ``world_compbench``, ``world_detect``, ``world_vqa``."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from marpipe.rewards import Reward, register_reward
from marpipe.world.geometry import connected_components, fit_shape
from marpipe.world.prompts import COLORS
from marpipe.world.render import CANVAS, PALETTE, SHADE_FACTOR

PIXEL_TOLERANCE = 0.22
MIN_AREA = 6
MAX_DETECTIONS = 8
FRONT_MARGIN = 0.05      # completeness gap that makes an object "in front"
BIGGER_RATIO = 1.25      # side ratio that makes an object "bigger"

_PALETTE_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)
_CLASS_RGB = np.concatenate([_PALETTE_RGB, _PALETTE_RGB * SHADE_FACTOR])  # [12, 3]


# --- reading --------------------------------------------------------------------

@dataclass(eq=False)
class Detection:
    """One object read from an image."""
    color: str
    mask: np.ndarray          # [H, W] bool, visible pixels
    shade: np.ndarray         # [H, W] bool, visible pixels in the darker shade
    area: int
    centroid: tuple[float, float]  # (x, y)
    shape: str = "unknown"
    shape_iou: float = 0.0
    box: tuple[int, int, int] = (0, 0, 0)  # fitted template box (x, y, side)
    completeness: float = 0.0
    texture: str = "plain"

    @property
    def size(self) -> int:
        return self.box[2]


def classify_pixels(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: colour family index (-1 = background) and whether it is a shade."""
    d = np.linalg.norm(img[:, :, None, :] - _CLASS_RGB[None, None], axis=-1)  # [H, W, 12]
    nearest = d.argmin(-1)
    is_object = d.min(-1) < PIXEL_TOLERANCE
    family = np.where(is_object, nearest % len(COLORS), -1)
    return family, is_object & (nearest >= len(COLORS))


def read_texture(visible: np.ndarray, shade: np.ndarray) -> str:
    """'plain', 'striped' (whole rows in the shade) or 'dotted'."""
    if shade.sum() < 0.05 * visible.sum():
        return "plain"
    row_px = visible.sum(1)
    rows = row_px >= 3
    if not rows.any():
        return "dotted"
    shade_share = shade.sum(1)[rows] / row_px[rows]
    return "striped" if (shade_share >= 0.7).mean() >= 0.2 else "dotted"


def read_image(img: np.ndarray) -> list[Detection]:
    """Objects in one ``[H, W, 3]`` float image (largest first, at most ``MAX_DETECTIONS``).

    Each pixel goes to the nearest of the 12 palette colours (6 base colours + their texture
    shades), or to background when none is within ``PIXEL_TOLERANCE`` (backgrounds are grey, the
    palette saturated); objects are the 4-connected components of each colour family of at least
    ``MIN_AREA`` pixels; the shape is the template (rasterised like the renderer) with the best IoU
    over candidate boxes, pixels of other objects excluded from the union, so an occluded object
    still fits its full shape and ``completeness`` (the visible share) tells front from back;
    texture from the share of shade pixels and of mostly-shade rows; position is the centroid."""
    family, is_shade = classify_pixels(img)
    dets: list[Detection] = []
    for f, color in enumerate(COLORS):
        for comp in connected_components(family == f):
            area = int(comp.sum())
            if area < MIN_AREA:
                continue
            ys, xs = np.nonzero(comp)
            dets.append(Detection(color, comp, comp & is_shade, area,
                                  (float(xs.mean()), float(ys.mean()))))
    dets.sort(key=lambda d: -d.area)
    dets = dets[:MAX_DETECTIONS]
    for d in dets:
        others = np.zeros_like(d.mask)
        for o in dets:
            if o is not d:
                others |= o.mask
        d.shape, d.shape_iou, d.box, d.completeness = fit_shape(d.mask, others)
        d.texture = read_texture(d.mask, d.shade)
    return dets


def to_numpy_images(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` tensor -> ``[B, 32, 32, 3]`` float32 numpy (resized if needed)."""
    x = images.detach().float().cpu()
    if x.shape[-2:] != (CANVAS, CANVAS):
        x = torch.nn.functional.interpolate(x, size=(CANVAS, CANVAS), mode="bilinear",
                                            antialias=True, align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


# --- matching prompt objects to detections ---------------------------------------

def agreement(spec: dict, det: Detection | None) -> float:
    """Share of the stated attributes of ``spec`` (shape, colour, texture) that ``det`` has."""
    if det is None:
        return 0.0
    checks = [det.shape == spec["shape"]]
    if spec.get("color"):
        checks.append(det.color == spec["color"])
    if spec.get("texture"):
        checks.append(det.texture == spec["texture"])
    return sum(checks) / len(checks)


def best_assignments(specs: Sequence[dict], dets: Sequence[Detection]) -> list[list[Detection | None]]:
    """All injective spec -> detection assignments with maximal total agreement.

    Ties matter for prompts like "a triangle below a triangle", where either
    triangle may play either role.
    """
    pool: list[Detection | None] = list(dets) + [None] * len(specs)
    best: list[list[Detection | None]] = []
    best_score = -1.0
    for combo in itertools.permutations(range(len(pool)), len(specs)):
        chosen = [pool[i] for i in combo]
        score = sum(agreement(s, d) for s, d in zip(specs, chosen))
        if score > best_score + 1e-9:
            best, best_score = [chosen], score
        elif abs(score - best_score) <= 1e-9 and chosen not in best:
            best.append(chosen)
    return best


def assign(specs: Sequence[dict], dets: Sequence[Detection]) -> list[Detection | None]:
    """One injective spec -> detection assignment maximising total agreement."""
    return best_assignments(specs, dets)[0]


def relation_in_any(name: str, specs: Sequence[dict], dets: Sequence[Detection]) -> bool:
    """Whether the relation holds under some best assignment of the two specs."""
    return any(relation_holds(name, a, b) for a, b in best_assignments(specs[:2], dets))


def _adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    grown = a.copy()
    grown[1:] |= a[:-1]; grown[:-1] |= a[1:]; grown[:, 1:] |= a[:, :-1]; grown[:, :-1] |= a[:, 1:]
    return bool((grown & b).any())


def _boxes_intersect(a: Detection, b: Detection) -> bool:
    (ax, ay, s), (bx, by, t) = a.box, b.box
    return ax < bx + t and bx < ax + s and ay < by + t and by < ay + s


def relation_holds(name: str, a: Detection | None, b: Detection | None) -> bool:
    """Whether "A <name> B" reads true from the two detections."""
    if a is None or b is None:
        return False
    dx, dy = b.centroid[0] - a.centroid[0], b.centroid[1] - a.centroid[1]
    if name == "left of":
        return dx > 0 and abs(dx) > abs(dy)
    if name == "right of":
        return dx < 0 and abs(dx) > abs(dy)
    if name == "above":
        return dy > 0 and abs(dy) > abs(dx)
    if name == "below":
        return dy < 0 and abs(dy) > abs(dx)
    if name in ("in front of", "behind"):
        front, back = (a, b) if name == "in front of" else (b, a)
        return _boxes_intersect(a, b) and front.completeness > back.completeness + FRONT_MARGIN
    if name == "touching":
        return _adjacent(a.mask, b.mask)
    if name == "bigger than":
        return a.size >= BIGGER_RATIO * b.size
    if name == "smaller than":
        return b.size >= BIGGER_RATIO * a.size
    raise ValueError(f"unknown relation {name!r}")


# --- per-category scores ------------------------------------------------------------

def attribute_score(dets: list[Detection], meta: dict) -> float:
    specs = meta["objects"]
    return float(np.mean([agreement(s, d) for s, d in zip(specs, assign(specs, dets))]))


def relation_score(dets: list[Detection], meta: dict) -> float:
    specs = meta["objects"][:2]
    a, b = assign(specs, dets)
    present = 0.25 * agreement(specs[0], a) + 0.25 * agreement(specs[1], b)
    return present + 0.5 * float(relation_in_any(meta["relation"]["name"], specs, dets))


def group_matches(spec: dict, dets: list[Detection], use_color: bool = True) -> int:
    return sum(d.shape == spec["shape"] and (not use_color or not spec.get("color") or d.color == spec["color"])
               for d in dets)


def numeracy_score(dets: list[Detection], meta: dict) -> float:
    parts = []
    for spec in meta["objects"]:
        n = group_matches(spec, dets)
        parts.append(0.5 * (n >= 1) + 0.5 * (n == int(spec.get("count", 1))))
    return float(np.mean(parts))


def complex_score(dets: list[Detection], meta: dict) -> float:
    specs = meta["objects"]
    matched = assign(specs, dets)
    attr = float(np.mean([agreement(s, d) for s, d in zip(specs, matched)]))
    if not meta.get("relation"):
        return attr
    rel = float(relation_in_any(meta["relation"]["name"], specs, dets))
    return 0.5 * (attr + rel)


def category_score(dets: list[Detection], meta: dict) -> float:
    """T2I-CompBench-style score of one reading for the prompt's category: attributes, the mean
    over objects of the share of stated attributes found; relations ``0.25 match(A) + 0.25
    match(B) + 0.5 relation`` (the UniDet rule, detector confidences replaced by attribute
    matches); numeracy, per group ``0.5 (found >= 1) + 0.5 (found == count)``; complex, the mean
    of the attribute and relation parts."""
    cat = meta.get("category")
    if cat == "numeracy":
        return numeracy_score(dets, meta)
    if cat == "complex":
        return complex_score(dets, meta)
    if cat in ("2d_spatial", "3d_spatial", "non_spatial") or (meta.get("relation") and cat != "complex"):
        return relation_score(dets, meta)
    return attribute_score(dets, meta)


def detect_score(dets: list[Detection], meta: dict) -> float:
    """GroundingDINO role: object (shape) presence, counts, 2-D positions."""
    checks: list[float] = []
    for spec in meta["objects"]:
        n = group_matches(spec, dets, use_color=False)
        checks.append(float(n >= 1))
        if meta.get("category") == "numeracy" or int(spec.get("count", 1)) > 1:
            checks.append(float(n == int(spec.get("count", 1))))
    rel = meta.get("relation")
    if rel and rel["kind"] == "2d":
        shape_only = [{"shape": s["shape"]} for s in meta["objects"][:2]]
        checks.append(float(relation_in_any(rel["name"], shape_only, dets)))
    return float(np.mean(checks))


def vqa_score(dets: list[Detection], meta: dict, sharpness: float = 8.0) -> float:
    """GIT-VQA role: mean P(yes) of "is there a <texture> <colour> <shape>?" per object.

    P(yes) = sigmoid(sharpness * (agreement - 0.5)): 0.98 when every stated
    attribute is read, 0.5 when half are, 0.02 when none.
    """
    specs = meta["objects"]
    probs = [1.0 / (1.0 + math.exp(-sharpness * (agreement(s, d) - 0.5)))
             for s, d in zip(specs, assign(specs, dets))]
    return float(np.mean(probs))


# --- batch API and rewards -----------------------------------------------------------

def read_batch(images: torch.Tensor) -> list[list[Detection]]:
    return [read_image(img) for img in to_numpy_images(images)]


def compbench_scores(images: torch.Tensor, metadata: Sequence[dict]) -> torch.Tensor:
    """``[B]`` category-aware scores in [0, 1] (metadata['category'] picks the rule)."""
    return torch.tensor([category_score(d, m) for d, m in zip(read_batch(images), metadata)])


def _check(images: torch.Tensor, metadata: Sequence[dict]) -> None:
    if len(metadata) != images.shape[0]:
        raise ValueError("world rewards need one metadata dict (with 'objects') per image")


@register_reward("world_compbench")
def world_compbench(clip_dir: str | None = None) -> Reward:
    """Category-aware T2I-CompBench-style score in [0, 1].

    With ``clip_dir`` (a learned world CLIP, see :mod:`marpipe.world.learned`),
    ``non_spatial`` prompts are scored by its cosine, as T2I-CompBench scores
    that category with CLIP; otherwise by the verifiable reading.
    """
    clip_score = None
    if clip_dir is not None:
        from marpipe.world.learned import clip_cosine_reward
        clip_score = clip_cosine_reward(clip_dir)

    def score(images, prompts, metadata):
        _check(images, metadata)
        out = compbench_scores(images, metadata).to(images.device)
        if clip_score is not None:
            idx = [i for i, m in enumerate(metadata) if m.get("category") == "non_spatial"]
            if idx:
                cos = clip_score(images[idx], [prompts[i] for i in idx], [metadata[i] for i in idx])
                out[idx] = cos.to(out).clamp(0, 1)
        return out
    return score


@register_reward("world_detect")
def world_detect() -> Reward:
    """GroundingDINO role (as in T2I-R1): presence, count and 2-D position of objects, in [0, 1]."""
    def score(images, prompts, metadata):
        _check(images, metadata)
        return torch.tensor([detect_score(d, m) for d, m in zip(read_batch(images), metadata)],
                            device=images.device)
    return score


@register_reward("world_vqa")
def world_vqa(sharpness: float = 8.0) -> Reward:
    """GIT-VQA role: mean yes-probability of per-object attribute questions, in (0, 1)."""
    def score(images, prompts, metadata):
        _check(images, metadata)
        return torch.tensor([vqa_score(d, m, sharpness) for d, m in zip(read_batch(images), metadata)],
                            device=images.device)
    return score
