"""ImageReward v1.0 on transformers' BLIP pieces, loading the official checkpoint key by key.

The official model (THUDM/ImageReward@c1392c6dd0fd6ecd6d416c96959ab744a6d0a8fb, ``ImageReward.py``,
``models/BLIP``) is BLIP ViT-L/16 -> a BERT-base text encoder with cross-attention -> an MLP on
the ``[CLS]`` state, normalised; :class:`ImageRewardModel` is the same maths on transformers'
``BlipVisionModel`` and ``BlipTextModel``. Which official preprocessing it reproduces:
``docs/method.md``, "Metric preprocessing"."""
from __future__ import annotations

import re

import torch
from torch import nn

from .base import Metric, WeightsError, load_state_dict_strict, load_tensor_file, require_dir, require_file
from .clip_metrics import AestheticMLP
from .preprocess import clip_preprocess

#: reward normalisation (``ImageReward.py``: ``self.mean`` / ``self.std``)
IR_MEAN = 0.16717362830052426
IR_STD = 1.0333394966054072
#: prompt length (``ImageReward.py``: ``max_length=35``)
IR_MAX_LEN = 35

#: BLIP ViT-L as the official code hard-codes it (THUDM/ImageReward@c1392c6dd0fd6ecd6d416c96959ab744a6d0a8fb):
#: ``ImageReward/ImageReward.py``: ``BLIP_Pretrain(image_size=224, vit='large')``;
#: ``models/BLIP/blip.py`` ``create_vit('large')``: width 1024, depth 24, 16 heads, patch 16;
#: ``models/BLIP/vit.py``: ``mlp_ratio=4.`` (4096), ``nn.LayerNorm(eps=1e-6)``, ``nn.GELU``, qkv bias.
REAL_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                   num_attention_heads=16, image_size=224, patch_size=16,
                   layer_norm_eps=1e-6, hidden_act="gelu")
#: what ``med_config.json`` gives (GitHub copy: ``train/src/config/med_config.json``), with
#: ``encoder_width`` = the vision width (``blip_pretrain.py``); used where no file is read (bench)
REAL_TEXT = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072,
                 num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512,
                 layer_norm_eps=1e-12, hidden_act="gelu", encoder_hidden_size=1024,
                 pad_token_id=0, is_decoder=True)  # is_decoder: builds the cross-attention


#: ``med_config.json`` keys the text encoder's shapes and maths depend on (BERT defaults when absent)
MED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id")


def text_config_from_med(med_config, vision_width: int) -> dict:
    """``BlipTextConfig`` kwargs from the official ``med_config.json``, read as the official code
    reads it (``BertConfig.from_json_file``); ``encoder_width`` is the vision width
    (``blip_pretrain.py``) and ``add_cross_attention`` is BlipText's ``is_decoder``."""
    from transformers import BertConfig
    bert = BertConfig.from_json_file(str(med_config))
    return {**{k: getattr(bert, k) for k in MED_KEYS}, "encoder_hidden_size": vision_width,
            "is_decoder": bool(getattr(bert, "add_cross_attention", False))}


def map_official_keys(sd: dict) -> dict:
    """Official ``ImageReward.pt`` keys -> this module's keys: ``blip.visual_encoder.*`` ->
    ``vision.*`` (timm names -> ``BlipVisionModel``'s: ``cls_token`` -> ``embeddings.class_embedding``,
    ``blocks.{i}.norm1`` -> ``encoder.layers.{i}.layer_norm1``, ``attn.proj`` ->
    ``self_attn.projection``, ``norm`` -> ``post_layernorm``, ...), ``blip.text_encoder.*`` -> ``text.*``
    (identical names), ``mlp.*`` unchanged; the ITC heads (``blip.vision_proj``/``text_proj``) and
    ``position_ids`` buffers are dropped."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("blip.vision_proj.", "blip.text_proj.")) or k.endswith("position_ids"):
            continue
        n = k
        if n.startswith("blip.visual_encoder."):
            n = n[len("blip.visual_encoder."):]
            n = {"cls_token": "embeddings.class_embedding",
                 "pos_embed": "embeddings.position_embedding"}.get(n, n)
            n = n.replace("patch_embed.proj.", "embeddings.patch_embedding.")
            n = re.sub(r"^blocks\.(\d+)\.", r"encoder.layers.\1.", n)
            n = (n.replace(".norm1.", ".layer_norm1.").replace(".norm2.", ".layer_norm2.")
                  .replace(".attn.qkv.", ".self_attn.qkv.").replace(".attn.proj.", ".self_attn.projection."))
            n = re.sub(r"^norm\.", "post_layernorm.", n)
            n = "vision." + n
        elif n.startswith("blip.text_encoder."):
            n = "text." + n[len("blip.text_encoder."):]
        out[n] = v
    return out


class ImageRewardModel(nn.Module):
    """BLIP ViT-L/16 (224 px) -> BERT-base with cross-attention in every layer on the prompt
    (``[CLS] ... [SEP] [PAD]*``, 35 tokens, no ``[ENC]`` substitution) -> ``last_hidden_state[:, 0]``
    -> MLP 768-1024-128-64-16-1 (no activations). ``BlipTextModel``'s embeddings have no token-type
    table, like BLIP's ``med.py``."""

    def __init__(self, vision_cfg: dict, text_cfg: dict):
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel
        self.vision = BlipVisionModel(BlipVisionConfig(**vision_cfg))
        self.text = BlipTextModel(BlipTextConfig(**text_cfg), add_pooling_layer=False)
        self.mlp = AestheticMLP(self.text.config.hidden_size)

    def forward(self, pixels, input_ids, attention_mask):
        img = self.vision(pixel_values=pixels).last_hidden_state
        att = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
        h = self.text(input_ids=input_ids, attention_mask=attention_mask,
                      encoder_hidden_states=img, encoder_attention_mask=att).last_hidden_state
        with torch.autocast(pixels.device.type, enabled=False):
            return self.mlp(h[:, 0].float()).squeeze(-1)


def add_blip_special_tokens(tok):
    """BLIP ``init_tokenizer``: add ``[DEC]`` as bos and ``[ENC]`` as an extra special token."""
    vocab = tok.get_vocab()
    if "[DEC]" not in vocab:
        tok.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in vocab:
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageReward(Metric):
    """ImageReward v1.0 reward: ``(mlp(cls) - IR_MEAN) / IR_STD``."""
    name = "imagereward"

    def __init__(self, model: ImageRewardModel, tokenizer, **kw):
        super().__init__(**kw)
        self.model = model.to(self.device, self.dtype).eval()
        self.model.mlp.float()
        self.tokenizer = tokenizer
        self.image_size = model.vision.config.image_size

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, batch_size=32,
                        tokenizer_dir=None, vision: dict | None = None, **kw):
        """``weights_dir``: the hub repo ``THUDM/ImageReward`` as it holds them, ``ImageReward.pt`` +
        ``med_config.json`` (the text encoder's BERT config; the vision tower's sizes are in no file,
        :data:`REAL_VISION`); ``tokenizer_dir``: bert-base-uncased, read with ``BertTokenizer`` plus
        BLIP's ``[DEC]``/``[ENC]`` (ids 30522/30523), as the official ``load`` and
        ``init_tokenizer`` do; ``vision``: overrides of :data:`REAL_VISION` (tiny test models only)."""
        ck = require_file(weights_dir, "ImageReward.pt", cls.name, kwarg="weights_dir")
        med = require_file(weights_dir, "med_config.json", cls.name, kwarg="weights_dir")
        tok_dir = require_dir(tokenizer_dir, cls.name, "tokenizer_dir", "bert-base-uncased tokenizer")
        require_file(tok_dir, "vocab.txt", cls.name, kwarg="tokenizer_dir")
        vision = {**REAL_VISION, **(vision or {})}
        text = text_config_from_med(med, vision["hidden_size"])
        model = ImageRewardModel(vision, text)
        sd = load_tensor_file(ck)
        if any(k.startswith("blip.") for k in sd):
            sd = map_official_keys(sd)
        load_state_dict_strict(model, sd, metric=cls.name, source=ck)
        from transformers import BertTokenizer
        tok = add_blip_special_tokens(BertTokenizer.from_pretrained(str(tok_dir), local_files_only=True))
        if len(tok) > text["vocab_size"]:
            raise WeightsError(f"[{cls.name}] tokenizer has {len(tok)} tokens but the text model "
                               f"only {text['vocab_size']}: wrong tokenizer folder (config "
                               f"`scorers.{cls.name}.weights.tokenizer_dir`)")
        return cls(model, tok, device=device, dtype=dtype, batch_size=batch_size, **kw)

    def _score_batch(self, images, prompts):
        px = clip_preprocess(images, self.image_size).to(self.dtype)
        t = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                           max_length=IR_MAX_LEN, return_tensors="pt").to(self.device)
        out = self.model(px, t["input_ids"], t["attention_mask"])
        return (out - IR_MEAN) / IR_STD
