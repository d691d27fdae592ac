"""Verifiable scorers: exact on clean renders, clearly lower on corrupted or mismatched ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from marpipe.rewards import available_rewards, build_reward
from marpipe.world import scorers
from marpipe.world.prompts import CATEGORIES, make_split
from marpipe.world.render import PIXEL_CORRUPTIONS, corrupt, mismatch_metadata, render

torch.set_num_threads(1)
N_PER_CATEGORY = 24


@pytest.fixture(scope="module")
def clean():
    """Per category: (metadata, clean renders, readings)."""
    out = {}
    for i, cat in enumerate(CATEGORIES):
        metas = make_split(f"val_{cat}", N_PER_CATEGORY, seed=i)
        imgs = render(metas, 1000 * i)
        out[cat] = (metas, imgs, scorers.read_batch(imgs))
    return out


@pytest.mark.parametrize("category", CATEGORIES)
def test_clean_renders_score_one(clean, category):
    metas, imgs, dets = clean[category]
    assert [scorers.category_score(d, m) for d, m in zip(dets, metas)] == [1.0] * len(metas)
    assert [scorers.detect_score(d, m) for d, m in zip(dets, metas)] == [1.0] * len(metas)
    assert min(scorers.vqa_score(d, m) for d, m in zip(dets, metas)) > 0.95


def test_clean_style_and_train_renders_score_one():
    for name in ("style", "train"):
        metas = make_split(name, 32, seed=7)
        assert scorers.compbench_scores(render(metas, 5), metas).tolist() == [1.0] * 32


def test_reading_recovers_attributes():
    meta = {"category": "complex", "count": 2, "style": "dark",
            "objects": [{"color": "red", "shape": "triangle", "texture": "striped", "count": 1},
                        {"color": "blue", "shape": "cross", "texture": "dotted", "count": 1}],
            "relation": {"kind": "3d", "name": "in front of"}}
    for seed in range(5):
        dets = {d.color: d for d in scorers.read_image(render([meta], seed)[0].permute(1, 2, 0).numpy())}
        assert (dets["red"].shape, dets["red"].texture) == ("triangle", "striped")
        assert (dets["blue"].shape, dets["blue"].texture) == ("cross", "dotted")
        assert dets["red"].completeness == 1.0 > dets["blue"].completeness + 0.1


@pytest.mark.parametrize("category", CATEGORIES)
def test_mismatched_prompts_score_lower(clean, category):
    metas, imgs, dets = clean[category]
    rng = np.random.default_rng(0)
    wrong = [mismatch_metadata(m, rng) for m in metas]
    comp = np.array([scorers.category_score(d, w) for d, w in zip(dets, wrong)])
    vqa = np.array([scorers.vqa_score(d, w) for d, w in zip(dets, wrong)])
    assert comp.mean() < 0.9 and (comp < 1).mean() >= 0.9
    assert vqa.mean() < 0.9


def test_rendering_prompt_a_scored_against_prompt_b(clean):
    metas, imgs, dets = clean["complex"]
    shifted = metas[1:] + metas[:1]
    assert np.mean([scorers.category_score(d, m) for d, m in zip(dets, shifted)]) < 0.6


@pytest.mark.parametrize("kind", PIXEL_CORRUPTIONS)
def test_corrupted_renders_score_lower(clean, kind):
    means = []
    for cat in ("texture", "3d_spatial", "complex", "numeracy"):
        metas, imgs, _ = clean[cat]
        means.append(scorers.compbench_scores(corrupt(imgs, kind, seed=1), metas).mean().item())
    assert np.mean(means) < 0.9


def test_registered_rewards_shape_and_range(clean):
    assert {"world_compbench", "world_detect", "world_vqa"} <= set(available_rewards())
    metas, imgs, _ = clean["2d_spatial"]
    prompts = [m["prompt"] for m in metas]
    for name in ("world_compbench", "world_detect", "world_vqa"):
        r = build_reward(name)(imgs, prompts, metas)
        assert r.shape == (len(metas),) and r.dtype == torch.float32
        assert ((r >= 0) & (r <= 1)).all()
        noisy = build_reward(name)(corrupt(imgs, "noise", 0), prompts, metas)
        assert noisy.mean() < r.mean()


def test_rewards_accept_other_resolutions(clean):
    metas, imgs, _ = clean["color"]
    big = torch.nn.functional.interpolate(imgs, scale_factor=2, mode="nearest")
    r = build_reward("world_compbench")(big, [m["prompt"] for m in metas], metas)
    assert r.shape == (len(metas),) and r.mean() > 0.9
