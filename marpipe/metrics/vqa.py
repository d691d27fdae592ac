"""VQA yes-probability scorers: BLIP-VQA (T2I-CompBench) and GIT-VQA (T2I-R1 reward).

Both score ``P(yes) / (P(yes) + P(no))`` of the first answer token, with the official questions,
tokenisation and preprocessing (:class:`BlipVQA`: ``T2I-CompBench/BLIPvqa_eval``,
``inference='vqa_prob'``; :class:`GitVQA`: T2I-R1 ``reward_git.py``). The preprocessing each
reproduces: ``docs/method.md``, "Metric preprocessing"."""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from .base import Metric, WeightsError, autocast_ctx, load_state_dict_strict, quantize_uint8, require_file
from .clip_metrics import _size_from_cfg, fill_tied, load_hf_state, load_hf_tokenizer, read_image_processor_cfg
from .preprocess import OPENAI_MEAN, OPENAI_STD, hf_clip_preprocess, normalize, resize_square

BLIP_YES_ID, BLIP_NO_ID = 2748, 2053     # blip_vqa.py vqa_prob (bert-base-uncased)
BLIP_DEC_ID = 30522                       # [DEC], the decoder bos


def pre_question(q: str, max_words: int = 50) -> str:
    """BLIP ``data/utils.pre_question``."""
    q = re.sub(r"([.!\"()*#:;~])", "", q.lower()).rstrip(" ")
    words = q.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else q


class BlipVQA(Metric):
    """``score_questions(images, questions) -> P(yes)/(P(yes)+P(no))`` per (image, question).

    The question (``pre_question``) is tokenised with padding to the longest and truncation to 35,
    its first token replaced by ``[ENC]``; the text encoder cross-attends the ViT tokens, the
    decoder runs on the single ``[DEC]`` token (id 30522) cross-attending the question states, and
    the softmax over the first answer token gives yes = 2748, no = 2053. Weights: a transformers
    ``BlipForQuestionAnswering`` (``Salesforce/blip-vqa-capfilt-large``, the conversion of the
    ``model_base_vqa_capfilt_large.pth`` T2I-CompBench uses) and its tokenizer."""
    name = "blip_vqa"

    def __init__(self, model, tokenizer, image_size=480, mean=OPENAI_MEAN, std=OPENAI_STD, **kw):
        super().__init__(**kw)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.image_size, self.mean, self.std = image_size, mean, std
        v = tokenizer.get_vocab()
        self.yes_id, self.no_id = v["yes"], v["no"]
        self.enc_id = v.get("[ENC]")
        self.dec_id = v.get("[DEC]", model.config.text_config.bos_token_id)
        if self.enc_id is None:
            raise WeightsError("[blip_vqa] tokenizer has no [ENC] token; wrong tokenizer folder")
        if len(v) >= 30524 and (self.yes_id, self.no_id, self.dec_id) != (BLIP_YES_ID, BLIP_NO_ID, BLIP_DEC_ID):
            raise WeightsError("[blip_vqa] tokenizer ids of yes/no/[DEC] differ from bert-base-uncased's")

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, batch_size=32, **kw):
        from transformers import BlipConfig, BlipForQuestionAnswering

        from .imagereward import add_blip_special_tokens
        require_file(weights_dir, "config.json", cls.name)
        model = BlipForQuestionAnswering(BlipConfig.from_pretrained(str(weights_dir), local_files_only=True))
        sd, f = load_hf_state(weights_dir, cls.name)
        load_state_dict_strict(model, fill_tied(model, sd), metric=cls.name, source=f)
        tok = add_blip_special_tokens(load_hf_tokenizer(weights_dir, cls.name))
        cfg = read_image_processor_cfg(weights_dir)
        size = _size_from_cfg(cfg, model.config.vision_config.image_size)[0] if cfg else \
            model.config.vision_config.image_size
        return cls(model, tok, image_size=size, mean=tuple(cfg.get("image_mean", OPENAI_MEAN)),
                   std=tuple(cfg.get("image_std", OPENAI_STD)), device=device, dtype=dtype,
                   batch_size=batch_size, **kw)

    def _yes_prob(self, images, questions):
        m = self.model
        px = normalize(resize_square(images, self.image_size), self.mean, self.std).to(self.dtype)
        img = m.vision_model(pixel_values=px).last_hidden_state
        img_att = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
        q = self.tokenizer([pre_question(x) for x in questions], padding="longest", truncation=True,
                           max_length=35, return_tensors="pt").to(self.device)
        ids = q["input_ids"].clone()
        ids[:, 0] = self.enc_id
        qs = m.text_encoder(input_ids=ids, attention_mask=q["attention_mask"],
                            encoder_hidden_states=img, encoder_attention_mask=img_att).last_hidden_state
        start = torch.full((ids.shape[0], 1), self.dec_id, dtype=torch.long, device=self.device)
        logits = m.text_decoder(input_ids=start, encoder_hidden_states=qs,
                                encoder_attention_mask=q["attention_mask"]).logits[:, 0].float()
        p = logits.softmax(-1)
        return p[:, self.yes_id] / (p[:, self.yes_id] + p[:, self.no_id])

    @torch.no_grad()
    def score_questions(self, images: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """One question per image (repeat images to ask several)."""
        out = []
        for i in range(0, len(questions), self.batch_size):
            x = images[i:i + self.batch_size].to(self.device, torch.float32)
            x = quantize_uint8(x) if self.quantize else x
            with autocast_ctx(self.device, self.autocast):
                out.append(self._yes_prob(x, questions[i:i + self.batch_size]).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _score_batch(self, images, prompts):
        """Whole-prompt question (a convenience; CompBench uses :func:`blip_vqa_attribute_scores`)."""
        return self._yes_prob(images, [p + "?" for p in prompts])


class GitVQA(Metric):
    """GIT VQA yes-probability (T2I-R1 ``reward_git.py``): ``input_ids = [CLS] + tokens("{q}?")``,
    the logits of the last position, yes/no ids from ``encode('yes')[1]``."""
    name = "git_vqa"

    def __init__(self, model, tokenizer, size=224, crop=224, mean=OPENAI_MEAN, std=OPENAI_STD, **kw):
        super().__init__(**kw)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.size, self.crop, self.mean, self.std = size, crop, mean, std
        # T2I-R1: encode('yes') == [CLS, yes, SEP] -> index 1
        self.yes_id = tokenizer.encode("yes")[1]
        self.no_id = tokenizer.encode("no")[1]

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, batch_size=32, **kw):
        from transformers import GitConfig, GitForCausalLM
        require_file(weights_dir, "config.json", cls.name)
        model = GitForCausalLM(GitConfig.from_pretrained(str(weights_dir), local_files_only=True))
        sd, f = load_hf_state(weights_dir, cls.name)
        # output.weight is tied to the word embeddings in some checkpoints
        if "output.weight" not in sd and "git.embeddings.word_embeddings.weight" in sd:
            sd["output.weight"] = sd["git.embeddings.word_embeddings.weight"]
        load_state_dict_strict(model, fill_tied(model, sd), metric=cls.name, source=f)
        tok = load_hf_tokenizer(weights_dir, cls.name)
        cfg = read_image_processor_cfg(weights_dir)
        size, crop = _size_from_cfg(cfg, model.config.vision_config.image_size)
        return cls(model, tok, size=size, crop=crop, mean=tuple(cfg.get("image_mean", OPENAI_MEAN)),
                   std=tuple(cfg.get("image_std", OPENAI_STD)), device=device, dtype=dtype,
                   batch_size=batch_size, **kw)

    @torch.no_grad()
    def score_questions(self, images, questions):
        out = []
        for i, q in enumerate(questions):  # unpadded, one at a time (as the reference)
            x = images[i:i + 1].to(self.device, torch.float32)
            x = quantize_uint8(x) if self.quantize else x
            with autocast_ctx(self.device, self.autocast):
                px = hf_clip_preprocess(x, self.size, self.crop, self.mean, self.std).to(self.dtype)
                ids = [self.tokenizer.cls_token_id] + self.tokenizer(q, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([ids], device=self.device)
                logits = self.model(pixel_values=px, input_ids=ids).logits[:, -1].float()
            p = logits.softmax(-1)
            out.append((p[:, self.yes_id] / (p[:, self.yes_id] + p[:, self.no_id])).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _score_batch(self, images, prompts):
        return self.score_questions(images, [p + "?" for p in prompts]).to(images.device)
