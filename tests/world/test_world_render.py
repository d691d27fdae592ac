"""Small world: prompts, splits, rendering determinism, corruptions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from marpipe.world.prompts import CATEGORIES, SPLITS, STYLES, make_split, prompt_text
from marpipe.world.render import PIXEL_CORRUPTIONS, corrupt, layout, mismatch_metadata, render

torch.set_num_threads(1)


def test_render_is_deterministic_and_seed_dependent():
    metas = make_split("train", 16, seed=3)
    a, b = render(metas, 11), render(metas, 11)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert a.numpy().tobytes() == b.numpy().tobytes()
    c = render(metas, 12)
    assert not torch.equal(a, c)  # the seed changes the layout


def test_splits_are_deterministic():
    assert make_split("val_color", 20, seed=1) == make_split("val_color", 20, seed=1)
    assert make_split("val_color", 20, seed=1) != make_split("val_color", 20, seed=2)


def test_splits_never_share_prompts():
    texts = {name: {m["prompt"] for m in make_split(name, 60, seed=0)} for name in SPLITS}
    names = list(texts)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            if x == "style" and y.startswith("style_"):
                continue  # "style" is the union of the four style_<name> splits
            assert not texts[x] & texts[y], (x, y)
    # a bigger train draw still never hits a held-out prompt
    train = {m["prompt"] for m in make_split("train", 2000, seed=5)}
    for name in SPLITS[1:]:
        assert not train & texts[name]


def test_metadata_is_structured_and_matches_text():
    for cat in CATEGORIES:
        for meta in make_split(f"val_{cat}", 10, seed=0):
            assert meta["category"] == cat
            assert meta["prompt"] == prompt_text(meta)
            assert 1 <= meta["count"] <= 4
            assert all(o["shape"] for o in meta["objects"])
            if cat in ("2d_spatial", "3d_spatial", "non_spatial", "complex"):
                assert meta["relation"]["name"] in meta["prompt"].replace("on the ", "")


def test_style_split_covers_four_backgrounds():
    metas = make_split("style", 8, seed=0)
    assert [m["style"] for m in metas[:4]] == list(STYLES)
    imgs = render(metas[:4], 0)
    corner = imgs[:, :, 0, 0].mean(1)
    assert corner[0] > 0.85 and corner[1] < 0.2  # light vs dark


def test_objects_of_counted_prompts_are_all_drawn():
    for meta in make_split("val_numeracy", 20, seed=0):
        assert len(layout(meta, 0)) == meta["count"]


@pytest.mark.parametrize("kind", PIXEL_CORRUPTIONS)
def test_corruptions_change_images(kind):
    imgs = render(make_split("val_texture", 4, seed=0), 0)
    bad = corrupt(imgs, kind, seed=0)
    assert bad.shape == imgs.shape and bad.min() >= 0 and bad.max() <= 1
    assert (bad - imgs).abs().mean() > 0.01
    assert torch.equal(bad, corrupt(imgs, kind, seed=0))


def test_mismatch_changes_the_prompt():
    rng = np.random.default_rng(0)
    for cat in CATEGORIES:
        for meta in make_split(f"val_{cat}", 10, seed=0):
            wrong = mismatch_metadata(meta, rng)
            assert wrong["prompt"] != meta["prompt"]
            assert wrong["prompt"] == prompt_text(wrong)
            render([wrong], 0)  # still renderable


def test_render_negatives_all_kinds():
    from marpipe.world.render import NEGATIVE_KINDS, render_negatives
    metas = make_split("val_complex", 4, seed=0)
    clean = render(metas, 0)
    for kind in NEGATIVE_KINDS:
        imgs, shown = render_negatives(metas, 0, kind, seed=1)
        assert imgs.shape == clean.shape and len(shown) == 4
        assert not torch.equal(imgs, clean)
        assert (shown != metas) == (kind == "swap")


def test_layouts_are_canonical_so_few_step_mar_can_draw_them():
    """One object centred, two side by side, related pairs centred as a group (+-1 px)."""
    from marpipe.world.render import CANVAS, layout
    one = {"objects": [{"color": "red", "shape": "circle", "count": 1}], "relation": None}
    two = {"objects": [{"color": "red", "shape": "circle", "count": 1},
                       {"color": "blue", "shape": "square", "count": 1}], "relation": None}
    pair = {"objects": [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}],
            "relation": {"name": "left of"}}
    for seed in range(20):
        (p,) = layout(one, seed)
        assert abs(p.x + p.size / 2 - CANVAS / 2) <= 1.5 and abs(p.y + p.size / 2 - CANVAS / 2) <= 1.5
        a, b = layout(two, seed)
        assert a.x + a.size <= CANVAS // 2 <= b.x and abs(a.y + a.size / 2 - CANVAS / 2) <= 1.5
        placed = layout(pair, seed)
        x0 = min(q.x for q in placed); x1 = max(q.x + q.size for q in placed)
        assert abs((x0 + x1) / 2 - CANVAS / 2) <= 1.5
