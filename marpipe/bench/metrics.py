"""``marpipe bench metrics``: speed, memory and score sanity of every metric and reward of a config,
a row per scorer model (``model``), per column of Tables 1-2 (``evaluation``, the scorer built as the
evaluate stage builds it) and per training reward (``reward``, as the trainer builds it), so that a
scorer, column or reward added to a config without a way to bench it fails here and in the tests.
Sizes: ``real``, the published architectures (:data:`REAL`, each value cited) with random weights,
built in memory (no download; meant for a GPU), or a size registered with :func:`register_size`.
How to run it: docs/development.md.
"""
from __future__ import annotations

import contextlib
import gc
import json as _json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

PAPER_CONFIG = "config.yaml"

#: (scorer, weights kwarg) of a config -> (model, that model's loader kwarg). A model's
#: ``weights_dir`` gets a row; its other folders are parts of it.
ROLE = {
    ("hps", "weights_dir"): ("hps", "weights_dir"),
    ("hps", "config_dir"): ("hps", "config_dir"),
    ("imagereward", "weights_dir"): ("imagereward", "weights_dir"),
    ("imagereward", "tokenizer_dir"): ("imagereward", "tokenizer_dir"),
    ("pickscore", "weights_dir"): ("pickscore", "weights_dir"),
    ("pickscore", "processor_dir"): ("pickscore", "processor_dir"),
    ("aesthetic", "weights_dir"): ("aesthetic", "weights_dir"),
    ("aesthetic", "clip_dir"): ("aesthetic", "clip_dir"),
    ("git_vqa", "weights_dir"): ("git_vqa", "weights_dir"),
    ("gdino", "weights_dir"): ("detector", "weights_dir"),
    ("compbench", "vqa_dir"): ("blip_vqa", "weights_dir"),
    ("compbench", "clip_dir"): ("clip_b32", "weights_dir"),
    ("compbench", "detector_dir"): ("detector", "weights_dir"),
    ("compbench", "depth_dir"): ("depth", "weights_dir"),
}

#: model -> "module.Class" whose ``from_pretrained`` loads it
CLASSES = {
    "hps": "marpipe.metrics.clip_metrics.HPSv21",
    "imagereward": "marpipe.metrics.imagereward.ImageReward",
    "pickscore": "marpipe.metrics.clip_metrics.PickScore",
    "aesthetic": "marpipe.metrics.clip_metrics.Aesthetic",
    "clip_b32": "marpipe.metrics.clip_metrics.ClipScore",
    "blip_vqa": "marpipe.metrics.vqa.BlipVQA",
    "git_vqa": "marpipe.metrics.vqa.GitVQA",
    "detector": "marpipe.metrics.detection.ZeroShotDetector",
    "depth": "marpipe.metrics.detection.DepthEstimator",
}

# --- real sizes: the published configs ------------------------------------------------------
#: CLIP ViT-H/14 in transformers' format (PickScore_v1 fine-tunes laion/CLIP-ViT-H-14-laion2B-s32B-b79K):
#: the tower sizes of open_clip's built-in ``ViT-H-14`` (width 1280, 32 layers, head width 80, patch
#: 14, GELU; text width 1024, 16 heads, 24 layers; embed dim 1024) -- the tests check they agree
_PICKSCORE = dict(
    text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
    vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                       image_size=224, patch_size=14, hidden_act="gelu"),
    projection_dim=1024)

#: real-size architecture per model. Sources: open_clip's built-in model configs (what the loaders
#: use when a folder has no ``open_clip_config.json``); marpipe.metrics.imagereward (REAL_VISION /
#: REAL_TEXT, each number cited there); transformers' conversion scripts for the hub repos
#: (``convert_git_to_pytorch.get_git_config("git-large-vqav2")``: CLIP ViT-L/14 at 420 px, GitConfig's
#: text defaults; ``convert_dpt_hybrid_to_pytorch.get_dpt_config`` for ``midas``); the configs'
#: documented defaults (``GroundingDinoConfig()`` = IDEA-Research/grounding-dino-tiny, whose processor
#: resizes to shortest side 800, longest 1333); BLIP-VQA: ViT-B/16 at 384 + BERT-base, the
#: architecture of ``model_base_vqa_capfilt_large.pth``, of which Salesforce/blip-vqa-capfilt-large is
#: the port (not checked against that repo's config.json: no machine here reached the hub). Image
#: sizes: what the loaders take from the repos' processor configs (DPT: the reference's 480).
REAL = {
    "hps": {"open_clip": "ViT-H-14"},
    "aesthetic": {"open_clip": "ViT-L-14-quickgelu"},
    "clip_b32": {"open_clip": "ViT-B-32-quickgelu"},
    "imagereward": {"vision": "REAL_VISION", "text": "REAL_TEXT"},
    "pickscore": {"config": _PICKSCORE, "size": 224, "crop": 224},
    "blip_vqa": {"config": dict(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=384, patch_size=16),
        text_config=dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, encoder_hidden_size=768)), "image_size": 384},
    "git_vqa": {"config": dict(
        vision_config=dict(image_size=420, patch_size=14, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16),
        vocab_size=30522, hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=1024), "size": 420, "crop": 420},
    "detector": {"config": {}, "processor": {"shortest_edge": 800, "longest_edge": 1333}},
    "depth": {"config": dict(is_hybrid=True, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, image_size=384, patch_size=16, readout_type="project",
                             backbone_out_indices=[2, 5, 8, 11], reassemble_factors=[1, 1, 1, 0.5],
                             neck_hidden_sizes=[256, 512, 768, 768], use_batch_norm_in_fusion_residual=False),
              "size": 480},
}
#: the resolution both paper models generate at (NOVA d48w1024-sd512, Harmon 1.5B)
REAL_IMAGE = 512
TINY_IMAGE = 64
TINY_BATCH = 4


def _cls(model: str):
    import importlib
    mod, name = CLASSES[model].rsplit(".", 1)
    return getattr(importlib.import_module(mod), name)


def real_config(model: str):
    """The real-size config object of ``model`` (open_clip: the model-config dict; transformers: the
    config class; ImageReward: ``(vision, text)`` dicts). Builds no weights."""
    spec = REAL[model]
    if "open_clip" in spec:
        import open_clip
        return open_clip.get_model_config(spec["open_clip"])
    if model == "imagereward":
        from marpipe.metrics.imagereward import REAL_TEXT, REAL_VISION
        return dict(REAL_VISION), dict(REAL_TEXT)
    from transformers import BlipConfig, CLIPConfig, DPTConfig, GitConfig, GroundingDinoConfig
    klass = {"pickscore": CLIPConfig, "blip_vqa": BlipConfig, "git_vqa": GitConfig,
             "detector": GroundingDinoConfig, "depth": DPTConfig}[model]
    return klass(**spec["config"])


class _Tokenizers:
    """Tiny tokenizers for the real-size models, written once to a temp folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._bert = self._clip = None

    def bert(self) -> Path:
        if self._bert is None:
            self._bert = write_bert_tokenizer(self.root / "bert")
        return self._bert

    def clip(self) -> Path:
        if self._clip is None:
            self._clip = write_clip_tokenizer(self.root / "clip")
        return self._clip


def build_real(model: str, toks: _Tokenizers, device="cpu", dtype=torch.float32, batch_size: int = 16,
               box_threshold: float = 0.3):
    """``model`` at its real size (:data:`REAL`) with random weights, allocated on ``device``
    (``"meta"``: no memory at all) and wrapped in its metric class as ``from_pretrained`` does."""
    from transformers import AutoTokenizer
    device = torch.device(device)
    kw = dict(device=device, dtype=dtype, batch_size=batch_size)
    spec = REAL[model]
    with torch.device(device):
        if "open_clip" in spec:
            from marpipe.metrics.clip_metrics import AestheticMLP, build_open_clip
            # a folder without open_clip_config.json: the loaders' built-in config, as for the real repos
            net, tok, _ = build_open_clip(toks.root / "no_such_folder", spec["open_clip"], model)
            if model == "aesthetic":
                return _cls(model)(net, tok, AestheticMLP(net.visual.output_dim), **kw)
            return _cls(model)(net, tok, **kw)
        if model == "imagereward":
            from transformers import BertTokenizer

            from marpipe.metrics.imagereward import ImageRewardModel, add_blip_special_tokens
            vision, text = real_config(model)
            tok = add_blip_special_tokens(BertTokenizer.from_pretrained(str(toks.bert())))
            return _cls(model)(ImageRewardModel(vision, text), tok, **kw)
        if model == "pickscore":
            from transformers import CLIPModel
            return _cls(model)(CLIPModel(real_config(model)), AutoTokenizer.from_pretrained(str(toks.clip())),
                               size=spec["size"], crop=spec["crop"], **kw)
        if model == "blip_vqa":
            from transformers import BlipForQuestionAnswering

            from marpipe.metrics.imagereward import add_blip_special_tokens
            tok = add_blip_special_tokens(AutoTokenizer.from_pretrained(str(toks.bert())))
            return _cls(model)(BlipForQuestionAnswering(real_config(model)), tok, image_size=spec["image_size"], **kw)
        if model == "git_vqa":
            from transformers import GitForCausalLM
            return _cls(model)(GitForCausalLM(real_config(model)), AutoTokenizer.from_pretrained(str(toks.bert())),
                               size=spec["size"], crop=spec["crop"], **kw)
        if model == "detector":
            from transformers import (
                GroundingDinoForObjectDetection,
                GroundingDinoImageProcessor,
                GroundingDinoProcessor,
            )
            proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size=dict(spec["processor"])),
                                          tokenizer=AutoTokenizer.from_pretrained(str(toks.bert())))
            net = GroundingDinoForObjectDetection(real_config(model))
            return _cls(model)(net, None, "grounding-dino", spec["processor"]["shortest_edge"], None, None,
                               device, dtype, box_threshold, processor=proc)
        if model == "depth":
            from transformers import DPTForDepthEstimation
            return _cls(model)(DPTForDepthEstimation(real_config(model)), device, dtype, spec["size"])
    raise KeyError(f"no real-size config for {model!r}; known: {', '.join(REAL)}")


@contextlib.contextmanager
def real_loaders(toks: _Tokenizers):
    """Every metric class's ``from_pretrained`` builds its real-size random-weight model instead of
    reading a folder, so the reward factories and the compbench scorer run unchanged at real size."""
    from unittest import mock

    def loader(model):
        def from_pretrained(cls, weights_dir=None, device="cpu", dtype=torch.float32, batch_size=16,
                            box_threshold=0.3, **_):
            return build_real(model, toks, device=device, dtype=dtype, batch_size=batch_size,
                              box_threshold=box_threshold)
        return classmethod(from_pretrained)

    with contextlib.ExitStack() as stack:
        for model in CLASSES:
            stack.enter_context(mock.patch.object(_cls(model), "from_pretrained", loader(model)))
        yield


# --- random-weight sizes: folders in the real layouts ----------------------------------------------
#: size -> (builders, extra): ``builders`` maps (model, loader kwarg) to a function writing that folder
#: under a root and returning it; ``extra`` maps a model to the loader kwargs it needs beyond its folders.
#: ``real`` builds each model from its real config in memory (:func:`build_real`): no folders.
SIZES: dict[str, tuple[dict, dict]] = {"real": ({}, {})}


def register_size(name: str, builders: dict, extra: dict | None = None) -> None:
    """Bench the models at size ``name`` from the folders ``builders`` write (the test bed registers
    ``tiny``)."""
    SIZES[name] = (dict(builders), dict(extra or {}))


# --- the rows of a config --------------------------------------------------------------------
def weights_roles(exp) -> dict[str, list[tuple[str, str, str]]]:
    """weights key -> its roles (scorer, model, loader kwarg), for every folder the config's scorers load
    (a folder can serve several: e.g. one model's weights and another's second folder)."""
    out: dict[str, list] = {}
    for scorer in exp.cfg["scorers"]:
        for kwarg, key in exp._weights_kwargs(scorer).items():
            if (scorer, kwarg) not in ROLE:
                from marpipe.config import ConfigError
                raise ConfigError(f"bench metrics: config scorers.{scorer}.weights.{kwarg} ({key!r}) is not a model "
                                  f"it knows; add it to marpipe.bench.metrics.ROLE (and a tiny and a real builder)")
            role = (scorer, *ROLE[scorer, kwarg])
            if role[1:] not in [r[1:] for r in out.get(key, [])]:
                out.setdefault(key, []).append(role)
    return out


def model_rows(exp) -> dict[str, tuple[str, str]]:
    """weights key -> (scorer, model) for the weights entries that are models of their own (one row each)."""
    out = {}
    for key, roles in weights_roles(exp).items():
        own = [(scorer, model) for scorer, model, kwarg in roles if kwarg == "weights_dir"]
        if own:
            out[key] = own[0]
    return out


def expected_rows(exp) -> list[tuple[str, str]]:
    """(kind, name) of every row of a config: its models, its Table columns, its rewards."""
    from marpipe.experiment import SUITES
    return ([("model", k) for k in model_rows(exp)]
            + [("evaluation", col) for s in SUITES for col in exp.columns(s)]
            + [("reward", r) for r in exp.cfg["rewards"]])


# --- inputs -------------------------------------------------------------------------------------
PROMPTS = {
    None: ["a photo of a red cat on a wooden bench", "a blue car next to a green apple",
           "two dogs in front of a table", "an anime painting of a cat"],
    "color": ["a red cat and a blue dog", "a green apple and a blue car"],
    "shape": ["a round table and a wooden bench", "a round apple and a car"],
    "texture": ["a wooden table and a red car", "a wooden bench and a blue dog"],
    "spatial": ["a cat on the left of a dog", "a car on the right of a bench"],
    "3d_spatial": ["a cat in front of a dog", "a car behind a bench"],
    "numeracy": ["two cats and a dog", "three apples and a car"],
    "complex": ["a red cat on the left of a wooden bench", "the blue car is next to a green apple"],
}
#: prompts of the training set (geneval_and_t2i_data_final.json) with their metadata
TRAIN = [
    ("a red cat and a blue dog", {"task_type": "color", "nouns": ["cat", "dog"],
                                  "attr_nouns": ["red cat", "blue dog"]}),
    ("a cat on the left of a dog", {"task_type": "spatial", "nouns": ["cat", "dog"],
                                    "spatial_info": {"obj1": "cat", "obj2": "dog", "locality": "left of"}}),
    ("two cats", {"task_type": "numeracy", "nouns": ["cat"], "numeracy_info": [{"obj_name": "cat", "num": 2}]}),
    ("a photo of a car", {"task_type": "single_object", "nouns": ["car"]}),
]
_VOCAB = [["cat", "dog"], ["car"], ["wooden bench", "cat"], ["apple", "table", "dog"]]
_COMPLEX_KINDS = ["spatial", "action", "both"]


def _cycle(xs, n):
    return [xs[i % len(xs)] for i in range(n)]


#: the words of the bench prompts: the vocabulary of the tokenizers the real-size models get
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "the", "red", "blue",
              "green", "cat", "dog", "car", "photo", "of", "on", "left", "right", "yes", "no",
              "?", ".", ",", "and", "two", "three", "apple", "table", "bench", "wooden", "in",
              "front", "behind", "next", "to", "near", "top", "bottom", "is", "there"]


def write_bert_tokenizer(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    from transformers import BertTokenizer
    BertTokenizer(vocab={w: i for i, w in enumerate(BERT_WORDS)}, do_lower_case=True).save_pretrained(str(d))
    return d


def clip_vocab(n_merges: int = 300) -> tuple[list[str], list[str]]:
    """(vocab, merges) of a CLIP BPE tokenizer with the first ``n_merges`` merges of the real one."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:1 + n_merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    return vocab + ["<|startoftext|>", "<|endoftext|>"], merges


def write_clip_tokenizer(d: Path, n_merges: int = 300) -> Path:
    """A CLIP BPE tokenizer with the first ``n_merges`` merges of the real CLIP vocab."""
    d.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab(n_merges)
    (d / "vocab.json").write_text(_json.dumps({v: i for i, v in enumerate(vocab)}))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    from transformers import CLIPTokenizer
    CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(str(d))
    return d


def smooth_images(n=4, h=40, w=48, seed=0, grid=6):
    """Low-frequency images (bilinear upsampling of a ``grid x grid`` noise), 8-bit quantised:
    resizers (PIL vs torch) agree on them to about one grey level, unlike on white noise."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, grid, grid, generator=g), size=(h, w), mode="bilinear",
                      align_corners=False)
    return x.mul(255).round().div(255)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return smooth_images(n, size, size, seed=seed, grid=8)


# --- measuring ----------------------------------------------------------------------------------
def _vm_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def _malloc_trim():
    """Give the C heap's free pages back to the OS (glibc), so that a row's resident-set growth is not
    hidden by memory that earlier rows freed but the allocator kept."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Memory:
    """Memory held over a row's start: CUDA allocations, or the CPU process's resident set."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        gc.collect()        # cheap: bench_metrics freezes what existed before it (gc.freeze)
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated(device)
        else:
            _malloc_trim()
            self.base = _vm_kb("VmRSS")
        self.device = device

    def held_mb(self) -> float | None:
        if self.cuda:
            return (torch.cuda.memory_allocated(self.device) - self.base) / 2**20
        rss = _vm_kb("VmRSS")
        return None if rss is None or self.base is None else (rss - self.base) / 1024

    def reset_peak(self) -> bool:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                      # resets VmHWM to the current resident set
            return True
        except OSError:
            return False

    def peak_mb(self) -> float | None:
        if self.cuda:
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        hwm = _vm_kb("VmHWM")
        return None if hwm is None or self.base is None else (hwm - self.base) / 1024


def _values(out) -> torch.Tensor:
    """The numbers a call returned, flattened: scores, a detector's scores and boxes, depth maps."""
    if isinstance(out, torch.Tensor):
        return out.detach().float().flatten().cpu()
    if isinstance(out, list):   # detections: list (per image) of dicts
        vals = [v for dets in out for d in dets for v in [d["score"], *d["box"]]]
        return torch.tensor(vals, dtype=torch.float32)
    raise TypeError(type(out))


def _scores(out) -> torch.Tensor:
    if isinstance(out, list):
        return torch.tensor([d["score"] for dets in out for d in dets], dtype=torch.float32)
    return _values(out)


def measure(build: Callable[[], Callable[[], object]], device, n_images: int, repeats: int) -> dict:
    """Build a row (``build()`` returns the call to time), warm it up once, time ``repeats`` calls."""
    device = torch.device(device)
    mem = _Memory(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call = build()
    out = call()                                  # warm-up: lazy model loads, allocator, caches
    sync()
    load = mem.held_mb()
    mem_ok = mem.reset_peak()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = call()
        sync()
        times.append(time.perf_counter() - t)
    peak = mem.peak_mb() if mem_ok else None
    s, v = _scores(out), _values(out)
    med = statistics.median(times)
    row = {"batch": n_images, "images_per_s": round(n_images / med, 2), "ms_per_image": round(1000 * med / n_images, 2),
           "load_mb": None if load is None else round(load, 1), "peak_mb": None if peak is None else round(peak, 1),
           "score_min": round(float(s.min()), 4) if s.numel() else None,
           "score_max": round(float(s.max()), 4) if s.numel() else None,
           "n_scores": int(s.numel()), "finite": bool(torch.isfinite(v).all())}
    del call, out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# --- the bench ----------------------------------------------------------------------------------
def _model_call(model: str, metric, images: torch.Tensor, prompts: list[str]):
    if model == "detector":
        vocab = _cycle(_VOCAB, images.shape[0])
        return lambda: metric.detect(images, vocab)
    if model == "depth":
        return lambda: metric.depth_maps(images)
    return lambda: metric.score(images, prompts)


_TRANSFORMERS = ("AutoConfig", "AutoProcessor", "AutoTokenizer", "BertConfig", "BertTokenizer", "BlipConfig",
                 "BlipForQuestionAnswering", "BlipTextModel", "BlipVisionModel", "CLIPConfig", "CLIPModel",
                 "DPTConfig", "DPTForDepthEstimation", "GitConfig", "GitForCausalLM", "GroundingDinoConfig",
                 "GroundingDinoForObjectDetection", "GroundingDinoImageProcessor", "GroundingDinoProcessor")


def _preload():
    """Import what the loaders import lazily, so that no row's memory counts a module's import."""
    import open_clip  # noqa: F401
    import torchvision.ops  # noqa: F401
    import transformers
    for name in _TRANSFORMERS:
        getattr(transformers, name)
    for model in CLASSES:
        _cls(model)


@contextlib.contextmanager
def _quiet():
    """transformers' progress bars and config warnings off while tiny folders are written and read."""
    from transformers.utils import logging as tl
    level, bars = tl.get_verbosity(), tl.is_progress_bar_enabled()
    tl.set_verbosity_error()
    tl.disable_progress_bar()
    try:
        yield
    finally:
        tl.set_verbosity(level)
        if bars:
            tl.enable_progress_bar()


def _wanted(names, kind: str, name: str) -> bool:
    return not names or name in names or f"{kind}:{name}" in names


def bench_metrics(names=None, device="cpu", json: bool = False, size: str = "tiny", config=PAPER_CONFIG,
                  batch_size: int | None = None, image_size: int | None = None, repeats: int = 3,
                  print_table: bool = True, progress: bool = False) -> list[dict]:
    """Bench every row of ``config`` (or those in ``names``: a row name, or ``kind:name``); print a
    table (or JSON) and return the rows. ``size``: ``real`` or a registered one (see the module);
    ``progress``: a line on stderr as each row ends. Per row: images/s and ms/image of one call on
    ``batch`` images (the median of ``repeats`` calls after a warm-up call, CUDA synchronised);
    ``load MB``, the memory held after building the row's models and the warm-up call over what was
    held before the row; ``peak MB``, the most held during the timed calls over the same start (CUDA
    ``max_memory_allocated``; on a CPU the resident set's peak, Linux ``VmHWM`` reset before the
    calls, the C heap trimmed before each row); and the scores' range, ``finite`` false when any
    score, box or depth is NaN or infinite."""
    from marpipe import experiment as E
    from marpipe.rewards import build_reward, combine
    if size not in SIZES:
        from marpipe.config import ConfigError
        raise ConfigError(f"bench metrics: no size {size!r}; sizes: {', '.join(SIZES)}. The tiny "
                          "random-weight folders are the repository's test bed (testbed/, not installed): "
                          "`python -m testbed.metrics` runs this bench at size tiny")
    exp = config if isinstance(config, E.Experiment) else E.load(config)
    device = torch.device(device)
    if size == "real" and device.type != "cuda":
        print(f"[marpipe] bench metrics --size real on {device}: several GB per model, slow", file=sys.stderr)
    known = expected_rows(exp)
    unknown = [n for n in names or () if not any(n in (name, f"{kind}:{name}") for kind, name in known)]
    if unknown:
        from marpipe.config import ConfigError
        raise ConfigError(f"bench metrics: no row {', '.join(map(repr, unknown))} in this config; rows: "
                         + ", ".join(f"{k}:{n}" for k, n in known))
    ev = exp.cfg["evaluation"]
    batch = batch_size or (ev["batch_size"] if size == "real" else TINY_BATCH)
    px = image_size or (REAL_IMAGE if size == "real" else TINY_IMAGE)
    images = _images(batch, px)
    roles, models = weights_roles(exp), model_rows(exp)
    builders, extra = SIZES[size]
    rows: list[dict] = []
    _preload()
    gc.collect()
    gc.freeze()             # the caller's objects: not scanned again by each row's collection
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.callback(gc.unfreeze)
        stack.enter_context(_quiet())
        tmp = Path(tmp)
        toks = _Tokenizers(tmp / "tokenizers")
        res = tmp / "resources"
        if size == "real":
            stack.enter_context(real_loaders(toks))

        def folder(key: str) -> Path:
            """``resources/metrics/<key>``: the size's folder, written on first use (real size: no folder)."""
            d = res / "metrics" / key
            if size != "real" and not d.exists():
                d.mkdir(parents=True)
                for _, model, kwarg in roles[key]:     # one folder serving several roles holds all their files
                    shutil.copytree(builders[model, kwarg](Path(tempfile.mkdtemp(dir=tmp))), d, dirs_exist_ok=True)
            return d

        def scorer_kwargs(scorer: str) -> dict:
            """As the evaluate stage passes them (``Experiment.scorer_kwargs``), plus a tiny model's extras."""
            kw = exp.scorer_kwargs(scorer, res)
            for kwarg, key in exp._weights_kwargs(scorer).items():
                assert Path(kw[kwarg]) == folder(key)
                kw = {**extra.get(ROLE[scorer, kwarg][0], {}), **kw}
            return kw

        def add(kind, name, scorer, build):
            if not _wanted(names, kind, name):
                return
            t = time.perf_counter()
            r = measure(build, device, batch, repeats)
            rows.append({"kind": kind, "name": name, "scorer": scorer, "size": size, "device": str(device),
                         "image_px": px, **r})
            if progress:
                print(f"[marpipe] bench metrics: {kind}:{name} ({time.perf_counter() - t:.1f} s with its build)",
                      file=sys.stderr, flush=True)

        prompts = _cycle(PROMPTS[None], batch)
        for key, (scorer, model) in models.items():

            def build(key=key, model=model, scorer=scorer):
                kw = {"device": device, "batch_size": batch}
                if model == "detector":
                    kw = {"device": device, "box_threshold": exp.cfg["scorers"][scorer].get("box_threshold", 0.3)}
                elif model == "depth":
                    kw = {"device": device}
                if size == "real":
                    m = build_real(model, toks, **kw)
                else:
                    kw.update(extra.get(model, {}))
                    parts = {ROLE[scorer, kwarg][1]: folder(k)
                             for kwarg, k in exp._weights_kwargs(scorer).items()
                             if ROLE[scorer, kwarg] != (model, "weights_dir") and ROLE[scorer, kwarg][0] == model}
                    m = _cls(model).from_pretrained(folder(key), **parts, **kw)
                return _model_call(model, m, images, prompts)
            add("model", key, f"{scorer} ({model})", build)

        from marpipe.experiment import SUITES
        for suite in SUITES:
            specs = ev[suite]["metrics"] if suite == "preference" else ev[suite]["categories"]
            for col, spec in specs.items():
                def build(col=col, spec=spec):
                    kwargs = spec.get("kwargs", {})
                    fn = build_reward(spec["scorer"], device=device, **{**scorer_kwargs(spec["scorer"]), **kwargs})
                    cat = kwargs.get("category")
                    ps = _cycle(PROMPTS.get(cat, PROMPTS[None]), batch)
                    meta = [{"column": col, **({"complex_kind": k} if cat == "complex" else {})}
                            for k in _cycle(_COMPLEX_KINDS, batch)]
                    scale = spec.get("scale", 1.0)
                    return lambda: fn(images, ps, meta) * scale
                label = "/".join([spec["scorer"], *map(str, spec.get("kwargs", {}).values())])
                add("evaluation", col, label + (f" x{spec['scale']:g}" if spec.get("scale", 1) != 1 else ""), build)

        for reward, parts in exp.cfg["rewards"].items():
            def build(parts=parts):
                fn = combine({s: build_reward(s, device=device, **scorer_kwargs(s)) for s in parts}, parts)
                ps, meta = (list(x) for x in zip(*_cycle(TRAIN, batch)))
                return lambda: fn(images, ps, meta)
            add("reward", reward, " + ".join(f"{w:g}*{s}" for s, w in parts.items()), build)

    if json:
        print(_json.dumps(rows, indent=2))
    elif print_table:
        print(format_table(rows))
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    r0 = rows[0]
    head = (f"marpipe bench metrics: {r0['size']} models, random weights, {r0['device']}, "
            f"{r0['batch']} images of {r0['image_px']}x{r0['image_px']} per call, {torch.get_num_threads()} threads")
    cols = ["kind", "name", "scorer", "img/s", "ms/img", "load MB", "peak MB", "scores", "finite"]

    def fmt(x, spec=".1f"):
        return "-" if x is None else format(x, spec)
    body = [[r["kind"], r["name"], r["scorer"], fmt(r["images_per_s"], ".2f"), fmt(r["ms_per_image"], ".2f"),
             fmt(r["load_mb"]), fmt(r["peak_mb"]),
             "-" if r["score_min"] is None else f"[{r['score_min']:.4g}, {r['score_max']:.4g}]",
             "yes" if r["finite"] else "NO"] for r in rows]
    width = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    right = {3, 4, 5, 6}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, width)))
    out = [head, line(cols), line(["-" * w for w in width])] + [line(b) for b in body]
    out.append("load MB: held after building the row and one warm-up call; peak MB: most held during the timed "
               "calls (weights + activations), both over the row's start (CUDA allocations / CPU resident set)")
    return "\n".join(out).rstrip()
