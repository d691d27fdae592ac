"""Tiny random-weight metrics through the real loaders: formulas, batching, errors."""
import copy
import shutil

import pytest
import torch

from marpipe.metrics import WeightsError, load_metric
from marpipe.metrics.base import quantize_uint8
from marpipe.metrics.clip_metrics import hps_benchmark
from marpipe.metrics.imagereward import IR_MEAN, IR_STD
from marpipe.metrics.preprocess import clip_preprocess, hps_preprocess
from testbed.metrics import PROMPTS, TINY_IR_VISION, images

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def loaded(hps_dir, aesthetic_dir, clip_l14_dir, pickscore_dir, clip_h14_processor_dir, imagereward_dir,
           bert_base_uncased_dir):
    return {"hps": load_metric("hps", hps_dir, batch_size=3),
            "aesthetic": load_metric("aesthetic", aesthetic_dir, clip_dir=clip_l14_dir, batch_size=3),
            "pickscore": load_metric("pickscore", pickscore_dir, processor_dir=clip_h14_processor_dir, batch_size=3),
            "imagereward": load_metric("imagereward", imagereward_dir, tokenizer_dir=bert_base_uncased_dir,
                                       vision=TINY_IR_VISION, batch_size=3)}


@pytest.mark.parametrize("name", ["hps", "aesthetic", "pickscore", "imagereward"])
def test_batch_of_8_equals_8_singles_and_deterministic(loaded, name, monkeypatch):
    """``score`` runs the model on chunks of ``batch_size`` images (3 + 3 + 2 here, one forward pass
    each; only the resize is per image, with PIL, as the references do), with the prompts padded
    together. The batched scores equal 8 single-image calls up to float32 summation order: within
    1e-5 of the scores' magnitude (measured: ~3e-7, HPS exactly equal), a tolerance that still tells
    the images apart -- a score taken from the neighbouring image misses it by over 50x."""
    m = loaded[name]
    chunks, score_batch = [], type(m)._score_batch
    monkeypatch.setattr(type(m), "_score_batch", lambda self, x, p: (chunks.append(len(x)), score_batch(self, x, p))[1])
    x = images()
    s = m.score(x, PROMPTS)
    assert chunks == [3, 3, 2]                          # several images per forward pass
    assert s.shape == (8,) and torch.isfinite(s).all()
    singles = torch.cat([m.score(x[i:i + 1], PROMPTS[i:i + 1]) for i in range(8)])
    tol = 1e-5 * float(s.abs().max())
    assert float((s - singles).abs().max()) <= tol, (s, singles)
    assert float((s - s.roll(1)).abs().max()) > 50 * tol       # the tolerance resolves the images
    assert torch.equal(s, m.score(x, PROMPTS))
    assert torch.allclose(m(x, PROMPTS, [{}] * 8), s)      # reward signature


def test_hps_is_plain_cosine_no_logit_scale(loaded):
    m = loaded["hps"]
    x = images(2)
    oc = m.model
    px = hps_preprocess(quantize_uint8(x), 32)
    fi = oc.encode_image(px)
    ft = oc.encode_text(m.tokenizer(PROMPTS[:2]))
    cos = torch.nn.functional.cosine_similarity(fi, ft, dim=-1)
    assert torch.allclose(m.score(x, PROMPTS[:2]), cos, atol=1e-5)
    assert m.score(x, PROMPTS[:2]).abs().max() <= 1
    assert m.report_scale == 100.0


def test_hps_benchmark_per_style_and_mean(loaded):
    m = loaded["hps"]
    x = images(8)
    out = hps_benchmark(m, {"anime": x[:4], "photo": x[4:]}, {"anime": PROMPTS[:4], "photo": PROMPTS[4:]})
    s = m.score(x, PROMPTS) * 100
    assert out["anime"] == pytest.approx(float(s[:4].mean()), abs=1e-4)
    assert out["photo"] == pytest.approx(float(s[4:].mean()), abs=1e-4)
    assert out["mean"] == pytest.approx(float(s.mean()), abs=1e-4)


def test_pickscore_is_logit_scale_times_cosine(loaded):
    metric = copy.deepcopy(loaded["pickscore"])                # the module's fixture keeps its scale
    m = metric.model
    with torch.no_grad():
        m.logit_scale.fill_(torch.log(torch.tensor(100.0)))    # PickScore's trained value ~ ln 100
    x = images(2)
    px = clip_preprocess(x.mul(255).round().div(255), 32)
    t = metric.tokenizer(PROMPTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        fi = m.visual_projection(m.vision_model(pixel_values=px).pooler_output)
        ft = m.text_projection(m.text_model(**t).pooler_output)
    exp = 100.0 * torch.nn.functional.cosine_similarity(fi, ft, dim=-1)
    assert torch.allclose(metric.score(x, PROMPTS[:2]), exp, atol=1e-3)


def test_aesthetic_normalises_embedding_and_ignores_prompt(loaded):
    m = loaded["aesthetic"]
    x = images(2)
    assert torch.allclose(m.score(x, ["a", "b"]), m.score(x, ["c", "d"]))
    with torch.no_grad():
        f = m.model.encode_image(clip_preprocess(x.mul(255).round().div(255), 32))
        exp = m.mlp(f / f.norm(dim=-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(m.score(x, ["a", "b"]), exp, atol=1e-6)
    assert [k for k in m.mlp.state_dict()][::2] == [f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)]


def test_imagereward_normalisation_and_35_tokens(loaded):
    m = loaded["imagereward"]
    assert (IR_MEAN, IR_STD) == (0.16717362830052426, 1.0333394966054072)
    x = images(2)
    raw = {}
    h = m.model.mlp.register_forward_hook(lambda mod, i, o: raw.setdefault("o", o.squeeze(-1)))
    try:                                      # the hook goes, whatever happens: ``m`` is the module's
        s = m.score(x, PROMPTS[:2])
    finally:
        h.remove()
    assert torch.allclose(s, (raw["o"] - IR_MEAN) / IR_STD)
    t = m.tokenizer(["a " * 60], padding="max_length", truncation=True, max_length=35)
    assert len(t["input_ids"][0]) == 35
    # a long prompt is truncated: the 36th word changes nothing
    long = " ".join(["cat"] * 40)
    assert torch.allclose(m.score(x[:1], [long]), m.score(x[:1], [long + " dog"]))


def test_missing_file_error_names_file_and_fix(tmp_path):
    with pytest.raises(WeightsError, match=r"HPS_v2.1_compressed.pt.*download"):
        load_metric("hps", tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_metric("hps", tmp_path / "nope")


def test_mismatched_weights_error_names_key(hps_dir, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(hps_dir, d)
    sd = torch.load(d / "HPS_v2.1_compressed.pt")["state_dict"]
    sd.pop("logit_scale")
    sd["text_projection"] = torch.zeros(3, 3)
    torch.save({"state_dict": sd}, d / "HPS_v2.1_compressed.pt")
    with pytest.raises(WeightsError, match=r"missing keys: logit_scale.*shape mismatch: text_projection"):
        load_metric("hps", d)


def test_imagereward_official_layout_mapping(imagereward_dir, bert_base_uncased_dir):
    from marpipe.metrics.imagereward import map_official_keys
    sd = torch.load(imagereward_dir / "ImageReward.pt")
    mapped = map_official_keys(sd)
    assert "vision.embeddings.class_embedding" in mapped and "vision.post_layernorm.weight" in mapped
    assert "vision.encoder.layers.0.self_attn.projection.weight" in mapped
    assert not any("vision_proj" in k for k in mapped)
    bad = {k: v for k, v in sd.items() if "blocks.0.attn.qkv.weight" not in k}
    torch.save(bad, imagereward_dir.parent / "ir_bad.pt")
    d = imagereward_dir.parent / "ir_bad"
    shutil.copytree(imagereward_dir, d)
    shutil.move(imagereward_dir.parent / "ir_bad.pt", d / "ImageReward.pt")
    with pytest.raises(WeightsError, match=r"missing keys: vision.encoder.layers.0.self_attn.qkv.weight"):
        load_metric("imagereward", d, tokenizer_dir=bert_base_uncased_dir, vision=TINY_IR_VISION)


def test_import_is_cheap():
    import subprocess
    import sys
    code = ("import sys, marpipe.metrics; "
            "assert 'transformers' not in sys.modules and 'open_clip' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
