"""Prompt grammar of the small world, with structured metadata and splits.

Every prompt is a metadata dict (:func:`sample_prompt`) that the rewards receive; the categories
mirror T2I-CompBench's seven (plus ``object``, training only, as in T2I-R1's training prompts).
Splits never share a prompt string (:func:`heldout_bucket`), and ``style_<name>`` prompts carry
an explicit background, standing in for HPS's four benchmark styles. The world as a whole:
``docs/results.md``, "The small world"."""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")
STYLES: tuple[str, ...] = ("light", "dark", "gradient", "noise")

RELATIONS: dict[str, tuple[str, ...]] = {
    "2d": ("left of", "right of", "above", "below"),
    "3d": ("in front of", "behind"),
    "non_spatial": ("touching", "bigger than", "smaller than"),
}
RELATION_WORDS: dict[str, str] = {
    "left of": "on the left of", "right of": "on the right of", "above": "above",
    "below": "below", "in front of": "in front of", "behind": "behind",
    "touching": "touching", "bigger than": "bigger than", "smaller than": "smaller than",
}
STYLE_WORDS: dict[str, str] = {
    "light": "light background", "dark": "dark background",
    "gradient": "gradient background", "noise": "noisy background",
}
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4

# color       2-3 objects, every colour given ("a red circle and a blue square")
# shape       2-3 objects, at most one colour given ("a circle and a red cross")
# texture     1-3 objects, each with a texture word ("a striped circle and a dotted blue square")
# 2d_spatial  left of / right of / above / below (centroids)
# 3d_spatial  in front of / behind (occlusion: the front object is drawn whole)
# numeracy    1-2 groups, 1-4 objects in total ("two red circles and one square")
# non_spatial touching / bigger than / smaller than: T2I-CompBench scores it with CLIP, here a
#             learned scorer judges it (a verifiable reading is in :mod:`marpipe.world.scorers`)
# complex     two objects with colour + texture and any relation above
# object      one object ("a dotted orange triangle"), training only
CATEGORIES: tuple[str, ...] = (
    "color", "shape", "texture", "2d_spatial", "3d_spatial", "numeracy", "non_spatial", "complex",
)
#: Training mix, shaped like T2I-R1's prompt file (spatial 2195, numeracy 1172,
#: color 879, complex 700, non-spatial 700, texture 695, shape 682, object 200).
TRAIN_MIX: dict[str, float] = {
    "2d_spatial": 1500, "3d_spatial": 695, "numeracy": 1172, "color": 879, "complex": 700,
    "non_spatial": 700, "texture": 695, "shape": 682, "object": 200,
}
HELDOUT_FRACTION = 0.25
#: Probability that a training prompt names its background style.
TRAIN_STYLE_PROB = 0.4

SPLITS: tuple[str, ...] = (
    ("train",) + tuple(f"val_{c}" for c in CATEGORIES)
    + ("style",) + tuple(f"style_{s}" for s in STYLES)
)


# --- text ---------------------------------------------------------------------

def object_phrase(obj: dict) -> str:
    """'a dotted red circle', 'an orange square', 'three blue crosses'."""
    words = [w for w in (obj.get("texture"), obj.get("color")) if w]
    count = int(obj.get("count", 1))
    noun = obj["shape"] + ("es" if obj["shape"] == "cross" else "s") if count > 1 else obj["shape"]
    words.append(noun)
    if obj.get("count_word", False) or count > 1:
        head = COUNT_WORDS[count]
    else:
        head = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([head] + words)


def _join(phrases: list[str]) -> str:
    if len(phrases) <= 2:
        return " and ".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def prompt_text(meta: dict) -> str:
    """The prompt string of a metadata dict (the inverse of the grammar)."""
    phrases = [object_phrase(o) for o in meta["objects"]]
    rel = meta.get("relation")
    if rel:
        text = f"{phrases[0]} {RELATION_WORDS[rel['name']]} {phrases[1]}"
    else:
        text = _join(phrases)
    if meta.get("style_in_text"):
        text += ", " + STYLE_WORDS[meta["style"]]
    return text


# --- category generators ------------------------------------------------------

def _obj(color: str | None, shape: str, texture: str | None = None, count: int = 1,
         count_word: bool = False) -> dict:
    obj = {"color": color, "shape": shape, "texture": texture, "count": count}
    if count_word:
        obj["count_word"] = True
    return obj


def _distinct(rng: np.random.Generator, pool: tuple[str, ...], k: int) -> list[str]:
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def _maybe(rng: np.random.Generator, value: str, p: float) -> str | None:
    return value if rng.random() < p else None


def _gen_color(rng):
    k = int(rng.integers(2, 4))
    colors, shapes = _distinct(rng, COLORS, k), rng.choice(SHAPES, size=k)
    return [_obj(c, str(s)) for c, s in zip(colors, shapes)], None


def _gen_shape(rng):
    k = int(rng.integers(2, 4))
    shapes = _distinct(rng, SHAPES, k)
    colored = int(rng.integers(-1, k))  # -1: no colour at all
    colors = _distinct(rng, COLORS, k)
    return [_obj(colors[i] if i == colored else None, s) for i, s in enumerate(shapes)], None


def _gen_texture(rng):
    k = int(rng.integers(1, 4))
    colors = _distinct(rng, COLORS, k)
    objs = [_obj(_maybe(rng, colors[i], 0.5), str(rng.choice(SHAPES)), str(rng.choice(TEXTURES)))
            for i in range(k)]
    return objs, None


def _gen_pair(rng, kind: str, color_p: float, texture: bool):
    colors, shapes = _distinct(rng, COLORS, 2), rng.choice(SHAPES, size=2)
    textures = rng.choice(TEXTURES, size=2) if texture else (None, None)
    if texture and textures[0] == textures[1] == "plain":
        textures[int(rng.integers(0, 2))] = str(rng.choice(TEXTURES[1:]))
    objs = [_obj(_maybe(rng, colors[i], color_p), str(shapes[i]),
                 None if textures[i] is None else str(textures[i])) for i in range(2)]
    names = RELATIONS[kind] if kind != "any" else sum(RELATIONS.values(), ())
    name = str(rng.choice(names))
    rel_kind = next(k for k, v in RELATIONS.items() if name in v)
    return objs, {"kind": rel_kind, "name": name}


def _gen_numeracy(rng):
    if rng.random() < 0.4:
        counts = [int(rng.integers(1, MAX_OBJECTS + 1))]
    else:
        a = int(rng.integers(1, MAX_OBJECTS))
        counts = [a, int(rng.integers(1, MAX_OBJECTS - a + 1))]
    shapes = _distinct(rng, SHAPES, len(counts))
    colors = _distinct(rng, COLORS, len(counts))
    objs = [_obj(_maybe(rng, colors[i], 0.6), shapes[i], count=n, count_word=True)
            for i, n in enumerate(counts)]
    return objs, None


def _gen_object(rng):
    texture = str(rng.choice(TEXTURES[1:])) if rng.random() < 0.4 else None
    return [_obj(str(rng.choice(COLORS)), str(rng.choice(SHAPES)), texture)], None


GENERATORS: dict[str, Callable[[np.random.Generator], tuple[list[dict], dict | None]]] = {
    "color": _gen_color,
    "shape": _gen_shape,
    "texture": _gen_texture,
    "2d_spatial": lambda rng: _gen_pair(rng, "2d", 0.8, False),
    "3d_spatial": lambda rng: _gen_pair(rng, "3d", 0.8, False),
    "non_spatial": lambda rng: _gen_pair(rng, "non_spatial", 0.8, False),
    "complex": lambda rng: _gen_pair(rng, "any", 1.0, True),
    "numeracy": _gen_numeracy,
    "object": _gen_object,
}


def sample_prompt(category: str, rng: np.random.Generator, style: str = "light",
                  style_in_text: bool = False) -> dict:
    """Draw one prompt of ``category``; returns its metadata (JSON-serialisable), e.g.::

        {"prompt": "a red circle on the left of a dotted blue square", "category": "complex",
         "objects": [{"color": "red", "shape": "circle", "texture": None, "count": 1},
                     {"color": "blue", "shape": "square", "texture": "dotted", "count": 1}],
         "relation": {"kind": "2d", "name": "left of"},   # subject objects[0], object objects[1]
         "count": 2, "style": "light"}                     # objects drawn in total; background

    ``None`` attributes are unspecified: the renderer picks a random colour (distinct from the
    other objects') and draws unspecified textures plain."""
    objects, relation = GENERATORS[category](rng)
    meta = {
        "category": category,
        "objects": objects,
        "relation": relation,
        "count": sum(int(o["count"]) for o in objects),
        "style": style,
        "style_in_text": style_in_text,
    }
    meta["prompt"] = prompt_text(meta)
    return meta


# --- splits -------------------------------------------------------------------

def heldout_bucket(text: str) -> bool:
    """True when ``text`` belongs to the held-out side (a stable hash of the text, the same across
    runs and machines); the held-out categories also use disjoint grammars."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < HELDOUT_FRACTION


def _split_sampler(name: str) -> tuple[bool, Callable[[np.random.Generator, int], dict]]:
    """(held_out, draw(rng, index)) for a split name."""
    if name == "train":
        cats, weights = list(TRAIN_MIX), np.array(list(TRAIN_MIX.values()), dtype=float)
        weights /= weights.sum()

        def draw(rng, i):
            cat = cats[int(rng.choice(len(cats), p=weights))]
            if rng.random() < TRAIN_STYLE_PROB:
                return sample_prompt(cat, rng, str(rng.choice(STYLES)), True)
            return sample_prompt(cat, rng)
        return False, draw
    if name.startswith("val_") and name[4:] in CATEGORIES:
        return True, lambda rng, i: sample_prompt(name[4:], rng)
    if name == "style" or (name.startswith("style_") and name[6:] in STYLES):
        styles = STYLES if name == "style" else (name[6:],)
        cats = list(CATEGORIES)

        def draw(rng, i):
            return sample_prompt(cats[int(rng.integers(len(cats)))], rng,
                                 styles[i % len(styles)], True)
        return True, draw
    raise KeyError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")


def make_split(name: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` prompts (metadata dicts, text under ``'prompt'``) of split ``name``.

    Prompts are distinct while the split's grammar allows it; past that
    (tiny categories, huge ``n``) they repeat. ``style`` cycles through the four
    styles. Deterministic in ``(name, n, seed)``.
    """
    held_out, draw = _split_sampler(name)
    rng = np.random.default_rng([seed, _stable_int(name)])
    out: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n and attempts < 200 * n + 1000:
        attempts += 1
        meta = draw(rng, len(out))
        if heldout_bucket(meta["prompt"]) != held_out or meta["prompt"] in seen:
            continue
        seen.add(meta["prompt"])
        out.append(meta)
    if not out:
        raise RuntimeError(f"split {name!r} produced no prompts")
    while len(out) < n:  # grammar exhausted: repeat, keeping determinism
        out.append(dict(out[len(out) % len(seen)]))
    return out


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")
