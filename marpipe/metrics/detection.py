"""Open-vocabulary detection and depth from transformers (replacing UniDet / MiDaS code).

* :class:`ZeroShotDetector` -- OWL-ViT (``OwlViTForObjectDetection``; default, it runs
  from a tiny config) or Grounding DINO (``GroundingDinoForObjectDetection``, what
  T2I-R1's reward uses; loaded with its processor). ``detect(images, vocab)`` returns
  per image ``[{"label", "score", "box": [x0,y0,x1,y1] pixels}]`` sorted by score,
  filtered at ``box_threshold`` (T2I-R1: 0.3).
* :class:`DepthEstimator` -- ``DPTForDepthEstimation`` (Intel/dpt-hybrid-midas is the
  transformers port of ``dpt_hybrid-midas-501f0c75.pt``): input resized to 480x480,
  mean = std = 0.5 (``experts/model_bank.py``), output min-max normalised and resized
  back bilinearly (``align_corners=True``) as ``3D_spatial_eval.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import autocast_ctx, load_state_dict_strict, quantize_uint8, read_json, require_file
from .clip_metrics import _size_from_cfg, fill_tied, load_hf_state, load_hf_tokenizer, read_image_processor_cfg
from .preprocess import OPENAI_MEAN, OPENAI_STD, normalize, resize_square


def cxcywh_to_xyxy(b: torch.Tensor, w: int, h: int) -> torch.Tensor:
    cx, cy, bw, bh = b.unbind(-1)
    return torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)


class ZeroShotDetector:
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
        sd, f = load_hf_state(weights_dir, "detector")
        if kind in ("owlvit", "owlv2"):
            from transformers import AutoConfig, Owlv2ForObjectDetection, OwlViTForObjectDetection
            klass = OwlViTForObjectDetection if kind == "owlvit" else Owlv2ForObjectDetection
            model = klass(AutoConfig.from_pretrained(str(weights_dir), local_files_only=True))
            load_state_dict_strict(model, fill_tied(model, sd), metric="detector", source=f)
            pcfg = read_image_processor_cfg(weights_dir)
            size = _size_from_cfg(pcfg, model.config.vision_config.image_size)[1]
            return cls(model, load_hf_tokenizer(weights_dir, "detector"), kind, size,
                       tuple(pcfg.get("image_mean", OPENAI_MEAN)), tuple(pcfg.get("image_std", OPENAI_STD)),
                       device, dtype, box_threshold)
        if kind == "grounding-dino":
            from transformers import AutoProcessor, GroundingDinoConfig, GroundingDinoForObjectDetection
            model = GroundingDinoForObjectDetection(GroundingDinoConfig.from_pretrained(str(weights_dir), local_files_only=True))
            load_state_dict_strict(model, fill_tied(model, sd), metric="detector", source=f)
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
        arr = (x[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        text = " . ".join(labels) + " ."
        inp = self.processor(images=Image.fromarray(arr), text=text, return_tensors="pt").to(self.device)
        o = self.model(**inp)
        r = self.processor.post_process_grounded_object_detection(
            o, inp["input_ids"], threshold=self.box_threshold, text_threshold=self.box_threshold,
            target_sizes=[x.shape[-2:]])[0]
        names = r.get("text_labels", r.get("labels"))
        return [{"label": str(n), "score": float(s), "box": b.tolist()}
                for s, n, b in zip(r["scores"], names, r["boxes"])]


class DepthEstimator:
    name = "dpt"

    def __init__(self, model, device="cpu", dtype=torch.float32, size=480):
        self.model = model.to(device, dtype).eval()
        self.device, self.dtype, self.size = torch.device(device), dtype, size

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, size=480):
        from transformers import DPTConfig, DPTForDepthEstimation
        require_file(weights_dir, "config.json", "depth")
        model = DPTForDepthEstimation(DPTConfig.from_pretrained(str(weights_dir), local_files_only=True))
        sd, f = load_hf_state(weights_dir, "depth")
        load_state_dict_strict(model, fill_tied(model, sd), metric="depth", source=f)
        return cls(model, device, dtype, size)

    @torch.no_grad()
    def depth_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, H, W]`` min-max normalised inverse depth (1 = nearest)."""
        outs = []
        for i in range(images.shape[0]):
            x = quantize_uint8(images[i:i + 1].to(self.device, torch.float32))
            px = normalize(resize_square(x, self.size), (0.5,) * 3, (0.5,) * 3).to(self.dtype)
            with autocast_ctx(self.device):
                d = self.model(pixel_values=px).predicted_depth.float()[0]
            d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-12)
            d = F.interpolate(d[None, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=True)
            outs.append(d[0, 0].cpu())
        return torch.stack(outs)
