"""Deterministic renderer of small-world prompts, and corruptions for negatives.

``render(metas, seeds)`` draws each prompt on a 32x32 canvas in a canonical layout
(:func:`layout`): flat palette objects, textures in a darker shade of the object's colour, one of
four greyscale backgrounds. The seed picks only a +-1 px jitter, sizes, gaps and unspecified
colours, and the same (metadata, seed) gives byte-identical pixels. :func:`corrupt` and
:func:`mismatch_metadata` make the negatives the learned scorers train on."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marpipe.world.geometry import connected_components, fit_shape, shape_mask, texture_mask
from marpipe.world.prompts import COLORS, MAX_OBJECTS, RELATIONS, STYLES, TEXTURES, prompt_text

CANVAS = 32
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.12, 0.72, 0.20),
    "blue": (0.15, 0.32, 0.95),
    "yellow": (0.96, 0.86, 0.10),
    "purple": (0.62, 0.20, 0.82),
    "orange": (0.98, 0.54, 0.05),
}
SHADE_FACTOR = 0.5
CELL = CANVAS // 2


# --- shapes and textures --------------------------------------------------------

def shade(color: str) -> np.ndarray:
    return np.asarray(PALETTE[color], dtype=np.float32) * SHADE_FACTOR


# --- backgrounds ----------------------------------------------------------------

def background(style: str, rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
    """``[size, size, 3]`` greyscale background of ``style`` (float32 in [0, 1])."""
    if style == "light":
        grey = np.full((size, size), 0.92, dtype=np.float32)
    elif style == "dark":
        grey = np.full((size, size), 0.10, dtype=np.float32)
    elif style == "gradient":
        ramp = np.linspace(0.95, 0.55, size, dtype=np.float32)
        grey = np.broadcast_to(ramp[:, None] if rng.random() < 0.5 else ramp[None, :], (size, size))
    elif style == "noise":
        grey = (0.80 + rng.uniform(-0.08, 0.08, size=(size, size))).astype(np.float32)
    else:
        raise ValueError(f"unknown style {style!r}; known: {STYLES}")
    return np.repeat(np.asarray(grey, dtype=np.float32)[:, :, None], 3, axis=2)


# --- layout -----------------------------------------------------------------------

@dataclass(frozen=True)
class Placed:
    """One drawn object: its resolved attributes and its box (top-left x, y, side)."""
    color: str
    shape: str
    texture: str
    x: int
    y: int
    size: int
    spec: int  # index into meta["objects"]

    def mask(self, canvas: int = CANVAS) -> np.ndarray:
        out = np.zeros((canvas, canvas), dtype=bool)
        m = shape_mask(self.shape, self.size, self.size)
        out[self.y:self.y + self.size, self.x:self.x + self.size] = m
        return out


def _resolve_colors(objects: list[dict], rng: np.random.Generator) -> list[str]:
    """Fill unspecified colours with random palette colours unused by the prompt."""
    used = {o["color"] for o in objects if o.get("color")}
    free = [c for c in COLORS if c not in used]
    free = [free[i] for i in rng.permutation(len(free))]
    out = []
    for o in objects:
        out.append(o["color"] if o.get("color") else free.pop())
    return out


def _jitter(rng: np.random.Generator) -> int:
    return int(rng.integers(-1, 2))


def _cells_layout(sizes: list[int], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners for up to 4 objects, never touching: one centred, two side by
    side, three or four in the quadrants (reading order)."""
    n, corners = len(sizes), []
    for i, s in enumerate(sizes):
        if n == 1:
            x, y = (CANVAS - s) // 2, (CANVAS - s) // 2
        elif n == 2:
            x, y = CELL * i + (CELL - s) // 2, (CANVAS - s) // 2
        else:
            x, y = CELL * (i % 2) + (CELL - s) // 2, CELL * (i // 2) + (CELL - s) // 2
        corners.append((x + _jitter(rng), y + _jitter(rng)))
    return corners


def _pair_offsets(name: str, sa: int, sb: int, rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int], bool]:
    """Relative corners of subject A and object B for a relation; third item: B drawn first."""
    jitter = int(rng.integers(-2, 3))
    if name in ("left of", "right of", "above", "below", "bigger than", "smaller than"):
        gap = int(rng.integers(2, 5))
        along, across = sa + gap, (sa - sb) // 2 + jitter
        axis_x = name in ("left of", "right of") or (name not in ("above", "below") and rng.random() < 0.5)
        sign = -1 if name in ("right of", "below") else 1
        if name in ("bigger than", "smaller than") and rng.random() < 0.5:
            sign = -1
        if sign < 0:
            along = -(sb + gap)
        # A at the origin, B beyond it along the axis ("A left of B": B to the right;
        # "A above B": B below, since y grows downwards)
        b = (along, across) if axis_x else (across, along)
        return (0, 0), b, False
    raise ValueError(f"unknown relation {name!r}")


def _occlusion_offset(back: Placed, front: Placed, rng: np.random.Generator) -> tuple[int, int]:
    """Corner of the front object (back one at the origin) hiding part of the back one.

    Tries random shifts along one axis until the occlusion is legible: 15-55 %
    of the back object hidden, its visible part in one piece, and that part
    still read as the back object's shape at its true size.
    """
    for _ in range(200):
        along = int(round(rng.uniform(0.3, 0.65) * back.size)) * (1 if rng.random() < 0.5 else -1)
        across = (back.size - front.size) // 2 + int(rng.integers(-2, 3))
        off = (along, across) if rng.random() < 0.5 else (across, along)
        if _legible_occlusion(back, front, off):
            return off
    raise RuntimeError("no legible occlusion layout found")


def _legible_occlusion(back: Placed, front: Placed, off: tuple[int, int]) -> bool:
    pad = max(back.size, front.size) + 2
    n = back.size + 2 * pad
    mb = np.zeros((n, n), dtype=bool)
    mf = np.zeros((n, n), dtype=bool)
    mb[pad:pad + back.size, pad:pad + back.size] = shape_mask(back.shape, back.size, back.size)
    fy, fx = pad + off[1], pad + off[0]
    mf[fy:fy + front.size, fx:fx + front.size] = shape_mask(front.shape, front.size, front.size)
    visible = mb & ~mf
    hidden = 1.0 - visible.sum() / mb.sum()
    if not 0.15 <= hidden <= 0.55 or len(connected_components(visible)) != 1:
        return False
    shape, iou, box, _ = fit_shape(visible, mf)
    return shape == back.shape and iou > 0.999 and box == (pad, pad, back.size)


def _touching_offsets(a: Placed, b: Placed, rng: np.random.Generator) -> tuple[int, int]:
    """Corner for B so that its mask is 4-adjacent to A's without overlapping it."""
    axis_x = rng.random() < 0.5
    sign = 1 if rng.random() < 0.5 else -1
    across = (a.size - b.size) // 2 + int(rng.integers(-1, 2))
    ma, mb = shape_mask(a.shape, a.size, a.size), shape_mask(b.shape, b.size, b.size)
    start = a.size if sign > 0 else b.size
    prev = None
    for dist in range(start + 1, -1, -1):
        along = sign * dist
        off = (along, across) if axis_x else (across, along)
        if _overlap(ma, mb, off):
            if prev is None:
                break
            return prev
        prev = off
    raise RuntimeError("touching layout failed")


def _overlap(ma: np.ndarray, mb: np.ndarray, off: tuple[int, int]) -> bool:
    """Whether mask B placed at corner ``off`` (x, y) relative to A overlaps A."""
    dx, dy = off
    h = max(ma.shape[0], dy + mb.shape[0]) - min(0, dy)
    w = max(ma.shape[1], dx + mb.shape[1]) - min(0, dx)
    canvas = np.zeros((h, w), dtype=np.int8)
    oy, ox = -min(0, dy), -min(0, dx)
    canvas[oy:oy + ma.shape[0], ox:ox + ma.shape[1]] += ma
    canvas[oy + dy:oy + dy + mb.shape[0], ox + dx:ox + dx + mb.shape[1]] += mb
    return bool((canvas > 1).any())


def _translate_into_canvas(boxes: list[tuple[int, int, int]], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Shift relative boxes (x, y, size) so that their union is centred (+-1 px, 1 px margin)."""
    x0 = min(b[0] for b in boxes); y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes); y1 = max(b[1] + b[2] for b in boxes)
    w, h = x1 - x0, y1 - y0
    if w > CANVAS - 2 or h > CANVAS - 2:
        raise RuntimeError("layout does not fit the canvas")
    ox = int(np.clip((CANVAS - w) // 2 + _jitter(rng), 1, CANVAS - 1 - w)) - x0
    oy = int(np.clip((CANVAS - h) // 2 + _jitter(rng), 1, CANVAS - 1 - h)) - y0
    return [(b[0] + ox, b[1] + oy) for b in boxes]


def layout(meta: dict, seed: int) -> list[Placed]:
    """Objects of a prompt, in drawing order, for one seed. Layouts are canonical (one object
    centred, two side by side, three or four in the quadrants in the prompt's order, a related
    pair centred as a group): a MAR model with few AR steps samples many tokens at once, each
    independently given the context, and draws coherent objects only where the prompt pins down
    where they are. What :mod:`marpipe.world.scorers` reads back: an object of size ``s`` fills an
    ``s x s`` box and touches its four sides; objects never touch unless the relation is
    ``touching`` or 3-D; "A in front of B" draws B first, A overlapping it and whole."""
    rng = np.random.default_rng([int(seed), 7919])
    objects = meta["objects"]
    colors = _resolve_colors(objects, rng)
    textures = [o.get("texture") or "plain" for o in objects]
    rel = meta.get("relation")
    if rel is None:
        specs = [i for i, o in enumerate(objects) for _ in range(int(o.get("count", 1)))]
        if len(specs) > MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} objects fit the canvas")
        lo, hi = (9, 12) if len(specs) == 4 else (10, 14) if len(specs) > 1 else (10, 15)
        sizes = [int(rng.integers(lo, hi)) for _ in specs]
        corners = _cells_layout(sizes, rng)
        return [Placed(colors[i], objects[i]["shape"], textures[i], x, y, s, i)
                for i, s, (x, y) in zip(specs, sizes, corners)]
    name = rel["name"]
    if name == "bigger than":
        sizes = [int(rng.integers(13, 15)), int(rng.integers(9, 11))]
    elif name == "smaller than":
        sizes = [int(rng.integers(9, 11)), int(rng.integers(13, 15))]
    else:  # similar sizes (ratio < BIGGER_RATIO), so "bigger than" never reads true by chance
        first = int(rng.integers(10, 14))
        sizes = [first, int(np.clip(first + rng.integers(-2, 3), 10, 13))]
    a = Placed(colors[0], objects[0]["shape"], textures[0], 0, 0, sizes[0], 0)
    b = Placed(colors[1], objects[1]["shape"], textures[1], 0, 0, sizes[1], 1)
    if name == "touching":
        (ax, ay), (bx, by), b_first = (0, 0), _touching_offsets(a, b, rng), False
    elif name == "in front of":   # B is the back object, drawn first
        (ax, ay), (bx, by), b_first = _occlusion_offset(b, a, rng), (0, 0), True
    elif name == "behind":        # A is the back object, drawn first
        (ax, ay), (bx, by), b_first = (0, 0), _occlusion_offset(a, b, rng), False
    else:
        (ax, ay), (bx, by), b_first = _pair_offsets(name, a.size, b.size, rng)
    (ax, ay), (bx, by) = _translate_into_canvas([(ax, ay, a.size), (bx, by, b.size)], rng)
    a = Placed(a.color, a.shape, a.texture, ax, ay, a.size, 0)
    b = Placed(b.color, b.shape, b.texture, bx, by, b.size, 1)
    return [b, a] if b_first else [a, b]


# --- drawing ----------------------------------------------------------------------

def draw(placed: list[Placed], style: str, rng: np.random.Generator) -> np.ndarray:
    """``[H, W, 3]`` float32 image of placed objects over a ``style`` background."""
    img = background(style, rng)
    for p in placed:
        sl = (slice(p.y, p.y + p.size), slice(p.x, p.x + p.size))
        m = shape_mask(p.shape, p.size, p.size)
        t = texture_mask(p.texture, p.size, p.size)
        patch = img[sl]
        patch[m & ~t] = np.asarray(PALETTE[p.color], dtype=np.float32)
        patch[m & t] = shade(p.color)
    return img


def render_one(meta: dict, seed: int) -> np.ndarray:
    """One image ``[H, W, 3]`` float32 in [0, 1] for a prompt and a seed."""
    placed = layout(meta, seed)
    rng = np.random.default_rng([int(seed), 104729])
    return draw(placed, meta.get("style", "light"), rng)


def render(metas: list[dict], seeds: list[int] | int) -> torch.Tensor:
    """Batch render: ``[B, 3, 32, 32]`` float tensor in [0, 1].

    ``seeds`` is one seed per prompt, or a single int (then prompt ``i`` uses
    ``seed + i``).
    """
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(len(metas))]
    if len(seeds) != len(metas):
        raise ValueError("one seed per prompt")
    imgs = np.stack([render_one(m, s) for m, s in zip(metas, seeds)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()


# --- negatives ----------------------------------------------------------------------

PIXEL_CORRUPTIONS: tuple[str, ...] = ("blur", "color_shift", "noise")


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def corrupt(images: torch.Tensor, kind: str, seed: int = 0, strength: float = 1.0) -> torch.Tensor:
    """Pixel-level corruption of a batch (``blur``, ``color_shift``, ``noise``).

    ``strength`` 1.0 is clearly visible at 32x32; results are clamped to [0, 1].
    Semantic negatives (wrong objects) come from :func:`mismatch_metadata`.
    """
    g = torch.Generator().manual_seed(int(seed))
    x = images.float()
    if kind == "blur":
        out = _blur(x, 1.2 * strength)
    elif kind == "color_shift":  # rotate the RGB channels and tint
        shift = (torch.rand(x.shape[0], 3, 1, 1, generator=g) - 0.5) * 0.3 * strength
        out = x[:, [1, 2, 0]] * strength + x * (1 - strength) + shift
    elif kind == "noise":
        out = x + torch.randn(x.shape, generator=g) * 0.25 * strength
    else:
        raise ValueError(f"unknown corruption {kind!r}; known: {PIXEL_CORRUPTIONS}")
    return out.clamp(0.0, 1.0)


def mismatch_metadata(meta: dict, rng: np.random.Generator) -> dict:
    """A different prompt close to ``meta`` (a "wrong-object swap" negative).

    Changes one thing: swaps two objects' colours, changes a shape, a texture or
    a count, or flips the relation. The returned dict has its own ``prompt``.
    """
    out = {**meta, "objects": [dict(o) for o in meta["objects"]],
           "relation": dict(meta["relation"]) if meta.get("relation") else None}
    objs = out["objects"]
    options = ["shape"]
    colored = [i for i, o in enumerate(objs) if o.get("color")]
    # swapping colours (or flipping a relation) between look-alike objects changes nothing
    swaps = [(i, j) for i in colored for j in colored
             if i < j and (objs[i]["shape"], objs[i].get("texture")) != (objs[j]["shape"], objs[j].get("texture"))]
    if swaps:
        options.append("swap_colors")
    if colored:
        options.append("color")
    if any(o.get("texture") for o in objs):
        options.append("texture")
    if out["relation"] and _describe(objs[0]) != _describe(objs[1]):
        options.append("relation")
    if out["category"] == "numeracy":
        options = ["count"] * 2 + options
    choice = options[int(rng.integers(len(options)))]
    if choice == "swap_colors":
        i, j = swaps[int(rng.integers(len(swaps)))]
        objs[i]["color"], objs[j]["color"] = objs[j]["color"], objs[i]["color"]
    elif choice == "color":
        i = colored[int(rng.integers(len(colored)))]
        used = {o["color"] for o in objs if o.get("color")}
        objs[i]["color"] = str(rng.choice([c for c in COLORS if c not in used]))
    elif choice == "shape":
        i = int(rng.integers(len(objs)))
        used = {o["shape"] for o in objs}
        choices = [s for s in ("circle", "square", "triangle", "cross") if s not in used]
        objs[i]["shape"] = str(rng.choice(choices or [s for s in ("circle", "square") if s != objs[i]["shape"]]))
    elif choice == "texture":
        i = next(k for k, o in enumerate(objs) if o.get("texture"))
        objs[i]["texture"] = str(rng.choice([t for t in TEXTURES if t != objs[i]["texture"]]))
    elif choice == "relation":
        out["relation"]["name"] = _opposite(out["relation"]["name"], rng)
    elif choice == "count":
        room = MAX_OBJECTS - out["count"]
        moves = [(i, d) for i, o in enumerate(objs) for d in (-2, -1, 1, 2)
                 if o["count"] + d >= 1 and d <= room]
        i, d = moves[int(rng.integers(len(moves)))]
        objs[i]["count"] += d
        out["count"] = sum(o["count"] for o in objs)
    out["prompt"] = prompt_text(out)
    return out


def _describe(obj: dict) -> tuple:
    return obj.get("color"), obj["shape"], obj.get("texture")


def _opposite(name: str, rng: np.random.Generator) -> str:
    pairs = {"left of": "right of", "above": "below", "in front of": "behind", "bigger than": "smaller than"}
    pairs.update({v: k for k, v in pairs.items()})
    if name in pairs:
        return pairs[name]
    others = [r for r in RELATIONS["non_spatial"] if r != name]
    return str(rng.choice(others))


NEGATIVE_KINDS: tuple[str, ...] = PIXEL_CORRUPTIONS + ("swap",)


def render_negatives(metas: list[dict], seeds: list[int] | int, kind: str,
                     seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """Negative examples for prompts ``metas``: (images, the metadata they really show).

    Pixel kinds corrupt the clean renders (the metadata is unchanged); ``swap``
    renders a minimally changed prompt (:func:`mismatch_metadata`) instead.
    """
    if kind == "swap":
        rng = np.random.default_rng([int(seed), 31337])
        shown = [mismatch_metadata(m, rng) for m in metas]
        return render(shown, seeds), shown
    return corrupt(render(metas, seeds), kind, seed), list(metas)
