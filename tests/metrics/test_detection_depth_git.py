"""Tiny random-weight detector (OWL-ViT, Grounding DINO), DPT depth and GIT-VQA, written in
the real on-disk layout by ``save_pretrained`` and loaded back through the real loaders."""
import inspect
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from marpipe.metrics import WeightsError, load_metric
from marpipe.metrics.base import quantize_uint8
from marpipe.metrics.detection import DepthEstimator, ZeroShotDetector, cxcywh_to_xyxy, t2i_r1_detection_prompt
from marpipe.metrics.preprocess import OPENAI_MEAN, OPENAI_STD, clip_preprocess, normalize, resize_square
from marpipe.metrics.train_rewards import gdino_reward, gdino_score, git_vqa_score
from marpipe.rewards import build_reward
from testbed.metrics import images, smooth_images

torch.set_num_threads(1)

VOCAB = [["cat", "dog"], ["car"], ["cat", "wooden bench"]]
GD_NOUNS = ["cat", "wooden bench", "red wooden bench"]


def pil(x):
    """One [1,3,H,W] image in [0,1] as the 8-bit PIL image the references read."""
    return Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))


def grey_levels(a, b, std=1.0):
    """Largest difference of two normalised tensors, in 8-bit grey levels."""
    return float(((a - b).abs() * torch.as_tensor(std).view(1, -1, 1, 1) * 255).max())


@pytest.fixture(scope="module")
def owl(owlvit_dir):
    return ZeroShotDetector.from_pretrained(owlvit_dir, box_threshold=0.0)


@pytest.fixture(scope="module")
def gd(gdino_dir):
    return ZeroShotDetector.from_pretrained(gdino_dir, box_threshold=0.0)


@pytest.fixture(scope="module")
def dpt(dpt_dir):
    return DepthEstimator.from_pretrained(dpt_dir)


@pytest.fixture(scope="module")
def git(git_dir):
    return load_metric("git_vqa", git_dir, batch_size=2)


def with_threshold(monkeypatch, det, t):
    """``det`` (a module fixture) with box threshold ``t`` for this test only."""
    monkeypatch.setattr(det, "box_threshold", t)
    return det


# --- boxes ---------------------------------------------------------------------------------

def test_cxcywh_to_xyxy_hand_checked():
    b = torch.tensor([[0.5, 0.25, 0.2, 0.5], [0.0, 1.0, 0.1, 0.0]])
    exp = torch.tensor([[0.4 * 48, 0.0, 0.6 * 48, 0.5 * 40], [-0.05 * 48, 40.0, 0.05 * 48, 40.0]])
    assert torch.allclose(cxcywh_to_xyxy(b, w=48, h=40), exp)


def test_owlvit_loads_processor_config_and_default_threshold(owlvit_dir, owl):
    assert owl.kind == "owlvit" and owl.name == "owlvit"
    assert owl.image_size == 32 and owl.mean == OPENAI_MEAN and owl.std == OPENAI_STD
    assert ZeroShotDetector.from_pretrained(owlvit_dir).box_threshold == 0.3          # T2I-R1
    assert inspect.signature(gdino_reward).parameters["box_threshold"].default == 0.3


def test_owlvit_matches_transformers_postprocess_in_pixels(owl, owlvit_dir):
    """Scores, labels and pixel xyxy boxes equal transformers' own OWL-ViT post-processing
    (max over the queried texts, ``center_to_corners`` times (w, h, w, h) of the INPUT image)."""
    from transformers.models.owlvit import OwlViTImageProcessorPil
    x = images(1, 40, 48)
    dets = owl.detect(x, [["cat", "dog"]])[0]
    px = normalize(resize_square(quantize_uint8(x), 32))
    t = owl.tokenizer(["cat", "dog"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        o = owl.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=px)
    ref = OwlViTImageProcessorPil.from_pretrained(str(owlvit_dir)).post_process_object_detection(
        o, threshold=0.0, target_sizes=[(40, 48)])[0]
    order = ref["scores"].argsort(descending=True)
    assert len(dets) == len(order) == 16                                   # threshold 0: every query
    assert [d["label"] for d in dets] == [["cat", "dog"][int(i)] for i in ref["labels"][order]]
    assert torch.allclose(torch.tensor([d["score"] for d in dets]), ref["scores"][order], atol=1e-6)
    assert torch.allclose(torch.tensor([d["box"] for d in dets]), ref["boxes"][order], atol=1e-4)
    by_hand = cxcywh_to_xyxy(o.pred_boxes[0], 48, 40)[o.logits[0].max(-1).values.argsort(descending=True)]
    assert torch.allclose(torch.tensor([d["box"] for d in dets]), by_hand, atol=1e-4)


def test_owlvit_preprocessing_matches_image_processor(owl, owlvit_dir):
    """Square bicubic resize + OpenAI mean/std == ``OwlViTImageProcessor`` (PIL) within ~1 grey
    level (PIL rounds its resized image to 8 bits, we do not)."""
    from transformers.models.owlvit import OwlViTImageProcessorPil
    proc = OwlViTImageProcessorPil.from_pretrained(str(owlvit_dir))
    for x in (smooth_images(1, 40, 48), smooth_images(1, 24, 24, seed=1)):
        ref = proc(images=pil(x), return_tensors="pt")["pixel_values"]
        ours = normalize(resize_square(x, owl.image_size), owl.mean, owl.std)
        assert grey_levels(ours, ref, OPENAI_STD) <= 1.5


# --- properties shared by both detectors ----------------------------------------------------

@pytest.mark.parametrize("name", ["owl", "gd"])
def test_detector_threshold_filters_strictly(request, name, monkeypatch):
    det = request.getfixturevalue(name)
    x = images(2, 40, 48)
    vocab = VOCAB[:2] if name == "owl" else [GD_NOUNS, ["dog"]]
    everything = with_threshold(monkeypatch, det, 0.0).detect(x, vocab)
    scores = sorted(d["score"] for img in everything for d in img)
    t = scores[len(scores) // 2]                                              # the median score
    kept = with_threshold(monkeypatch, det, t).detect(x, vocab)
    assert kept == [[d for d in img if d["score"] > t] for img in everything]
    assert 0 < sum(map(len, kept)) < sum(map(len, everything))
    assert with_threshold(monkeypatch, det, 1.0).detect(x, vocab) == [[], []]


@pytest.mark.parametrize("name", ["owl", "gd"])
def test_detector_per_image_loop_pairs_images_with_their_vocab_sorted_and_deterministic(request, name):
    """``detect`` runs the model on ONE image at a time: each image has its own vocabulary (OWL's
    text queries, Grounding DINO's caption), as in T2I-R1's reward and T2I-CompBench's detection loop.
    So a batch equals its singles by construction, and no batched forward pass is compared here;
    what is checked is the loop's bookkeeping -- image i is detected with vocab i and its list comes
    back at position i (also for the batch reversed), sorted by score, labelled from its own
    vocabulary, boxes well formed -- and determinism."""
    det = request.getfixturevalue(name)
    x = images(3, 40, 48)
    vocab = VOCAB if name == "owl" else [GD_NOUNS, ["dog"], ["cat", "car"]]
    batch = det.detect(x, vocab)
    singles = [det.detect(x[i:i + 1], vocab[i:i + 1])[0] for i in range(3)]
    assert batch == singles and batch == det.detect(x, vocab)
    assert det.detect(x.flip(0), vocab[::-1]) == batch[::-1]
    for img, voc in zip(batch, vocab):
        assert img and [d["score"] for d in img] == sorted((d["score"] for d in img), reverse=True)
        assert {d["label"] for d in img} <= {" ".join([n.split()[0], n.split()[-1]]) if len(n.split()) > 2 else n
                                           for n in voc}
        b = torch.tensor([d["box"] for d in img])
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert det.detect(x[:1], [[]]) == [[]]


# --- Grounding DINO: T2I-R1's given-phrase mode ------------------------------------------

def test_detection_prompt_spans_hand_checked():
    caption, spans = t2i_r1_detection_prompt(GD_NOUNS)
    assert caption == "cat . wooden bench . red wooden bench."
    assert spans == [[(0, 3)], [(6, 12), (13, 18)], [(21, 24), (32, 37)]]
    assert [" ".join(caption[a:b] for a, b in sp) for sp in spans] == ["cat", "wooden bench", "red bench"]


def test_gdino_phrase_scores_by_hand(gd, gdino_dir, monkeypatch):
    """Phrase score = mean token probability over the first and last word of the noun (sum /
    (n + 1e-6)); every (box, noun) pair over the threshold is a detection, labelled with the
    noun; boxes are ``center_to_corners`` times the INPUT image's (w, h, w, h)."""
    from transformers import AutoProcessor
    x = images(1, 40, 48)
    got = with_threshold(monkeypatch, gd, 0.5).detect(x, [GD_NOUNS])[0]
    proc = AutoProcessor.from_pretrained(str(gdino_dir))
    caption = "cat . wooden bench . red wooden bench."
    inp = proc(images=pil(x), text=caption, return_tensors="pt")
    toks = proc.tokenizer.convert_ids_to_tokens(inp["input_ids"][0])
    assert toks == ["[CLS]", "cat", ".", "wooden", "bench", ".", "red", "wooden", "bench", ".", "[SEP]"]
    with torch.no_grad():
        o = gd.model(**inp)
    p = o.logits[0].sigmoid()
    phrase = {"cat": p[:, 1] / (1 + 1e-6), "wooden bench": (p[:, 3] + p[:, 4]) / (2 + 1e-6),
              "red bench": (p[:, 6] + p[:, 8]) / (2 + 1e-6)}           # "wooden" of "red wooden bench" left out
    boxes = o.pred_boxes[0]
    cx, cy, w, h = boxes.unbind(-1)
    px = torch.stack([(cx - w / 2) * 48, (cy - h / 2) * 40, (cx + w / 2) * 48, (cy + h / 2) * 40], -1)
    exp = sorted(((lab, float(s), px[q].tolist()) for lab, sc in phrase.items() for q, s in enumerate(sc) if s > 0.5),
                 key=lambda e: -e[1])
    assert len(got) == len(exp) > 0
    for g, (lab, s, b) in zip(got, exp):
        assert g["label"] == lab and g["score"] == pytest.approx(s, abs=1e-5)
        assert g["box"] == pytest.approx(b, abs=1e-3)
    per_box = {}
    for g in got:
        per_box.setdefault(tuple(round(v, 3) for v in g["box"]), set()).add(g["label"])
    assert max(map(len, per_box.values())) > 1                          # one box, several nouns


def test_gdino_reward_labels_are_the_nouns(gdino_dir):
    """With threshold 0 every noun is found, so an object prompt scores 1 -- only if the
    detector's labels equal the metadata nouns (processor-decoded labels did not)."""
    x = images(3, 40, 48)
    meta = [{"task_type": "object", "nouns": ["cat", "dog"]},
            {"task_type": "color", "nouns": ["wooden bench", "car"]},
            {"task_type": "object", "nouns": []}]
    r0 = build_reward("gdino", weights_dir=str(gdino_dir), box_threshold=0.0)
    assert torch.equal(r0(x, ["p"] * 3, meta), torch.ones(3))
    r1 = build_reward("gdino", weights_dir=str(gdino_dir), box_threshold=1.0)
    assert torch.equal(r1(x, ["p"] * 3, meta), torch.tensor([0.0, 0.0, 1.0]))
    r = build_reward("gdino", weights_dir=str(gdino_dir))            # 0.3, T2I-R1's box threshold
    det = ZeroShotDetector.from_pretrained(gdino_dir)
    assert det.box_threshold == 0.3
    dets = det.detect(x, [m["nouns"] for m in meta])
    assert torch.allclose(r(x, ["p"] * 3, meta), torch.tensor([gdino_score(d, m, 48, 40) for d, m in zip(dets, meta)]))


def test_gdino_loads_the_legacy_swin_key_layout(gdino_dir, gd):
    """``save_pretrained`` (like the hub file) stores the Swin backbone under its legacy names,
    which transformers 5 renames at load: a raw ``load_state_dict`` would miss them all."""
    from safetensors.torch import load_file
    sd = load_file(str(gdino_dir / "model.safetensors"))
    own = gd.model.state_dict()
    pre = "model.backbone.conv_encoder.model."
    for legacy, now in [("embeddings.patch_embeddings.projection.weight", "swin.embeddings.patch_embeddings.projection.weight"),
                        ("encoder.layers.0.blocks.0.attention.self.query.weight",
                         "swin.encoder.layers.0.blocks.0.attention.q_proj.weight")]:
        assert pre + legacy in sd and pre + now not in sd
        assert torch.equal(own[pre + now], sd[pre + legacy])


def test_gdino_corrupt_file_error_names_keys(gdino_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    d = tmp_path / "gd_bad"
    shutil.copytree(gdino_dir, d)
    sd = load_file(str(d / "model.safetensors"))
    sd.pop("model.input_proj_vision.0.0.bias")
    sd["bbox_embed.0.layers.0.bias"] = torch.zeros(3)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"missing keys: model.input_proj_vision.0.0.bias.*"
                                           r"shape mismatch: bbox_embed.0.layers.0.bias.*fetch-weights"):
        ZeroShotDetector.from_pretrained(d)


# --- missing files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,load,key", [
    ("owlvit_dir", ZeroShotDetector.from_pretrained, "gdino"),
    ("gdino_dir", ZeroShotDetector.from_pretrained, "gdino"),
    ("dpt_dir", DepthEstimator.from_pretrained, "depth"),
    ("git_dir", lambda d: load_metric("git_vqa", d), "git_vqa")])
def test_missing_weight_file_error_names_file_and_fix(request, tmp_path, name, load, key):
    d = tmp_path / "w"
    shutil.copytree(request.getfixturevalue(name), d)
    (d / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"missing file 'model.safetensors' or 'pytorch_model.bin' in "
                                           rf".*marpipe fetch-weights {key}"):
        load(d)
    (d / "config.json").unlink()
    with pytest.raises(WeightsError, match=rf"missing file 'config.json'.*fetch-weights {key}"):
        load(d)
    # under resources/metrics/<key>/ the hint names that folder's key
    m = tmp_path / "resources" / "metrics" / "my_weights"
    m.mkdir(parents=True)
    with pytest.raises(WeightsError, match=r"fetch-weights my_weights.*resources/metrics/my_weights/MANIFEST.sha256"):
        load(m)


# --- DPT depth -------------------------------------------------------------------------------

def test_depth_shape_levels_and_default_size(dpt):
    assert dpt.size == 480                                   # experts/model_bank.py Resize([480, 480])
    assert dpt.model.config.image_size == 32                 # ... which the tiny (real: 384) config is not
    x = images(2, 40, 48)
    d = dpt.depth_maps(x)
    assert d.shape == (2, 40, 48) and d.dtype == torch.float32
    assert d.min() >= 0 and d.max() <= 1 and d.unique().numel() > 20
    assert torch.equal(d * 255, (d * 255).round())            # 8-bit levels (the saved PNG)


def test_depth_by_hand(dpt):
    """PIL bilinear 480 (``transforms.Resize([480, 480])`` on the 8-bit image) + (x-0.5)/0.5 -> DPT
    -> min-max -> bilinear align_corners=True back to H x W -> floor(255 d) / 255
    (``Image.fromarray(255 * depth).convert('L')``)."""
    from torchvision import transforms
    x = images(1, 40, 48)
    px = transforms.Compose([transforms.Resize([480, 480]), transforms.ToTensor(),
                             transforms.Normalize(mean=0.5, std=0.5)])(pil(x))[None]
    with torch.no_grad():
        raw = dpt.model(pixel_values=px).predicted_depth[0]
    assert raw.shape == (480, 480)
    n = (raw - raw.min()) / (raw.max() - raw.min())
    n = F.interpolate(n[None, None], size=(40, 48), mode="bilinear", align_corners=True)[0, 0]
    exp = torch.floor(n * 255) / 255
    got = dpt.depth_maps(x)[0]
    assert (got - exp).abs().max() <= 1 / 255 + 1e-6 and (got == exp).float().mean() > 0.99


def test_depth_input_is_the_reference_pil_bilinear_transform(dpt):
    """``transforms.Resize([480, 480])`` (PIL, bilinear), ``ToTensor``, ``Normalize(0.5, 0.5)``:
    equal within one grey level; a bicubic resize is off by many levels at edges."""
    from torchvision import transforms
    ref_t = transforms.Compose([transforms.Resize([480, 480]), transforms.ToTensor(),
                                transforms.Normalize(mean=0.5, std=0.5)])
    step = torch.zeros(1, 3, 40, 48)
    step[..., :, 20:] = 1.0
    for x in (smooth_images(1, 40, 48), step):
        ref = ref_t(pil(x))[None]
        assert grey_levels(dpt.preprocess(x), ref, 0.5) <= 1.01
    bicubic = normalize(quantize_uint8(resize_square(step, 480)), (0.5,) * 3, (0.5,) * 3)
    assert grey_levels(bicubic, ref_t(pil(step))[None], 0.5) > 10


def test_depth_per_image_loop_equals_singles_in_order_and_is_deterministic(dpt):
    """``depth_maps`` runs DPT on ONE image at a time, as T2I-CompBench's ``3D_spatial_eval.py``
    does (each map is then min-max normalised and cut to 8-bit levels on its own). So a batch equals
    its singles exactly by construction, and no batched forward pass is compared here; what is
    checked is that map i is image i's (also for the batch reversed), that the images' maps differ,
    and determinism."""
    x = images(3, 40, 48)
    d = dpt.depth_maps(x)
    assert torch.equal(d, torch.cat([dpt.depth_maps(x[i:i + 1]) for i in range(3)]))
    assert torch.equal(dpt.depth_maps(x.flip(0)), d.flip(0))
    assert not torch.equal(d[0], d[1]) and not torch.equal(d[1], d[2])
    assert torch.equal(d, dpt.depth_maps(x))


# --- GIT VQA reward --------------------------------------------------------------------------

def test_git_yes_prob_formula_by_hand(git):
    v = git.tokenizer.get_vocab()
    assert (git.yes_id, git.no_id) == (v["yes"], v["no"])               # encode('yes') = [CLS, yes, SEP]
    assert (git.size, git.crop) == (32, 32)
    x = images(2, 40, 48)
    qs = ["a red cat?", "two dogs?"]
    got = git.score_questions(x, qs)
    exp = []
    for i, q in enumerate(qs):
        ids = [git.tokenizer.cls_token_id] + git.tokenizer(q, add_special_tokens=False)["input_ids"]
        assert ids[0] == v["[CLS]"] and v["[SEP]"] not in ids             # unpadded, no [SEP]
        with torch.no_grad():
            logits = git.model(pixel_values=clip_preprocess(quantize_uint8(x[i:i + 1]), 32),
                               input_ids=torch.tensor([ids])).logits[0, -1]
        p = logits.softmax(-1)
        exp.append(p[v["yes"]] / (p[v["yes"]] + p[v["no"]]))
    assert torch.allclose(got, torch.stack(exp), atol=1e-6)
    assert not torch.allclose(git.score_questions(x, qs[:1] * 2)[0], git.score_questions(x, qs[:1] * 2)[1])


def test_git_per_image_loop_pairs_questions_and_reward(git, git_dir):
    """GIT-VQA scores ONE unpadded (image, question) pair at a time, as T2I-R1's ``reward_git.py``
    does (questions differ in length; padding would move the last position whose logits are read).
    So a batch equals its singles exactly by construction, and no batched forward pass is compared
    here; what is checked is the pairing -- score i is image i with question i (also reversed), the
    four scores differ -- determinism, and the reward's aggregation per task type."""
    x = images(4, 40, 48)
    qs = ["a red cat?", "a dog?", "the car?", "a blue apple?"]
    s = git.score_questions(x, qs)
    assert torch.equal(s, torch.cat([git.score_questions(x[i:i + 1], qs[i:i + 1]) for i in range(4)]))
    assert torch.equal(git.score_questions(x.flip(0), qs[::-1]), s.flip(0))
    assert len(set(s.tolist())) == 4
    assert torch.equal(s, git.score_questions(x, qs))
    meta = [{"task_type": "color", "attr_nouns": ["red cat", "blue dog"], "nouns": ["cat", "dog"]},
            {"task_type": "spatial", "nouns": ["cat", "dog"]},
            {"task_type": "object", "nouns": ["car"]},
            {"task_type": "non", "nouns": []}]
    r = build_reward("git_vqa", weights_dir=str(git_dir))(x, ["p"] * 4, meta)
    a = git.score_questions(x[[0, 0]], ["red cat?", "blue dog?"]).mean()
    c = git.score_questions(x[2:3], ["car?"])[0]
    assert torch.allclose(r, torch.stack([a, torch.tensor(0.0), c, torch.tensor(1.0)]), atol=1e-6)
    assert torch.allclose(r, git_vqa_score(git, x, meta))


def test_git_preprocessing_matches_clip_image_processor(git, git_dir):
    """Shortest side 32 bicubic + centre crop + OpenAI mean/std == ``CLIPImageProcessor`` (PIL,
    what ``AutoProcessor`` of git-large-vqav2 runs) within ~1 grey level."""
    from transformers.models.clip import CLIPImageProcessorPil
    proc = CLIPImageProcessorPil.from_pretrained(str(git_dir))
    for x in (smooth_images(1, 40, 48), smooth_images(1, 64, 48, seed=2)):
        ref = proc(images=pil(x), return_tensors="pt")["pixel_values"]
        assert grey_levels(clip_preprocess(x, git.size, git.mean, git.std), ref, OPENAI_STD) <= 1.5


def test_compbench_detector_categories_through_the_tiny_models(gdino_dir, dpt_dir):
    """The ``compbench`` scorer loads the detector (default threshold 0.3) and DPT from their
    folders; its per-image scores equal the category rules applied to their outputs."""
    from marpipe.metrics.compbench import numeracy_score, spatial_3d_score
    x = images(2, 40, 48)
    det, depth = ZeroShotDetector.from_pretrained(gdino_dir), DepthEstimator.from_pretrained(dpt_dir)
    prompts = ["a cat in front of a dog", "a car behind a bench"]
    meta = [{"objects": ["cat", "dog"]}, {"objects": ["car", "bench"]}]
    s3 = build_reward("compbench", category="3d_spatial", detector_dir=str(gdino_dir), depth_dir=str(dpt_dir))
    dets, dm = det.detect(x, [m["objects"] for m in meta]), depth.depth_maps(x)
    exp = [spatial_3d_score(d, p, m_, m["objects"]) for d, p, m_, m in zip(dets, prompts, dm, meta)]
    assert s3(x, prompts, meta).tolist() == pytest.approx(exp)
    num = [{"numeracy_info": [{"obj_name": "cat", "num": 2}]}, {"numeracy_info": [{"obj_name": "dog", "num": 1}]}]
    sn = build_reward("compbench", category="numeracy", detector_dir=str(gdino_dir))
    dets = det.detect(x, [["cat"], ["dog"]])
    assert sn(x, ["two cats", "a dog"], num).tolist() == pytest.approx(
        [numeracy_score(dets[0], [("cat", 2)]), numeracy_score(dets[1], [("dog", 1)])])
