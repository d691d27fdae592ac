"""Tiny random-weight versions of every metric's architecture, written in the real weights layout:
the tests' metric folders, and the ``tiny`` size of ``marpipe bench metrics`` (registered on import;
``python -m testbed.metrics [ARGS]`` runs ``marpipe bench metrics --size tiny [ARGS]``). See
``docs/development.md``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from marpipe.bench import metrics as bench
from marpipe.bench.metrics import (  # noqa: F401  (the tests' tokenizers and images, as the bench's)
    BERT_WORDS,
    clip_vocab,
    smooth_images,
    write_bert_tokenizer,
    write_clip_tokenizer,
)

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def images(n=8, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


PROMPTS = ["a red cat", "two dogs on the left of a car", "a photo of a blue apple",
           "a wooden bench", "the green car", "a dog", "an apple and a cat", "three cats"]


def _open_clip_model(cfg, seed):
    import open_clip
    torch.manual_seed(seed)
    return open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                                text_cfg=cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False))


def make_hps_dir(tiny_root) -> Path:
    d = tiny_root / "hps"
    d.mkdir(exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    m = _open_clip_model(TINY_OPEN_CLIP, 1)
    torch.save({"state_dict": m.state_dict()}, d / "HPS_v2.1_compressed.pt")
    return d


TINY_AESTHETIC_CLIP = {**TINY_OPEN_CLIP, "quick_gelu": True}


def make_aesthetic_dir(tiny_root) -> Path:
    """The aesthetic MLP alone, as the pinned GitHub file downloads it (config ``weights.aesthetic``)."""
    from marpipe.metrics.clip_metrics import AestheticMLP
    d = tiny_root / "aesthetic"
    d.mkdir(exist_ok=True)
    torch.manual_seed(3)
    torch.save(AestheticMLP(TINY_AESTHETIC_CLIP["embed_dim"]).state_dict(), d / "sac+logos+ava1-l14-linearMSE.pth")
    return d


def make_clip_l14_dir(tiny_root) -> Path:
    """The aesthetic predictor's CLIP backbone (config ``weights.clip_l14``): open_clip weights, plus
    a tiny ``open_clip_config.json`` (the real download takes the weights only and the built-in
    ``ViT-L-14-quickgelu`` config)."""
    from safetensors.torch import save_file
    d = tiny_root / "clip_l14"
    d.mkdir(exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps(TINY_AESTHETIC_CLIP))
    save_file(_open_clip_model(TINY_AESTHETIC_CLIP, 2).state_dict(), str(d / "open_clip_model.safetensors"))
    return d


def _clip_towers(d: Path | None, max_text: int, patch: int) -> dict:
    """Writes the tiny CLIP BPE tokenizer to ``d`` (unless None); returns 1-layer, width-32 text and
    vision tower configs (32x32 images) for the CLIP-family configs (CLIP, OWL-ViT)."""
    if d is not None:
        write_clip_tokenizer(d)
    nvocab = len(clip_vocab()[0])
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return dict(text_config=dict(vocab_size=nvocab, max_position_embeddings=max_text, bos_token_id=nvocab - 2,
                                 eos_token_id=nvocab - 1, pad_token_id=nvocab - 1, **tower),
                vision_config=dict(image_size=32, patch_size=patch, **tower))


def make_clip_h14_processor_dir(tiny_root) -> Path:
    """PickScore's processor folder (config ``weights.clip_h14_processor``, the laion ViT-H-14 repo):
    the tiny CLIP BPE tokenizer and a ``preprocessor_config.json`` (shortest side 32, crop 32)."""
    from transformers import CLIPImageProcessor
    d = tiny_root / "clip_h14_processor"
    write_clip_tokenizer(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(d))
    return d


def make_pickscore_dir(tiny_root) -> Path:
    """PickScore_v1 as its repo holds the model: ``config.json`` + ``model.safetensors`` (the
    tokenizer comes from :func:`make_clip_h14_processor_dir`)."""
    from transformers import CLIPConfig, CLIPModel
    d = tiny_root / "pickscore"
    cfg = CLIPConfig(**_clip_towers(None, max_text=77, patch=16), projection_dim=16)
    torch.manual_seed(4)
    m = CLIPModel(cfg)
    m.save_pretrained(str(d))
    return d


TINY_IR_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, image_size=32, patch_size=16)
TINY_IR_TEXT = dict(vocab_size=len(BERT_WORDS) + 2, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                    encoder_hidden_size=32, bos_token_id=len(BERT_WORDS), sep_token_id=3)
#: ``med_config.json`` with the official file's keys (BLIP's BERT config: GitHub
#: THUDM/ImageReward ``train/src/config/med_config.json``) and TINY_IR_TEXT's sizes
TINY_MED_CONFIG = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
                   "hidden_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
                   "model_type": "bert", "pad_token_id": 0, "type_vocab_size": 2, "encoder_width": 32,
                   "add_cross_attention": True,
                   **{k: TINY_IR_TEXT[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "num_attention_heads",
                                                  "max_position_embeddings")}}
#: the files of ``bert-base-uncased`` that BLIP's ``BertTokenizer.from_pretrained`` reads (and that
#: config ``weights.bert_base_uncased`` downloads); the real tokenizer_config.json's content
BERT_TOKENIZER_CONFIG = {"do_lower_case": True, "model_max_length": 512}


def make_bert_base_uncased_dir(tiny_root) -> Path:
    """ImageReward's tokenizer folder in the ``bert-base-uncased`` layout: ``vocab.txt`` (tiny) and
    ``tokenizer_config.json`` -- no ``[DEC]``/``[ENC]``, the loader adds them as BLIP does."""
    d = tiny_root / "bert_base_uncased"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps(BERT_TOKENIZER_CONFIG))
    return d


def make_imagereward_dir(tiny_root) -> Path:
    """The hub repo's layout: ``ImageReward.pt`` in the OFFICIAL checkpoint layout
    (``blip.visual_encoder...``, so the key mapping is exercised) and ``med_config.json``. The
    vision tower is TINY_IR_VISION (pass ``vision=TINY_IR_VISION``: the real one is hard-coded)."""
    from marpipe.metrics.imagereward import REAL_TEXT, REAL_VISION, ImageRewardModel
    d = tiny_root / "imagereward"
    d.mkdir(parents=True, exist_ok=True)
    (d / "med_config.json").write_text(json.dumps(TINY_MED_CONFIG, indent=2))
    torch.manual_seed(5)
    m = ImageRewardModel({**REAL_VISION, **TINY_IR_VISION}, {**REAL_TEXT, **TINY_IR_TEXT})
    sd = to_official_imagereward(m.state_dict())
    sd["blip.vision_proj.weight"] = torch.zeros(4, 32)  # unused ITC heads exist in the official file
    sd["blip.text_proj.weight"] = torch.zeros(4, 32)
    torch.save(sd, d / "ImageReward.pt")
    return d


def tiny_load_kwargs(name: str, tiny_root) -> dict:
    """The ``from_pretrained`` kwargs a tiny metric needs beyond its weights folder: the second
    folder (its own config entry for the real model) and ImageReward's tiny vision tower."""
    if name == "imagereward":
        return {"tokenizer_dir": make_bert_base_uncased_dir(tiny_root), "vision": TINY_IR_VISION}
    if name == "pickscore":
        return {"processor_dir": make_clip_h14_processor_dir(tiny_root)}
    if name == "aesthetic":
        return {"clip_dir": make_clip_l14_dir(tiny_root)}
    return {}


def to_official_imagereward(sd):
    """Inverse of ``map_official_keys``, written independently (string rules of the table)."""
    import re
    out = {}
    for k, v in sd.items():
        if k.startswith("vision."):
            n = k[len("vision."):]
            n = n.replace("embeddings.class_embedding", "cls_token")
            n = n.replace("embeddings.position_embedding", "pos_embed")
            n = n.replace("embeddings.patch_embedding.", "patch_embed.proj.")
            n = re.sub(r"^encoder\.layers\.(\d+)\.", r"blocks.\1.", n)
            n = (n.replace("layer_norm1", "norm1").replace("layer_norm2", "norm2")
                  .replace("self_attn.qkv", "attn.qkv").replace("self_attn.projection", "attn.proj"))
            n = n.replace("post_layernorm.", "norm.")
            out["blip.visual_encoder." + n] = v
        elif k.startswith("text."):
            out["blip.text_encoder." + k[len("text."):]] = v
        else:
            out[k] = v
    return out


def make_blip_vqa_dir(tiny_root) -> Path:
    """A tiny ``BlipForQuestionAnswering`` + BERT tokenizer with [DEC]/[ENC] appended."""
    from transformers import AutoTokenizer, BlipConfig, BlipForQuestionAnswering

    from marpipe.metrics.imagereward import add_blip_special_tokens
    d = tiny_root / "blip_vqa"
    write_bert_tokenizer(d)
    tok = add_blip_special_tokens(AutoTokenizer.from_pretrained(str(d)))
    tok.save_pretrained(str(d))
    n = len(tok)
    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        text_config=dict(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=tok.convert_tokens_to_ids("[DEC]"), sep_token_id=3, pad_token_id=0))
    torch.manual_seed(6)
    BlipForQuestionAnswering(cfg).save_pretrained(str(d))
    return d


def make_owlvit_dir(tiny_root) -> Path:
    """A tiny ``OwlViTForObjectDetection`` (4x4 patch grid = 16 box queries), its CLIP BPE
    tokenizer and an ``OwlViTImageProcessor`` config (square resize to 32, OpenAI mean/std)."""
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor
    d = tiny_root / "owlvit"
    cfg = OwlViTConfig(**_clip_towers(d, max_text=16, patch=8),
        projection_dim=32)   # the class head needs projection_dim == text hidden size (as 512/512)
    torch.manual_seed(7)
    m = OwlViTForObjectDetection(cfg)
    with torch.no_grad():   # random heads saturate (scores 0/1, degenerate boxes): tame them
        m.box_head.dense2.weight.mul_(0.02)
        m.box_head.dense2.bias.zero_()         # boxes ~ the patch-grid prior
        m.class_head.logit_scale.weight.mul_(0.02)
        m.class_head.logit_scale.bias.fill_(1.0)
        m.class_head.logit_shift.weight.mul_(0.02)
        m.class_head.logit_shift.bias.zero_()  # scores spread around 0.5
    m.save_pretrained(str(d))
    OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32},
                         do_center_crop=False).save_pretrained(str(d))
    return d


def make_gdino_dir(tiny_root) -> Path:
    """A tiny ``GroundingDinoForObjectDetection`` (Swin + BERT, 12 queries) with its
    processor (BERT tokenizer; ``GroundingDinoImageProcessor`` resizing the shortest side
    to 96, longest at most 128 -- the real config says 800 / 1333)."""
    from transformers import (
        AutoTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )
    d = tiny_root / "gdino"
    write_bert_tokenizer(d)
    tok = AutoTokenizer.from_pretrained(str(d))
    cfg = GroundingDinoConfig(
        backbone_config=dict(model_type="swin", image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                             num_heads=[1, 1, 1, 1], window_size=4,
                             out_features=["stage2", "stage3", "stage4"]),
        text_config=dict(model_type="bert", vocab_size=len(BERT_WORDS), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                         pad_token_id=0),
        d_model=32, num_queries=12, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2,
        decoder_n_points=2, num_feature_levels=4, max_text_len=256)
    torch.manual_seed(8)
    m = GroundingDinoForObjectDetection(cfg)
    with torch.no_grad():   # smaller decoder states: token probabilities spread around 0.5, not 0/1
        m.model.decoder.layer_norm.weight.mul_(0.1)
    m.save_pretrained(str(d))
    proc = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 128}),
        tokenizer=tok)
    proc.save_pretrained(str(d))
    return d


def make_dpt_dir(tiny_root) -> Path:
    """A tiny HYBRID ``DPTForDepthEstimation`` (BiT stem + ViT, as Intel/dpt-hybrid-midas),
    configured for 32x32 inputs like the real one is for 384x384 -- so running it at
    another size (the reference's 480) exercises the position-embedding resize."""
    from transformers import DPTConfig, DPTForDepthEstimation
    d = tiny_root / "dpt"
    d.mkdir(parents=True, exist_ok=True)
    cfg = DPTConfig(
        is_hybrid=True, image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, backbone_out_indices=[0, 1, 0, 1],
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1,
        backbone_featmap_shape=[1, 32, 2, 2], readout_type="project", reassemble_factors=[4, 2, 1, 0.5],
        backbone_config=dict(model_type="bit", global_padding="same", layer_type="bottleneck",
                             depths=[1, 1, 1], hidden_sizes=[8, 16, 32], embedding_size=8, num_groups=2,
                             out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True))
    torch.manual_seed(9)
    m = DPTForDepthEstimation(cfg)
    with torch.no_grad():   # a non-degenerate depth map out of the final ReLU
        m.head.head[-2].bias.fill_(1.0)
    m.save_pretrained(str(d))
    return d


def make_git_dir(tiny_root) -> Path:
    """A tiny ``GitForCausalLM`` with a BERT tokenizer and a CLIP image-processor config
    (shortest side 32, centre crop 32), the layout of microsoft/git-large-vqav2."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM
    d = tiny_root / "git"
    write_bert_tokenizer(d)
    cfg = GitConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        vocab_size=len(BERT_WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        initializer_range=0.3)   # larger than the default 0.02 so that the image visibly moves P(yes)
    torch.manual_seed(10)
    GitForCausalLM(cfg).save_pretrained(str(d))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(d))
    return d


# --- the ``tiny`` size of ``marpipe bench metrics`` ------------------------------------------------
def make_clip_b32_dir(root: Path) -> Path:
    """CLIP B/32's folder (config ``weights.clip_b32``): open_clip weights as the hub file names them
    and a tiny QuickGELU ``open_clip_config.json``."""
    d = Path(root) / "clip_b32"
    d.mkdir(parents=True, exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps(TINY_AESTHETIC_CLIP))
    torch.save(_open_clip_model(TINY_AESTHETIC_CLIP, 11).state_dict(), d / "open_clip_pytorch_model.bin")
    return d


def make_open_clip_config_dir(root: Path) -> Path:
    """A folder holding the tiny HPS architecture as the hub's open_clip repos hold theirs
    (``open_clip_config.json`` with ``model_cfg``): HPS's ``config_dir``."""
    d = Path(root) / "open_clip_config"
    d.mkdir(parents=True, exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    return d


#: (model, loader kwarg) -> the builder of its tiny folder (the bench's roles, ``bench.ROLE``)
BENCH_BUILDERS = {("hps", "weights_dir"): make_hps_dir,
                  ("hps", "config_dir"): make_open_clip_config_dir,
                  ("imagereward", "weights_dir"): make_imagereward_dir,
                  ("imagereward", "tokenizer_dir"): make_bert_base_uncased_dir,
                  ("pickscore", "weights_dir"): make_pickscore_dir,
                  ("pickscore", "processor_dir"): make_clip_h14_processor_dir,
                  ("aesthetic", "weights_dir"): make_aesthetic_dir,
                  ("aesthetic", "clip_dir"): make_clip_l14_dir,
                  ("clip_b32", "weights_dir"): make_clip_b32_dir,
                  ("blip_vqa", "weights_dir"): make_blip_vqa_dir,
                  ("git_vqa", "weights_dir"): make_git_dir,
                  ("detector", "weights_dir"): make_gdino_dir,
                  ("depth", "weights_dir"): make_dpt_dir}
# ImageReward's vision tower is hard-coded in its loader: the tiny one is passed
bench.register_size("tiny", BENCH_BUILDERS, {"imagereward": {"vision": TINY_IR_VISION}})


if __name__ == "__main__":
    from marpipe.cli import main
    sys.exit(main(["bench", "metrics", "--size", "tiny", *sys.argv[1:]]))
