import pytest
import torch

from marpipe.metrics import load_metric
from marpipe.metrics.compbench import (
    blip_vqa_attribute_scores,
    contiguous_index,
    determine_position,
    evaluate_category,
    noun_chunks,
    numeracy_score,
    parse_counts,
    spatial_2d_score,
    spatial_3d_score,
    three_in_one,
)
from marpipe.metrics.vqa import BLIP_DEC_ID, BLIP_NO_ID, BLIP_YES_ID, pre_question
from testbed.metrics import images

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vqa(blip_vqa_dir):
    return load_metric("blip_vqa", blip_vqa_dir, batch_size=3)


def test_blip_vqa_formula_and_token_ids(vqa):
    assert (BLIP_YES_ID, BLIP_NO_ID, BLIP_DEC_ID) == (2748, 2053, 30522)
    v = vqa.tokenizer.get_vocab()
    assert vqa.yes_id == v["yes"] and vqa.no_id == v["no"] and vqa.enc_id == v["[ENC]"]
    x = images(2)
    qs = ["a red cat?", "a blue car?"]
    got = vqa.score_questions(x, qs)
    # by hand: decoder on [DEC] over the [ENC]-prefixed question states
    m = vqa.model
    from marpipe.metrics.preprocess import normalize, resize_square
    with torch.no_grad():
        img = m.vision_model(pixel_values=normalize(resize_square(x.mul(255).round().div(255), 32))).last_hidden_state
        t = vqa.tokenizer(qs, padding="longest", return_tensors="pt")
        ids = t["input_ids"].clone(); ids[:, 0] = v["[ENC]"]
        q = m.text_encoder(input_ids=ids, attention_mask=t["attention_mask"], encoder_hidden_states=img).last_hidden_state
        p = m.text_decoder(input_ids=torch.full((2, 1), v["[DEC]"]), encoder_hidden_states=q,
                           encoder_attention_mask=t["attention_mask"]).logits[:, 0].softmax(-1)
    exp = p[:, v["yes"]] / (p[:, v["yes"]] + p[:, v["no"]])
    assert torch.allclose(got, exp, atol=1e-5)
    singles = torch.cat([vqa.score_questions(x[i:i + 1], qs[i:i + 1]) for i in range(2)])
    assert torch.allclose(got, singles, atol=1e-5)


def test_pre_question():
    assert pre_question("A Red (shiny) car.?") == "a red shiny car?"


def test_noun_chunks_heuristic():
    assert noun_chunks("a red car and a blue bench") == ["a red car", "a blue bench"]
    assert noun_chunks("a green apple on the left of a wooden table") == ["a green apple", "a wooden table"]


def test_attribute_product_uses_prompt_index(vqa):
    x = images(4)
    prompts = ["a red cat and a blue dog", "a car"]
    idx = [1, 0, 0, 1]                            # NOT contiguous blocks
    s = blip_vqa_attribute_scores(vqa, x, prompts, idx)
    p = vqa.score_questions(x[[1, 1]], ["a red cat?", "a blue dog?"])
    assert s[1] == pytest.approx(float(p.prod()), abs=2e-4)  # padding to the longest question
    assert s[0] == pytest.approx(float(vqa.score_questions(x[:1], ["a car?"])[0]), abs=2e-4)
    assert contiguous_index(2, 3) == [0, 0, 0, 1, 1, 1]


def test_determine_position_rules():
    a, b = [0, 0, 10, 10], [100, 0, 110, 10]        # b right of a
    assert determine_position("on the left of", a, b) == 1.0
    assert determine_position("on the right of", a, b) == 0.0
    assert determine_position("on the right of", b, a) == 1.0
    assert determine_position("next to", a, b) == 1.0                  # |dy| < 150
    assert determine_position("near", [0, 0, 1, 1], [400, 400, 401, 401]) == pytest.approx(150 / 400)
    over = [5, 0, 15, 10]                             # IoU 1/3 >= 0.1 -> 0.1 / iou
    assert determine_position("on the left of", a, over) == pytest.approx(0.1 / (50 / 150))
    top, bottom = [0, 0, 10, 10], [0, 100, 10, 110]
    assert determine_position("on the top of", top, bottom) == 1.0     # y grows downwards
    assert determine_position("on the bottom of", bottom, top) == 1.0


def test_spatial_2d_score_and_floor():
    dets = [{"label": "cat", "score": 0.9, "box": [0, 0, 10, 10]},
            {"label": "dog", "score": 0.8, "box": [100, 0, 110, 10]},
            {"label": "cat", "score": 0.4, "box": [200, 0, 210, 10]}]
    assert spatial_2d_score(dets, "a cat on the left of a dog") == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)
    assert spatial_2d_score(dets, "a cat on the right of a dog") == 0.0    # 0.425 < 0.5 -> 0
    assert spatial_2d_score(dets[:1], "a cat on the left of a dog") == 0.0


def test_spatial_3d_uses_depth():
    dets = [{"label": "cat", "score": 1.0, "box": [0, 0, 10, 10]},
            {"label": "dog", "score": 1.0, "box": [2, 2, 12, 12]}]
    depth = torch.zeros(20, 20)
    depth[0:10, 0:10] = 1.0                       # indexed [x, y] as the reference
    s = spatial_3d_score(dets, "a cat in front of a dog", depth)
    iou = 64 / (100 + 100 - 64)
    assert s == pytest.approx(0.5 + 0.5 * iou / 0.5)
    assert spatial_3d_score(dets, "a cat behind a dog", depth) == pytest.approx(0.5)


def test_numeracy_score_and_counts():
    dets = [{"label": "cat", "score": 0.9, "box": [0, 0, 10, 10]},
            {"label": "cat", "score": 0.8, "box": [0, 0, 10, 10.5]},   # duplicate, removed
            {"label": "cat", "score": 0.7, "box": [50, 50, 60, 60]},
            {"label": "dog", "score": 0.9, "box": [80, 80, 90, 90]}]
    assert numeracy_score(dets, [("cat", 2), ("dog", 2)]) == pytest.approx(0.5 + 0.25)
    assert numeracy_score(dets, [("apple", 1)]) == 0.0
    assert parse_counts("two cats and three boxes and a dog") == [("cat", 2), ("box", 3), ("dog", 1)]


def test_three_in_one():
    s = three_in_one([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5], ["spatial", "action", "both"])
    assert torch.allclose(s, torch.tensor([0.5, 0.75, 0.5]))


class FakeDet:
    """Finds the first noun on the left and the last on the right of every image."""
    name = "fake-owlvit"

    def detect(self, images, vocab):
        return [[{"label": v[0], "score": 1.0, "box": [0, 0, 10, 10]},
                 {"label": v[-1], "score": 1.0, "box": [100, 0, 110, 10]}] for v in vocab]


def test_evaluate_category_records_detector():
    out = evaluate_category("spatial", images(2), ["a cat on the left of a dog"], [0, 0], detector=FakeDet())
    assert out["detector"] == "fake-owlvit" and out["score"] == pytest.approx(1.0)


def test_complex_uses_the_prompt_sets_kind():
    """``3_in_1.py``: the kind comes with the prompt (``metadata.complex_kind``, set from
    complex_val_spatial/action.txt when the prompt set is downloaded); default "both"."""
    class Const:
        def __init__(self, v):
            self.v = v

        def score(self, images, prompts):
            return torch.full((len(prompts),), self.v)

        def score_questions(self, images, qs):
            return torch.full((len(qs),), self.v)

    prompts = ["a cat on the left of a dog"] * 3
    meta = [{"complex_kind": "spatial"}, {"complex_kind": "action"}, {}]
    out = evaluate_category("complex", images(3), prompts, [0, 1, 2], vqa=Const(0.5), clip=Const(0.2),
                            detector=FakeDet(), metadata=meta)
    attr = 0.5 ** len(noun_chunks(prompts[0]))
    assert out["per_image"] == pytest.approx([(attr + 1.0) / 2, (attr + 0.2) / 2, (attr + 1.0 + 0.2) / 3])
