"""T2I-CompBench scoring, one function per category as the official scripts score it
(Karine-Huang/T2I-CompBench; each function names its script).

Prompt/image alignment is explicit: every function takes ``prompt_index`` (one int per image,
indexing ``prompts``), so nothing assumes contiguous blocks of 10 images (the pitfall of the
MAR-GRPO scripts; :func:`contiguous_index` builds that layout). The official numbers use UniDet
(detectron2, not on PyPI); here any detector returning ``[{"label", "score", "box"}]`` works, the
default :class:`~marpipe.metrics.detection.ZeroShotDetector`, ``UNIDET_HOOK`` takes a UniDet
wrapper, and results record ``detector`` so no number passes for an official-UniDet one."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

# ---------------------------------------------------------------------------
# text helpers

_STOP_BOUNDARY = {
    "and", "or", "with", "on", "in", "of", "at", "near", "next", "to", "behind", "under",
    "over", "above", "below", "beside", "by", "from", "into", "onto", "while", "is", "are",
    "was", "were", "be", "has", "have", "top", "bottom", "left", "right", "side", "front",
    "hidden", "its", "their", "his", "her", "that", "which", "who", ",", ".", ";", "!", "?",
}


def noun_chunks(text: str) -> list[str]:
    """Noun chunks: spaCy ``en_core_web_sm`` when installed (as the reference), else a
    dependency-free approximation (maximal runs of non-boundary words, e.g.
    ``"a red car and a blue bench"`` -> ``["a red car", "a blue bench"]``)."""
    try:
        import spacy  # noqa: F401
        nlp = _spacy()
        if nlp is not None:
            return [c.text for c in nlp(text).noun_chunks]
    except ImportError:
        pass
    words = re.findall(r"[A-Za-z0-9'\-]+|[,.;!?]", text)
    chunks, cur = [], []
    for w in words:
        if w.lower() in _STOP_BOUNDARY:
            if cur:
                chunks.append(cur)
            cur = []
        else:
            cur.append(w)
    if cur:
        chunks.append(cur)
    return [" ".join(c) for c in chunks if any(x.lower() not in {"a", "an", "the"} for x in c)]


_SPACY = []


def _spacy():
    if not _SPACY:
        try:
            import spacy
            _SPACY.append(spacy.load("en_core_web_sm"))
        except Exception:  # model not installed
            _SPACY.append(None)
    return _SPACY[0]


def noun_chunker_name() -> str:
    try:
        import spacy  # noqa: F401
        return "spacy" if _spacy() is not None else "heuristic"
    except ImportError:
        return "heuristic"


def contiguous_index(n_prompts: int, per_prompt: int = 10) -> list[int]:
    """The reference layout: images ``[i*per_prompt, (i+1)*per_prompt)`` belong to prompt i."""
    return [i for i in range(n_prompts) for _ in range(per_prompt)]


# ---------------------------------------------------------------------------
# attribute binding (BLIP-VQA)

def blip_vqa_attribute_scores(vqa, images: torch.Tensor, prompts: Sequence[str],
                              prompt_index: Sequence[int], np_num: int = 8) -> torch.Tensor:
    """Per-image product over noun-chunk questions of the yes-probability: for each noun chunk ``c``
    of the prompt (up to ``np_num``), BLIP-VQA's ``P(yes)/(P(yes)+P(no))`` for ``"{c}?"``
    (``BLIPvqa_eval/BLIP_vqa.py``; color, shape, texture)."""
    prompt_index = list(prompt_index)
    assert len(prompt_index) == images.shape[0], "one prompt index per image"
    qs, who = [], []
    for img_i, p_i in enumerate(prompt_index):
        for c in noun_chunks(prompts[p_i])[:np_num]:
            qs.append(f"{c}?")
            who.append(img_i)
    scores = torch.ones(images.shape[0])  # an image without questions scores 1 (reference)
    if qs:
        probs = vqa.score_questions(images[torch.tensor(who)], qs)
        for i, p in zip(who, probs):
            scores[i] *= p
    return scores


# ---------------------------------------------------------------------------
# spatial rules (UniDet_eval, verbatim maths)

VOCAB_2D = ["on side of", "next to", "near", "on the left of", "on the right of",
            "on the bottom of", "on the top of", "on top of"]
VOCAB_3D = ["in front of", "behind", "hidden"]
PERSON = ("girl", "boy", "man", "woman")


def _iou(b1, b2):
    xo = max(0.0, min(b1[2], b2[2]) - max(b1[0], b2[0]))
    yo = max(0.0, min(b1[3], b2[3]) - max(b1[1], b2[1]))
    inter = xo * yo
    union = (b1[2] - b1[0]) * (b1[3] - b1[1]) + (b2[2] - b2[0]) * (b2[3] - b2[1]) - inter
    return inter / union if union > 0 else 0.0


def determine_position(locality, box1, box2, iou_threshold=0.1, distance_threshold=150,
                       depth_map=None, iou_threshold_3d=0.5) -> float:
    """T2I-CompBench ``determine_position`` (boxes ``[x0, y0, x1, y1]`` in pixels).

    Distances are box2 centre minus box1 centre, image y grows downwards. Note the
    reference quirks kept here: "on top of" (without "the") matches no branch (0);
    the 3-D branch indexes the depth map ``[x, y]`` (rows by x).
    """
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    iou = _iou(box1, box2)
    if locality in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    horizontal = {"on the right of": dx < 0, "on the left of": dx > 0}
    vertical = {"on the bottom of": dy < 0, "on the top of": dy > 0}
    if locality in horizontal or locality in vertical:
        if locality in horizontal:
            ok, dominant = horizontal[locality], abs(dx) > abs(dy)
        else:
            ok, dominant = vertical[locality], abs(dy) > abs(dx)
        if ok and dominant:
            return 1.0 if iou < iou_threshold else iou_threshold / iou
        return 0.0
    if locality in ("in front of", "behind", "hidden"):
        d = depth_map
        da = d[int(box1[0]):int(box1[2]), int(box1[1]):int(box1[3])].float().mean()
        db = d[int(box2[0]):int(box2[2]), int(box2[1]):int(box2[3])].float().mean()
        diff = float(da - db)
        closer = diff > 0 if locality == "in front of" else diff < 0
        if iou > iou_threshold_3d:
            return 1.0 if closer else 0.0
        if 0 < iou < iou_threshold_3d:
            return iou / iou_threshold_3d if closer else 0.0
        return 0.0
    return 0.0


def find_locality(prompt: str, vocab=VOCAB_2D):
    for w in vocab:
        if w in prompt:
            return w
    return None


def first_last_nouns(prompt: str, objects: Sequence[str] | None = None) -> tuple[str, str]:
    """obj1/obj2 of a simple spatial prompt: first and last noun. Given
    ``objects`` (metadata) they are used; else the last word of the first and last noun
    chunk (the reference uses spaCy's first/last NOUN)."""
    if objects:
        return objects[0], objects[-1]
    ch = noun_chunks(prompt)
    if not ch:
        return "", ""
    return ch[0].split()[-1], ch[-1].split()[-1]


def _norm_obj(o):
    return "person" if o in PERSON else o


def spatial_2d_score(dets: list[dict], prompt: str, objects=None) -> float:
    """``UniDet_eval/2D_spatial_eval.py`` for one image (``dets`` sorted by score descending):
    ``0.25 conf1 + 0.25 conf2 + 0.5 determine_position``, one object only ``0.25 conf``, then
    scores below 0.5 set to 0 (the 3-D score has no such floor)."""
    locality = find_locality(prompt, VOCAB_2D)
    o1, o2 = (_norm_obj(o) for o in first_last_nouns(prompt, objects))
    labels = [d["label"] for d in dets]
    if o1 in labels and o2 in labels:
        a, b = dets[labels.index(o1)], dets[labels.index(o2)]
        s = 0.25 * a["score"] + 0.25 * b["score"] + determine_position(locality, a["box"], b["box"]) / 2
    elif o1 in labels:
        s = 0.25 * dets[labels.index(o1)]["score"]
    elif o2 in labels:
        s = 0.25 * dets[labels.index(o2)]["score"]
    else:
        s = 0.0
    return 0.0 if s < 0.5 else float(s)


def spatial_3d_score(dets: list[dict], prompt: str, depth: torch.Tensor, objects=None) -> float:
    """``3D_spatial_eval.py`` for one image; ``depth``: [H, W] min-max normalised
    inverse depth (larger = closer). Substring label matching as the reference."""
    locality = find_locality(prompt, VOCAB_3D)
    o1, o2 = (_norm_obj(o) for o in first_last_nouns(prompt, objects))
    labels = [d["label"] for d in dets]
    joined = " ".join(labels)
    p1 = p2 = None
    if o1 in joined and o2 in joined:
        for i, lab in enumerate(labels):  # the reference's loop, quirks included
            if o1 in lab:
                p1 = i
            if o2 in lab:
                p2 = i
            if p1 is not None and p2 is not None:
                break
        a, b = dets[p1], dets[p2]
        return float(0.25 * a["score"] + 0.25 * b["score"]
                     + determine_position(locality, a["box"], b["box"], depth_map=depth) / 2)
    for o in (o1, o2):
        if o in joined:
            i = next(i for i, lab in enumerate(labels) if o in lab)
            return float(0.25 * dets[i]["score"])
    return 0.0


def _dup(b1, b2) -> bool:
    """``numeracy_eval.calculate_iou``: +1 pixel areas; duplicate if IoU > 0.9 or either
    box is > 90 % inside the other."""
    xi0, yi0, xi1, yi1 = max(b1[0], b2[0]), max(b1[1], b2[1]), min(b1[2], b2[2]), min(b1[3], b2[3])
    inter = max(0, xi1 - xi0 + 1) * max(0, yi1 - yi0 + 1)
    a1 = (b1[2] - b1[0] + 1) * (b1[3] - b1[1] + 1)
    a2 = (b2[2] - b2[0] + 1) * (b2[3] - b2[1] + 1)
    return inter / (a1 + a2 - inter) > 0.9 or inter / a1 > 0.9 or inter / a2 > 0.9


_ALIASES = {"boy": "person", "girl": "person", "man": "person", "woman": "person",
            "ship": "boat", "telivision": "tv", "goldfish": "fish", "painting": "picture"}


def numeracy_score(dets: list[dict], counts: Sequence[tuple[str, int]]) -> float:
    """``numeracy_eval.py`` for one image: ``counts`` = [(singular object, number)]; per object
    ``0.5/len`` if detected + ``0.5/len`` if the de-duplicated count is exact."""
    if not counts:
        return 0.0
    new_obj, new_box = [], []
    for d in dets:  # de-duplicate same-label boxes
        if not any(_dup(d["box"], b) and d["label"] == o for o, b in zip(new_obj, new_box)):
            new_obj.append(d["label"])
            new_box.append(d["box"])
    w, s = 1.0 / len(counts), 0.0
    for obj, n in counts:
        obj = _ALIASES.get(obj, obj)
        if obj not in new_obj:
            new_obj = [obj if obj in o else o for o in new_obj]
        if obj in new_obj:
            s += 0.5 * w
            if new_obj.count(obj) == n:
                s += 0.5 * w
    return s


_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
            "six": 6, "seven": 7, "eight": 8}


def parse_counts(prompt: str) -> list[tuple[str, int]]:
    """Dependency-free ``(object, number)`` parser for numeracy prompts: a number word
    followed by a noun (plural ``-s``/``-es`` stripped). The reference matches against
    its ``new_objects.txt`` singular/plural list; pass ``metadata['numeracy_info']``
    when available instead."""
    words = re.findall(r"[A-Za-z\-]+", prompt.lower())
    out = []
    for i, w in enumerate(words[:-1]):
        if w in _NUMBERS:
            nxt = words[i + 1]
            if _NUMBERS[w] > 1:
                nxt = re.sub(r"(ches|shes|sses|xes)$", lambda m: m.group(0)[:-2], nxt)
                nxt = nxt[:-1] if nxt.endswith("s") and not nxt.endswith("ss") else nxt
            out.append((nxt, _NUMBERS[w]))
    return out


def three_in_one(attribute, spatial, clip, kinds: Sequence[str]) -> torch.Tensor:
    """Per image: ``kinds[i]`` in {"spatial", "action", "both"} -> mean of (attr, spatial),
    (attr, clip) or all three (``3_in_1.py``)."""
    attribute, spatial, clip = (torch.as_tensor(x, dtype=torch.float32) for x in (attribute, spatial, clip))
    out = torch.empty_like(attribute)
    for i, k in enumerate(kinds):
        if k == "spatial":
            out[i] = (spatial[i] + attribute[i]) * 0.5
        elif k == "action":
            out[i] = (clip[i] + attribute[i]) * 0.5
        else:
            out[i] = (attribute[i] + spatial[i] + clip[i]) / 3
    return out


def remove_adjectives(prompt: str) -> str:
    """The complex CLIP part drops adjectives (spaCy POS); without spaCy this is a no-op."""
    nlp = _spacy() if noun_chunker_name() == "spacy" else None
    if nlp is None:
        return prompt
    return " ".join(t.text for t in nlp(prompt) if t.pos_ != "ADJ")


# ---------------------------------------------------------------------------
# category evaluation

#: Plug a UniDet (detectron2) detector here: ``UNIDET_HOOK[0] = callable(images, vocab) -> dets``.
UNIDET_HOOK: list[Callable] = []


def evaluate_category(category: str, images: torch.Tensor, prompts: Sequence[str],
                      prompt_index: Sequence[int], *, vqa=None, clip=None, detector=None,
                      depth=None, metadata: Sequence[dict] | None = None) -> dict:
    """Score one T2I-CompBench category. Returns ``{"score", "per_image", "detector", ...}``.
    Non-spatial is ClipScore (ViT-B/32 cosine); complex scores its CLIP part on the prompt
    without adjectives (:func:`remove_adjectives`)."""
    prompt_index = list(prompt_index)
    if len(prompt_index) != images.shape[0]:
        raise ValueError("prompt_index must give one prompt index per image")
    aligned = [prompts[i] for i in prompt_index]
    meta = [dict(metadata[i]) if metadata else {} for i in prompt_index]
    info: dict = {"category": category, "n_images": images.shape[0]}
    if category in ("color", "shape", "texture"):
        s = blip_vqa_attribute_scores(vqa, images, prompts, prompt_index)
        info["noun_chunker"] = noun_chunker_name()
    elif category in ("non_spatial", "non-spatial"):
        s = clip.score(images, aligned)
    elif category in ("spatial", "2d_spatial"):
        dets = _detect(detector, images, aligned, meta)
        s = torch.tensor([spatial_2d_score(d, p, m.get("objects")) for d, p, m in zip(dets, aligned, meta)])
        info["detector"] = _det_name(detector)
    elif category in ("3d_spatial", "3d-spatial"):
        dets = _detect(detector, images, aligned, meta)
        dmaps = depth.depth_maps(images)
        s = torch.tensor([spatial_3d_score(d, p, dm, m.get("objects"))
                          for d, p, dm, m in zip(dets, aligned, dmaps, meta)])
        info["detector"] = _det_name(detector)
        info["depth"] = getattr(depth, "name", type(depth).__name__)
    elif category == "numeracy":
        counts = [[(x["obj_name"], x["num"]) for x in m["numeracy_info"]] if "numeracy_info" in m
                  else parse_counts(p) for p, m in zip(aligned, meta)]
        dets = _detect(detector, images, aligned, meta, vocab=[[o for o, _ in c] for c in counts])
        s = torch.tensor([numeracy_score(d, c) for d, c in zip(dets, counts)])
        info["detector"] = _det_name(detector)
    elif category == "complex":
        attr = blip_vqa_attribute_scores(vqa, images, prompts, prompt_index)
        clip_s = clip.score(images, [remove_adjectives(p) for p in aligned])
        dets = _detect(detector, images, aligned, meta)
        spat = torch.tensor([spatial_2d_score(d, p, m.get("objects")) for d, p, m in zip(dets, aligned, meta)])
        kinds = [m.get("complex_kind", "both") for m in meta]
        s = three_in_one(attr, spat, clip_s, kinds)
        info["detector"] = _det_name(detector)
    else:
        raise KeyError(f"unknown T2I-CompBench category {category!r}")
    info["per_image"] = s.tolist()
    info["score"] = float(s.mean()) if s.numel() else float("nan")
    return info


def _det_name(det) -> str:
    return "unidet" if (UNIDET_HOOK and det is None) else getattr(det, "name", type(det).__name__)


def _detect(detector, images, prompts, meta, vocab=None):
    if detector is None and UNIDET_HOOK:
        return UNIDET_HOOK[0](images, vocab)
    if vocab is None:
        vocab = [m.get("objects") or [_norm_obj(o) for o in first_last_nouns(p)]
                 for p, m in zip(prompts, meta)]
    return detector.detect(images, vocab)
