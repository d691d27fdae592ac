"""Open-vocabulary detection and depth from transformers, in place of UniDet / MiDaS code.

:class:`ZeroShotDetector` (OWL-ViT / OWLv2, or Grounding DINO as T2I-R1's reward uses it) and
:class:`DepthEstimator` (DPT, as T2I-CompBench's 3-D spatial check uses it) load offline from a
weights folder and reproduce the official pre- and post-processing; each class says how."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import WeightsError, autocast_ctx, fix_hint, load_state_dict_strict, quantize_uint8, read_json, require_file
from .clip_metrics import _size_from_cfg, fill_tied, load_hf_state, load_hf_tokenizer, read_image_processor_cfg
from .preprocess import OPENAI_MEAN, OPENAI_STD, normalize, resize_square


def cxcywh_to_xyxy(b: torch.Tensor, w: int, h: int) -> torch.Tensor:
    cx, cy, bw, bh = b.unbind(-1)
    return torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)


def load_pretrained_strict(klass, weights_dir, metric: str):
    """``klass.from_pretrained`` offline -- so transformers' checkpoint key conversions apply --
    failing like :func:`~marpipe.metrics.base.load_state_dict_strict` (a clear
    :class:`WeightsError` naming the file, the keys and the fix) on missing / unexpected /
    shape-mismatched keys instead of initialising them at random."""
    f = require_file(weights_dir, ["model.safetensors", "pytorch_model.bin"], metric)
    model, info = klass.from_pretrained(str(weights_dir), local_files_only=True, output_loading_info=True,
                                        ignore_mismatched_sizes=True, dtype=torch.float32)

    def head(xs):
        xs = [x if isinstance(x, str) else f"{x[0]}: checkpoint {tuple(x[1])} vs model {tuple(x[2])}"
              for x in xs]
        return ", ".join(xs[:5]) + (f" ... (+{len(xs) - 5} more)" if len(xs) > 5 else "")
    parts = [f"{what}: {head(list(info.get(k) or []))}" for what, k in
             (("missing keys", "missing_keys"), ("unexpected keys", "unexpected_keys"),
              ("shape mismatch", "mismatched_keys")) if info.get(k)]
    if parts:
        raise WeightsError(f"[{metric}] {str(f)!r} does not fit the architecture (" + "; ".join(parts)
                           + f"). The file is corrupt or for another model config; {fix_hint(metric, weights_dir)}")
    return model.eval()


class ZeroShotDetector:
    """OWL-ViT / OWLv2 (the default when ``config.json`` names no other type) or Grounding DINO
    (loaded with its processor). ``detect(images, vocab)`` returns per image ``[{"label", "score",
    "box": [x0,y0,x1,y1] pixels of the input image}]`` sorted by score, ``score > box_threshold``
    (T2I-R1: 0.3). OWL: one detection per box query, labelled with its best-scoring query text (as
    transformers' ``post_process_object_detection``), the image resized to a square. Grounding
    DINO in T2I-R1's given-phrase mode (``reward_gdino.py`` with the trainer's
    ``make_detection_prompt``): caption ``"n1 . n2 . n3."``, per noun a positive map over the
    tokens of its first and last word, a box's phrase score that map times the token
    probabilities; every (box, noun) pair above the threshold is a detection labelled with the
    noun, so a box may count for several nouns. Kept from the reference: a noun of 3+ words is
    labelled "first last" (middle words dropped), so it never equals the noun. The image goes
    through the processor (shortest side 800, longest <= 1333, bilinear, ImageNet mean/std, as
    ``T.RandomResize([800], 1333)``)."""
    name = "owlvit"

    def __init__(self, model, tokenizer, kind: str, image_size: int, mean, std, device="cpu",
                 dtype=torch.float32, box_threshold: float = 0.3, processor=None):
        self.model = model.to(device, dtype).eval()
        self.tokenizer, self.kind, self.processor = tokenizer, kind, processor
        self.image_size, self.mean, self.std = image_size, mean, std
        self.device, self.dtype, self.box_threshold = torch.device(device), dtype, box_threshold
        self.name = kind

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, box_threshold=0.3):
        cfg = read_json(require_file(weights_dir, "config.json", "detector"))
        kind = cfg.get("model_type", "owlvit")
        if kind in ("owlvit", "owlv2"):
            from transformers import AutoConfig, Owlv2ForObjectDetection, OwlViTForObjectDetection
            sd, f = load_hf_state(weights_dir, "detector")
            klass = OwlViTForObjectDetection if kind == "owlvit" else Owlv2ForObjectDetection
            model = klass(AutoConfig.from_pretrained(str(weights_dir), local_files_only=True))
            load_state_dict_strict(model, fill_tied(model, sd), metric="detector", source=f)
            pcfg = read_image_processor_cfg(weights_dir)
            size = _size_from_cfg(pcfg, model.config.vision_config.image_size)[1]
            return cls(model, load_hf_tokenizer(weights_dir, "detector"), kind, size,
                       tuple(pcfg.get("image_mean", OPENAI_MEAN)), tuple(pcfg.get("image_std", OPENAI_STD)),
                       device, dtype, box_threshold)
        if kind == "grounding-dino":
            from transformers import AutoProcessor, GroundingDinoForObjectDetection
            # through from_pretrained: transformers 5 renames the Swin backbone's checkpoint keys
            # (``conv_encoder.model.embeddings`` -> ``...model.swin.embeddings`` and more) at load time
            model = load_pretrained_strict(GroundingDinoForObjectDetection, weights_dir, "detector")
            proc = AutoProcessor.from_pretrained(str(weights_dir), local_files_only=True)
            return cls(model, None, kind, 800, None, None, device, dtype, box_threshold, processor=proc)
        raise ValueError(f"unsupported detector model_type {kind!r}")

    @torch.no_grad()
    def detect(self, images: torch.Tensor, vocab: list[list[str]]) -> list[list[dict]]:
        out = []
        for i in range(images.shape[0]):
            x = quantize_uint8(images[i:i + 1].to(self.device, torch.float32))
            labels = list(dict.fromkeys(vocab[i]))
            if not labels:
                out.append([])
                continue
            with autocast_ctx(self.device):
                dets = self._owl(x, labels) if self.kind != "grounding-dino" else self._gdino(x, labels)
            out.append(sorted(dets, key=lambda d: -d["score"]))
        return out

    def _owl(self, x, labels):
        h, w = x.shape[-2:]
        px = normalize(resize_square(x, self.image_size), self.mean, self.std).to(self.dtype)
        t = self.tokenizer(labels, padding="max_length", max_length=16, truncation=True,
                           return_tensors="pt").to(self.device)
        o = self.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=px)
        prob = o.logits[0].float().sigmoid()               # [Q, L]
        score, lab = prob.max(-1)
        boxes = cxcywh_to_xyxy(o.pred_boxes[0].float(), w, h)
        keep = score > self.box_threshold
        return [{"label": labels[int(l)], "score": float(s), "box": b.tolist()}
                for s, l, b in zip(score[keep], lab[keep], boxes[keep])]

    def _gdino(self, x, labels):
        from PIL import Image
        h, w = x.shape[-2:]
        arr = (x[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        caption, spans = t2i_r1_detection_prompt(labels)
        inp = self.processor(images=Image.fromarray(arr), text=caption, return_tensors="pt").to(self.device)
        if "pixel_values" in inp:
            inp["pixel_values"] = inp["pixel_values"].to(self.dtype)
        o = self.model(**inp)
        prob = o.logits[0].float().sigmoid()                               # [Q, max_text_len]
        pm = phrase_positive_map(self.processor.tokenizer(caption), spans, prob.shape[-1]).to(prob.device)
        phrase_scores = pm @ prob.T                                        # [P, Q]
        boxes = cxcywh_to_xyxy(o.pred_boxes[0].float(), w, h)
        dets = []
        for sp, ps in zip(spans, phrase_scores):
            name = " ".join(caption[a:b] for a, b in sp)
            keep = ps > self.box_threshold
            dets += [{"label": name, "score": float(sc), "box": bx.tolist()} for sc, bx in zip(ps[keep], boxes[keep])]
        return dets


def t2i_r1_detection_prompt(nouns) -> tuple[str, list[list[tuple[int, int]]]]:
    """The T2I-R1 trainer's detection prompt: caption ``"n1 . n2 . n3."`` and per noun the
    character spans ``[start, end)`` of its first word and, for several words, its last."""
    caption = " . ".join(nouns) + "."
    spans, at = [], 0
    for n in nouns:
        words = n.strip().split(" ")
        if len(words) == 1:
            spans.append([(at, at + len(words[0]))])
            at += len(words[0]) + 3
        else:
            spans.append([(at, at + len(words[0])), (at + len(n) - len(words[-1]), at + len(n))])
            at += len(n) + 3
    return caption, spans


def phrase_positive_map(encoding, spans, n_tokens: int) -> torch.Tensor:
    """``[P, n_tokens]``: 1 on the tokens covering each span of phrase p, rows divided by
    (their sum + 1e-6) -- GroundingDINO's ``create_positive_map_from_span``, including its
    fallback of looking one or two characters inwards when a span edge is on no token."""
    def tok(chars):
        for c in chars:
            try:
                t = encoding.char_to_token(c)
            except Exception:
                return None
            if t is not None:
                return t
        return None
    pm = torch.zeros(len(spans), n_tokens)
    for j, sp in enumerate(spans):
        for a, b in sp:
            beg, end = tok((a, a + 1, a + 2)), tok((b - 1, b - 2, b - 3))
            if beg is not None and end is not None:
                pm[j, beg:end + 1] = 1
    return pm / (pm.sum(-1, keepdim=True) + 1e-6)


class DepthEstimator:
    """``DPTForDepthEstimation`` (Intel/dpt-hybrid-midas, the transformers port of
    ``dpt_hybrid-midas-501f0c75.pt``) as T2I-CompBench's ``3D_spatial_eval.py`` runs it: input
    480x480 bilinear on the 8-bit image, mean = std = 0.5 (``experts/model_bank.py``); output
    min-max normalised, resized back bilinearly (``align_corners=True``) and truncated to 8-bit
    levels (the reference saves ``Image.fromarray(255 * depth).convert('L')`` and reads it back /
    255). The hybrid embeddings refuse inputs other than ``config.image_size`` (384) though the
    position embeddings are resized to a 480 input's 30x30 grid anyway, so the check is set to
    the run size."""
    name = "dpt"

    def __init__(self, model, device="cpu", dtype=torch.float32, size=480, png_levels=True):
        self.model = model.to(device, dtype).eval()
        self.device, self.dtype, self.size = torch.device(device), dtype, int(size)
        #: truncate the map to 8-bit levels as the reference's saved PNG does
        self.png_levels = png_levels
        emb = getattr(getattr(self.model, "dpt", None), "embeddings", None)
        if emb is not None and hasattr(emb, "image_size"):   # hybrid: checks the input size
            emb.image_size = (self.size, self.size)

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, size=480, png_levels=True):
        from transformers import DPTConfig, DPTForDepthEstimation
        require_file(weights_dir, "config.json", "depth")
        model = DPTForDepthEstimation(DPTConfig.from_pretrained(str(weights_dir), local_files_only=True))
        sd, f = load_hf_state(weights_dir, "depth")
        load_state_dict_strict(model, fill_tied(model, sd), metric="depth", source=f)
        return cls(model, device, dtype, size, png_levels)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """8-bit ``[1,3,H,W]`` -> the model input: PIL bilinear resize to ``size`` (on the 8-bit
        image, as ``transforms.Resize([480, 480])`` on the PIL image), then ``(x - 0.5) / 0.5``."""
        x = resize_square(x, self.size, mode="bilinear")
        return normalize(x, (0.5,) * 3, (0.5,) * 3)

    @torch.no_grad()
    def depth_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, H, W]`` min-max normalised inverse depth (1 = nearest)."""
        outs = []
        for i in range(images.shape[0]):
            x = quantize_uint8(images[i:i + 1].to(self.device, torch.float32))
            px = self.preprocess(x).to(self.dtype)
            with autocast_ctx(self.device):
                d = self.model(pixel_values=px).predicted_depth.float()[0]
            d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-12)
            d = F.interpolate(d[None, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=True)[0, 0]
            if self.png_levels:
                d = torch.floor(d * 255).clamp(0, 255) / 255
            outs.append(d.cpu())
        return torch.stack(outs)
