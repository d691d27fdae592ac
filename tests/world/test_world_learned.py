"""Learned world scorers: open_clip save/load round trip, training steps, rewards."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from marpipe.rewards import available_rewards, build_reward
from marpipe.world import learned
from marpipe.world.prompts import make_split
from marpipe.world.render import render

torch.set_num_threads(1)
TINY = learned.world_clip_config(embed_dim=32, vision_width=32, vision_layers=1,
                                 text_width=32, text_layers=1, context_length=32)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A train_scorers output trained for a handful of steps (not a useful model)."""
    out = tmp_path_factory.mktemp("world_scorers")
    learned.train_scorers(out, seed=0, steps=3, quality_steps=5, batch_size=8, eval_pairs=12,
                          log_every=0, model_cfg=TINY, pool_size=64, quality_images=32)
    return out


def test_train_scorers_writes_open_clip_folder(trained_dir):
    clip_dir = trained_dir / learned.CLIP_SUBDIR
    config = json.loads((clip_dir / "open_clip_config.json").read_text())
    assert config["model_cfg"] == TINY
    assert (clip_dir / "model.safetensors").is_file()
    metrics = json.loads((trained_dir / "metrics.json").read_text())
    assert 0 <= metrics["clip_accuracy"]["mean"] <= 1
    assert 0 <= metrics["quality_accuracy"]["mean"] <= 1


def test_clip_round_trip_is_strict_and_exact(trained_dir, tmp_path):
    clip = learned.load_world_clip(trained_dir)
    saved = load_file(str(trained_dir / learned.CLIP_SUBDIR / "model.safetensors"))
    state = clip.model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    metas = make_split("val_color", 4, seed=0)
    imgs, texts = render(metas, 0), [m["prompt"] for m in metas]
    with torch.no_grad():
        before = clip.cosine(imgs, texts)
        learned.save_world_clip(clip, TINY, tmp_path / "again")
        after = learned.load_world_clip(tmp_path / "again").cosine(imgs, texts)
    assert torch.equal(before, after)
    # strict: a missing tensor is an error, not a silent random init
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "open_clip_config.json").write_text(
        (tmp_path / "again" / "open_clip_config.json").read_text())
    from safetensors.torch import save_file
    save_file({k: v for k, v in saved.items() if k != "logit_scale"}, str(tmp_path / "broken" / "model.safetensors"))
    with pytest.raises(RuntimeError):
        learned.load_world_clip(tmp_path / "broken")


def test_quality_round_trip(trained_dir):
    mlp = learned.load_quality(trained_dir)
    saved = load_file(str(trained_dir / learned.QUALITY_SUBDIR / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in mlp.state_dict().items())


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    clip = learned.new_world_clip(TINY, seed=0)
    rng = np.random.default_rng(0)
    batch = learned.contrastive_batch(make_split("train", 64, seed=0), 8, rng)
    opt = torch.optim.AdamW([p for p in clip.model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):  # fit one fixed batch
        loss = learned.contrastive_loss(clip, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_learned_rewards_shape_and_range(trained_dir):
    assert {"world_hps", "world_aesthetic", "world_mixed"} <= set(available_rewards())
    metas = make_split("style", 6, seed=0)
    imgs, prompts = render(metas, 0), [m["prompt"] for m in metas]
    hps = build_reward("world_hps", weights_dir=str(trained_dir))(imgs, prompts, metas)
    assert hps.shape == (6,) and ((hps >= -1) & (hps <= 1)).all()
    aes = build_reward("world_aesthetic", weights_dir=str(trained_dir))(imgs, prompts, metas)
    assert aes.shape == (6,) and torch.isfinite(aes).all()
    mixed = build_reward("world_mixed", weights_dir=str(trained_dir))(imgs, prompts, metas)
    vqa = build_reward("world_vqa")(imgs, prompts, metas)
    det = build_reward("world_detect")(imgs, prompts, metas)
    assert torch.allclose(mixed, hps + vqa + det, atol=1e-5)
    only_hps = build_reward("world_mixed", weights_dir=str(trained_dir), w_vqa=0.0, w_detect=0.0)
    assert torch.allclose(only_hps(imgs, prompts, metas), hps, atol=1e-6)
    comp = build_reward("world_compbench", clip_dir=str(trained_dir))(imgs, prompts, metas)
    assert comp.shape == (6,) and ((comp >= 0) & (comp <= 1)).all()
