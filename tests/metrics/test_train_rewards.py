import pytest
import torch

from marpipe.metrics.train_rewards import gdino_score, git_vqa_score
from marpipe.rewards import available_rewards, build_reward
from testbed.metrics import PROMPTS, images

torch.set_num_threads(1)


def test_registered():
    assert {"hps", "git_vqa", "gdino", "mixed"} <= set(available_rewards())


def test_hps_reward_is_raw_cosine(hps_dir):
    from marpipe.metrics import load_metric
    r = build_reward("hps", weights_dir=str(hps_dir))
    x = images(3)
    assert torch.allclose(r(x, PROMPTS[:3], [{}] * 3), load_metric("hps", hps_dir).score(x, PROMPTS[:3]))


def test_mixed_sums_with_weights(hps_dir):
    x = images(2)
    one = build_reward("hps", weights_dir=str(hps_dir))(x, PROMPTS[:2], [{}] * 2)
    mixed = build_reward("mixed", components={"hps": {"weights_dir": str(hps_dir)}, "brightness": {}},
                         weights={"hps": 2.0})
    exp = 2 * one + build_reward("brightness")(x, PROMPTS[:2], [{}] * 2)
    assert torch.allclose(mixed(x, PROMPTS[:2], [{}] * 2), exp)


def test_git_vqa_rules():
    class Fake:
        def score_questions(self, images, qs):
            return torch.tensor([0.2 if "red" in q else 0.6 for q in qs])
    meta = [{"task_type": "spatial", "nouns": ["cat"]}, {"task_type": "color", "attr_nouns": ["red cat", "blue dog"]},
            {"task_type": "non", "nouns": []}, {"task_type": "object", "nouns": ["dog"]}]
    s = git_vqa_score(Fake(), images(4), meta)
    assert torch.allclose(s, torch.tensor([0.0, 0.4, 1.0, 0.6]))


def test_gdino_rules():
    d = [{"label": "cat", "score": 0.9, "box": [0, 0, 10, 10]},
         {"label": "dog", "score": 0.8, "box": [50, 0, 60, 10]},
         {"label": "dog", "score": 0.7, "box": [51, 0, 61, 10]}]
    assert gdino_score(d, {"nouns": []}, 100, 100) == 1.0
    assert gdino_score(d, {"task_type": "object", "nouns": ["cat", "car"]}, 100, 100) == 0.5
    sp = {"task_type": "spatial", "nouns": ["cat", "dog"],
          "spatial_info": {"obj1": "cat", "obj2": "dog", "locality": "left of"}}
    assert gdino_score(d, sp, 100, 100) == pytest.approx(0.9)
    sp["spatial_info"]["locality"] = "above"          # no branch in T2I-R1 -> position 0
    assert gdino_score(d, sp, 100, 100) == pytest.approx(0.4)
    nu = {"task_type": "numeracy", "nouns": ["dog", "cat"],
          "numeracy_info": [{"obj_name": "dog", "num": 1}, {"obj_name": "cat", "num": 2}]}
    assert gdino_score(d, nu, 100, 100) == pytest.approx(0.5 * 1 + 0.5 * 0.2)   # NMS merges the dogs
