"""The scorers load their official repositories' layouts, each folder its own config entry:

* ImageReward: ``THUDM/ImageReward`` (``ImageReward.pt`` + ``med_config.json``) and
  ``bert-base-uncased``'s tokenizer (``vocab.txt`` + ``tokenizer_config.json``, the files BLIP's
  ``BertTokenizer.from_pretrained`` reads);
* PickScore: ``yuvalkirstain/PickScore_v1`` (``config.json`` + ``model.safetensors``) and the
  processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``;
* Aesthetic: the MLP file of the improved-aesthetic-predictor GitHub repo and the OpenAI CLIP
  ViT-L/14 backbone in open_clip format.

A missing folder or file is one error naming the file and the config key to fix.
"""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from marpipe import experiment as E
from marpipe.metrics import WeightsError, load_metric
from marpipe.metrics.imagereward import MED_KEYS, REAL_TEXT, REAL_VISION, text_config_from_med
from marpipe.rewards import build_reward
from testbed.metrics import BERT_WORDS, PROMPTS, TINY_IR_VISION, TINY_MED_CONFIG, images

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def listing(d):
    return sorted(p.name for p in d.iterdir())


def copy_without(src, dst, missing):
    shutil.copytree(src, dst)
    (dst / missing).unlink()
    return dst


# --- ImageReward ------------------------------------------------------------------------------

def test_imagereward_loads_the_hub_folder_and_a_separate_bert_tokenizer(imagereward_dir, bert_base_uncased_dir):
    assert listing(imagereward_dir) == ["ImageReward.pt", "med_config.json"]
    assert listing(bert_base_uncased_dir) == ["tokenizer_config.json", "vocab.txt"]
    m = load_metric("imagereward", imagereward_dir, tokenizer_dir=bert_base_uncased_dir, vision=TINY_IR_VISION)
    # BLIP's init_tokenizer: [DEC] (bos) and [ENC] appended after the BERT vocab (30522/30523 for real)
    assert m.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(BERT_WORDS), len(BERT_WORDS) + 1]
    assert m.tokenizer.bos_token == "[DEC]"
    # tokenizer_config.json's do_lower_case; plain [CLS] ... [SEP]
    w = BERT_WORDS.index
    assert m.tokenizer(["A Red CAT"])["input_ids"][0] == [w("[CLS]"), w("a"), w("red"), w("cat"), w("[SEP]")]
    # the text encoder's sizes come from med_config.json; its cross-attention reads the vision width
    t = m.model.text.config
    assert (t.vocab_size, t.hidden_size, t.num_attention_heads, t.num_hidden_layers) == (
        TINY_MED_CONFIG["vocab_size"], TINY_MED_CONFIG["hidden_size"], TINY_MED_CONFIG["num_attention_heads"],
        TINY_MED_CONFIG["num_hidden_layers"])
    assert (t.encoder_hidden_size, t.is_decoder) == (TINY_IR_VISION["hidden_size"], True)
    assert torch.isfinite(m.score(images(2), PROMPTS[:2])).all()


def test_the_real_med_config_gives_the_real_text_encoder(tmp_path):
    # med_config.json says encoder_width 768 (BLIP-base); blip_pretrain.py sets it to the ViT-L width
    med = {**TINY_MED_CONFIG, **{k: REAL_TEXT[k] for k in MED_KEYS}, "encoder_width": 768}
    (tmp_path / "med_config.json").write_text(json.dumps(med))
    assert text_config_from_med(tmp_path / "med_config.json", REAL_VISION["hidden_size"]) == REAL_TEXT
    assert REAL_TEXT["encoder_hidden_size"] == REAL_VISION["hidden_size"] == 1024


@pytest.mark.parametrize("missing", ["ImageReward.pt", "med_config.json"])
def test_imagereward_missing_file_names_the_file_and_the_config_key(imagereward_dir, bert_base_uncased_dir,
                                                                    tmp_path, missing):
    d = copy_without(imagereward_dir, tmp_path / "imagereward", missing)
    with pytest.raises(WeightsError, match=rf"missing file '{re.escape(missing)}' in .*"
                                           r"scorers\.imagereward\.weights\.weights_dir.*fetch-weights imagereward"):
        load_metric("imagereward", d, tokenizer_dir=bert_base_uncased_dir, vision=TINY_IR_VISION)


def test_imagereward_tokenizer_folder_absent_or_incomplete(imagereward_dir, bert_base_uncased_dir, tmp_path):
    with pytest.raises(WeightsError, match=r"no bert-base-uncased tokenizer folder.*"
                                           r"scorers\.imagereward\.weights\.tokenizer_dir"):
        load_metric("imagereward", imagereward_dir, vision=TINY_IR_VISION)
    tok = copy_without(bert_base_uncased_dir, tmp_path / "bert_base_uncased", "vocab.txt")
    with pytest.raises(WeightsError, match=r"missing file 'vocab.txt' in .*scorers\.imagereward\.weights\."
                                           r"tokenizer_dir.*fetch-weights bert_base_uncased"):
        load_metric("imagereward", imagereward_dir, tokenizer_dir=tok, vision=TINY_IR_VISION)


# --- PickScore, Aesthetic ----------------------------------------------------------------------

def test_pickscore_model_folder_and_processor_folder(pickscore_dir, clip_h14_processor_dir, tmp_path):
    assert listing(pickscore_dir) == ["config.json", "model.safetensors"]
    assert {"preprocessor_config.json", "vocab.json", "merges.txt"} <= set(listing(clip_h14_processor_dir))
    with pytest.raises(WeightsError, match=r"scorers\.pickscore\.weights\.processor_dir"):
        load_metric("pickscore", pickscore_dir)
    proc = copy_without(clip_h14_processor_dir, tmp_path / "clip_h14_processor", "preprocessor_config.json")
    with pytest.raises(WeightsError, match=r"missing file 'preprocessor_config.json' in .*scorers\.pickscore\."
                                           r"weights\.processor_dir.*fetch-weights clip_h14_processor"):
        load_metric("pickscore", pickscore_dir, processor_dir=proc)


def test_aesthetic_mlp_file_and_clip_backbone_folder(aesthetic_dir, clip_l14_dir, tmp_path):
    assert listing(aesthetic_dir) == ["sac+logos+ava1-l14-linearMSE.pth"]
    with pytest.raises(WeightsError, match=r"scorers\.aesthetic\.weights\.clip_dir"):
        load_metric("aesthetic", aesthetic_dir)
    clip = copy_without(clip_l14_dir, tmp_path / "clip_l14", "open_clip_model.safetensors")
    with pytest.raises(WeightsError, match=r"missing file 'open_clip_model.safetensors' or "
                                           r"'open_clip_pytorch_model.bin' in .*scorers\.aesthetic\.weights\.clip_dir"
                                           r".*fetch-weights clip_l14"):
        load_metric("aesthetic", aesthetic_dir, clip_dir=clip)


# --- config.yaml -> folders -> loaders --------------------------------------------------------------

def test_config_yaml_wires_each_scorer_to_all_its_folders(tmp_path, imagereward_dir, bert_base_uncased_dir,
                                                          pickscore_dir, clip_h14_processor_dir, aesthetic_dir,
                                                          clip_l14_dir):
    """The paper config's scorer entries name every folder the loader needs: laid out as
    ``resources/metrics/<weights key>``, the rewards built from ``config.yaml`` score like the
    metrics loaded directly."""
    exp = E.load(ROOT / "config.yaml")
    tiny = {"imagereward": imagereward_dir, "bert_base_uncased": bert_base_uncased_dir,
            "pickscore": pickscore_dir, "clip_h14_processor": clip_h14_processor_dir,
            "aesthetic": aesthetic_dir, "clip_l14": clip_l14_dir}
    for key, d in tiny.items():
        shutil.copytree(d, tmp_path / "metrics" / key)
    extra = {"imagereward": {"vision": TINY_IR_VISION}}        # the tiny ViT (the real one is hard-coded)
    folders = {"imagereward": "tokenizer_dir", "pickscore": "processor_dir", "aesthetic": "clip_dir"}
    x = images(2)
    for scorer, kwarg in folders.items():
        kw = exp.scorer_kwargs(scorer, tmp_path)
        assert set(kw) == {"weights_dir", kwarg}
        reward = build_reward(scorer, **kw, **extra.get(scorer, {}))
        direct = load_metric(scorer, tiny[scorer], **{kwarg: kw[kwarg]}, **extra.get(scorer, {}))
        assert torch.allclose(reward(x, PROMPTS[:2], [{}] * 2), direct.score(x, PROMPTS[:2]), atol=1e-6)
    assert set(tiny) <= set(exp.weights_for(exp.suite_scorers("preference")))
