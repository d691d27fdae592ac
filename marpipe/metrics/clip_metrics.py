"""CLIP-family metrics: HPS v2.1, LAION Aesthetic, CLIP cosine (open_clip) and PickScore (transformers).

Each loads its official weights offline from the folders its config entry names (each
``from_pretrained`` says which files; :func:`marpipe.metrics.base.fix_hint` gives the fix when one
is missing) and scores as its official code does; the pinned weights: ``docs/cluster.md``."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .base import (
    Metric,
    WeightsError,
    fix_hint,
    load_state_dict_strict,
    load_tensor_file,
    read_json,
    require_dir,
    require_file,
)
from .preprocess import OPENAI_MEAN, OPENAI_STD, clip_preprocess, hf_clip_preprocess, hps_preprocess

# --- open_clip helpers ----------------------------------------------------------

def build_open_clip(weights_dir, default_name: str, metric: str):
    """An open_clip ``CLIP`` from ``open_clip_config.json`` if present (its ``model_cfg``, as the hub's
    open_clip repositories hold it), else ``default_name``'s built-in config.

    A file without ``quick_gelu`` keeps ``default_name``'s activation: the OpenAI weights need
    QuickGELU (``ViT-L-14-quickgelu``), which open_clip itself forces for ``pretrained='openai'``
    whatever the architecture's file says."""
    import open_clip
    default = open_clip.get_model_config(default_name)
    cfg = read_json(Path(weights_dir) / "open_clip_config.json")
    if cfg:
        cfg = dict(cfg.get("model_cfg", cfg))
        cfg.setdefault("quick_gelu", (default or {}).get("quick_gelu", False))
    else:
        cfg = default
        if cfg is None:
            raise WeightsError(f"[{metric}] open_clip has no config {default_name!r}")
    cfg = dict(cfg)
    model = open_clip.model.CLIP(
        embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
        quick_gelu=cfg.get("quick_gelu", False))
    tok = open_clip.tokenizer.SimpleTokenizer(
        context_length=cfg["text_cfg"].get("context_length", 77))
    return model, tok, cfg


def _strip_module(sd: dict) -> dict:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


class _OpenClipMetric(Metric):
    def __init__(self, model, tokenizer, **kw):
        super().__init__(**kw)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.image_size = int(self._image_size())

    def _image_size(self):
        s = self.model.visual.image_size
        return s[0] if isinstance(s, (tuple, list)) else s

    def image_features(self, pixels):
        return self.model.encode_image(pixels.to(self.dtype), normalize=True)

    def text_features(self, prompts):
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True)


class HPSv21(_OpenClipMetric):
    """HPS v2.1: cosine of L2-normalised open_clip features, no logit scale.

    ``score`` returns the raw cosine (the training reward, as T2I-R1's ``reward_hps``);
    the benchmark reports ``x100`` (``hpsv2/evaluation.py``), see :func:`hps_benchmark`.
    Preprocessing: :func:`~marpipe.metrics.preprocess.hps_preprocess` (resize longest
    side to 224 bicubic + zero-pad, no crop). Text: open_clip tokenizer, 77 tokens.
    """
    name = "hps"
    report_scale = 100.0
    CHECKPOINT = "HPS_v2.1_compressed.pt"

    def __init__(self, *a, antialias: bool = True, **kw):
        super().__init__(*a, **kw)
        self.antialias = antialias

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, batch_size=32,
                        checkpoint: str | None = None, config_dir=None, **kw):
        """``weights_dir``: ``HPS_v2.1_compressed.pt`` (HF ``xswu/HPSv2``; a dict with the ``state_dict``
        of an open_clip ViT-H-14). ``config_dir``: a folder whose ``open_clip_config.json`` gives the architecture (xswu/HPSv2 holds
        none; the official code builds open_clip's ``ViT-H-14``, the config that
        laion/CLIP-ViT-H-14-laion2B-s32B-b79K's ``open_clip_config.json`` holds); without it, the weights
        folder's ``open_clip_config.json``, else the built-in ``ViT-H-14``."""
        ck = require_file(weights_dir, [checkpoint or cls.CHECKPOINT, "model.safetensors"], cls.name)
        arch_dir = weights_dir
        if config_dir is not None:
            if not (Path(config_dir) / "open_clip_config.json").is_file():
                raise WeightsError(
                    f"[{cls.name}] no open_clip_config.json in {str(config_dir)!r} (config "
                    f"`scorers.{cls.name}.weights.config_dir`): add open_clip_config.json to that `weights:` "
                    f"entry's `files:` and download it again (`marpipe fetch-weights {Path(config_dir).name}`)")
            arch_dir = config_dir
        model, tok, _ = build_open_clip(arch_dir, "ViT-H-14", cls.name)
        sd = load_tensor_file(ck)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        load_state_dict_strict(model, _strip_module(sd), metric=cls.name, source=ck)
        return cls(model, tok, device=device, dtype=dtype, batch_size=batch_size, **kw)

    def _score_batch(self, images, prompts):
        px = hps_preprocess(images, self.image_size, antialias=self.antialias)
        return (self.image_features(px) * self.text_features(prompts)).sum(-1)


HPS_STYLES = ("anime", "concept-art", "paintings", "photo")


def hps_benchmark(metric: HPSv21, images_by_style: dict, prompts_by_style: dict) -> dict:
    """HPS v2 benchmark (``hpsv2/evaluation.py``): per-style mean and overall mean, x100.

    ``images_by_style[style]``: ``[N,3,H,W]`` tensor (or an iterable of such chunks);
    ``prompts_by_style[style]``: the N prompts. The reference averages 80-image chunks
    per style then the chunks -- equal to the plain mean for full chunks; the overall
    "Average" is the mean over all images.
    """
    out, allscores = {}, []
    for style in images_by_style:
        imgs = images_by_style[style]
        chunks = [imgs] if torch.is_tensor(imgs) else list(imgs)
        prompts = list(prompts_by_style[style])
        scores, k = [], 0
        for c in chunks:
            scores.append(metric.score(c, prompts[k:k + c.shape[0]]))
            k += c.shape[0]
        s = torch.cat(scores) * metric.report_scale
        out[style] = float(s.mean())
        allscores.append(s)
    out["mean"] = float(torch.cat(allscores).mean()) if allscores else float("nan")
    return out


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor MLP (``simple_inference.py``).

    ``layers``: Linear(d,1024), Dropout(0.2), Linear(1024,128), Dropout(0.2),
    Linear(128,64), Dropout(0.1), Linear(64,16), Linear(16,1) -- no activations; so the
    state-dict keys are ``layers.{0,2,4,6,7}.{weight,bias}``. ImageReward uses the same
    layout (``ImageReward.py`` ``MLP``).
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


_CLIP_FILES = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def _load_open_clip_weights(cls, weights_dir, default_name, kwarg=None):
    ck = require_file(weights_dir, _CLIP_FILES, cls.name, kwarg=kwarg)
    model, tok, _ = build_open_clip(weights_dir, default_name, cls.name)
    sd = load_tensor_file(ck)
    load_state_dict_strict(model, _strip_module(sd.get("state_dict", sd)), metric=cls.name, source=ck)
    return model, tok


class Aesthetic(_OpenClipMetric):
    """LAION aesthetic predictor v2: ``MLP(normalize(CLIP_L14_openai.encode_image(x)))``.

    OpenAI ViT-L/14 uses QuickGELU (open_clip ``ViT-L-14-quickgelu``); preprocessing is
    OpenAI CLIP's (shortest side 224 bicubic, centre crop, OpenAI mean/std). The
    reference L2-normalises in numpy with zero norms replaced by 1 (same here).
    Prompts are ignored.
    """
    name = "aesthetic"
    MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"

    def __init__(self, model, tokenizer, mlp: nn.Module, **kw):
        super().__init__(model, tokenizer, **kw)
        self.mlp = mlp.to(self.device, torch.float32).eval()

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, batch_size=32, clip_dir=None, **kw):
        """``weights_dir``: the MLP, ``sac+logos+ava1-l14-linearMSE.pth``
        (christophschuhmann/improved-aesthetic-predictor); ``clip_dir``: the CLIP ViT-L/14 backbone (its
        own config entry), ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin`` in open_clip
        layout (``ViT-L-14-quickgelu``/``openai``: HF ``timm/vit_large_patch14_clip_224.openai``),
        optionally ``open_clip_config.json``."""
        clip_dir = require_dir(clip_dir, cls.name, "clip_dir", "CLIP ViT-L/14 (open_clip format)")
        model, tok = _load_open_clip_weights(cls, clip_dir, "ViT-L-14-quickgelu", kwarg="clip_dir")
        mf = require_file(weights_dir, [cls.MLP_FILE, "mlp.safetensors"], cls.name)
        mlp = AestheticMLP(model.visual.output_dim)
        load_state_dict_strict(mlp, load_tensor_file(mf), metric=cls.name, source=mf)
        return cls(model, tok, mlp, device=device, dtype=dtype, batch_size=batch_size, **kw)

    def _score_batch(self, images, prompts):
        px = clip_preprocess(images, self.image_size)
        f = self.model.encode_image(px.to(self.dtype)).float()
        n = f.norm(dim=-1, keepdim=True)
        f = f / torch.where(n == 0, torch.ones_like(n), n)
        with torch.autocast(self.device.type, enabled=False):
            return self.mlp(f).squeeze(-1)


class ClipScore(_OpenClipMetric):
    """T2I-CompBench non-spatial (``CLIPScore_eval/CLIP_similarity.py``): cosine of the
    OpenAI CLIP ViT-B/32 image and text features (no x100, no clamp)."""
    name = "clip_b32"

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, batch_size=32, **kw):
        """``weights_dir``: the OpenAI ViT-B/32 in open_clip layout (``ViT-B-32-quickgelu``), the file
        names of :meth:`Aesthetic.from_pretrained`'s ``clip_dir``."""
        model, tok = _load_open_clip_weights(cls, weights_dir, "ViT-B-32-quickgelu")
        return cls(model, tok, device=device, dtype=dtype, batch_size=batch_size, **kw)

    def _score_batch(self, images, prompts):
        px = clip_preprocess(images, self.image_size)
        return (self.image_features(px) * self.text_features(prompts)).sum(-1)


# --- PickScore (transformers) -------------------------------------------------

def load_hf_state(weights_dir, metric: str) -> tuple[dict, Path]:
    f = require_file(weights_dir, ["model.safetensors", "pytorch_model.bin"], metric)
    sd = load_tensor_file(f)
    # non-persistent buffers present in older checkpoints
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    return sd, f


def fill_tied(model: torch.nn.Module, sd: dict) -> dict:
    """Add the keys ``save_pretrained`` drops for tied parameters (e.g. an LM head tied to
    the word embeddings) from their twin present in ``sd``."""
    groups: dict[int, list[str]] = {}
    for n, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(t.data_ptr(), []).append(n)
    sd = dict(sd)
    for names in groups.values():
        have = [n for n in names if n in sd]
        for n in names:
            if n not in sd and have:
                sd[n] = sd[have[0]]
    return sd


def load_hf_tokenizer(weights_dir, metric: str, sub: str | None = None, kwarg: str | None = None):
    from transformers import AutoTokenizer
    d = Path(weights_dir)
    cands = [d / sub] if sub else []
    cands += [d / "tokenizer", d / "processor", d]
    for c in cands:
        if c.is_dir() and any((c / n).exists() for n in
                              ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(str(c), local_files_only=True)
    raise WeightsError(f"[{metric}] no tokenizer files (tokenizer.json / vocab.*) in {str(d)!r}; "
                       f"{fix_hint(metric, d if kwarg else None, kwarg)}")


def read_image_processor_cfg(weights_dir) -> dict:
    d = Path(weights_dir)
    for c in (d / "processor", d):
        cfg = read_json(c / "preprocessor_config.json")
        if cfg:
            return cfg
    return {}


def _size_from_cfg(cfg: dict, default: int) -> tuple[int, int]:
    """(resize shortest edge, crop size) from a transformers image-processor config."""
    size = cfg.get("size", default)
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height", default))
    crop = cfg.get("crop_size", size)
    if isinstance(crop, dict):
        crop = crop.get("height", size)
    return int(size), int(crop)


class PickScore(Metric):
    """PickScore v1: ``logit_scale.exp() * cosine(image_emb, text_emb)``.

    Embeddings are taken explicitly as ``visual_projection(vision_model(...).pooler_output)``
    and ``text_projection(text_model(...).pooler_output)``: the tensors transformers 4's
    ``get_*_features`` return (transformers 5's return an output object). Text: padding,
    truncation to 77 tokens. Image: transformers' CLIP processor, see
    :func:`~marpipe.metrics.preprocess.hf_clip_preprocess` (shortest side 224 PIL bicubic,
    centre crop 224 with floor offsets, OpenAI mean/std; read from
    ``preprocessor_config.json`` when present).
    """
    name = "pickscore"

    def __init__(self, model, tokenizer, size=224, crop=224, mean=OPENAI_MEAN, std=OPENAI_STD, **kw):
        super().__init__(**kw)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.size, self.crop, self.mean, self.std = size, crop, tuple(mean), tuple(std)

    @classmethod
    def from_pretrained(cls, weights_dir, device="cpu", dtype=torch.float32, batch_size=32,
                        processor_dir=None, **kw):
        """As the official code loads them: ``weights_dir``: a transformers ``CLIPModel`` (``config.json``
        + ``model.safetensors``, HF ``yuvalkirstain/PickScore_v1``); ``processor_dir``:
        laion/CLIP-ViT-H-14-laion2B-s32B-b79K's tokenizer and ``preprocessor_config.json`` (its own
        config entry, read by ``AutoProcessor.from_pretrained``)."""
        from transformers import CLIPConfig, CLIPModel
        require_file(weights_dir, "config.json", cls.name)
        proc = require_dir(processor_dir, cls.name, "processor_dir", "CLIP processor (tokenizer + image processor)")
        require_file(proc, "preprocessor_config.json", cls.name, kwarg="processor_dir")
        model = CLIPModel(CLIPConfig.from_pretrained(str(weights_dir), local_files_only=True))
        sd, f = load_hf_state(weights_dir, cls.name)
        load_state_dict_strict(model, fill_tied(model, sd), metric=cls.name, source=f)
        tok = load_hf_tokenizer(proc, cls.name, kwarg="processor_dir")
        cfg = read_image_processor_cfg(proc)
        size, crop = _size_from_cfg(cfg, model.config.vision_config.image_size)
        return cls(model, tok, size=size, crop=crop, mean=cfg.get("image_mean", OPENAI_MEAN),
                   std=cfg.get("image_std", OPENAI_STD), device=device, dtype=dtype,
                   batch_size=batch_size, **kw)

    def _score_batch(self, images, prompts):
        px = hf_clip_preprocess(images, self.size, self.crop, self.mean, self.std)
        m = self.model
        img = m.visual_projection(m.vision_model(pixel_values=px.to(self.dtype)).pooler_output)
        t = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77,
                           return_tensors="pt").to(self.device)
        txt = m.text_projection(m.text_model(input_ids=t["input_ids"],
                                             attention_mask=t["attention_mask"]).pooler_output)
        img = img.float() / img.float().norm(dim=-1, keepdim=True)
        txt = txt.float() / txt.float().norm(dim=-1, keepdim=True)
        return m.logit_scale.float().exp() * (img * txt).sum(-1)
