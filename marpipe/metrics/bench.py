"""``marpipe bench metrics``: images/s per metric.

On any device: the tiny random-weight configs (the same architectures as the tests,
built in a temp folder and loaded through the real loaders). With ``device='cuda'``
also the real-size architectures (ViT-H-14 HPS, ViT-L/14 Aesthetic, BLIP-L ImageReward)
with random weights -- built in memory, not downloaded.
"""
from __future__ import annotations

import json as _json
import tempfile
import time
from pathlib import Path

import torch

DEFAULT = ("hps", "pickscore", "aesthetic", "imagereward")


def _tiny_dirs(root: Path, names):
    from . import tiny as t  # the tests' tiny-weight builders
    makers = {"hps": t.make_hps_dir, "aesthetic": t.make_aesthetic_dir,
              "pickscore": t.make_pickscore_dir, "imagereward": t.make_imagereward_dir,
              "blip_vqa": t.make_blip_vqa_dir}
    return {n: (makers[n](root), t.tiny_load_kwargs(n, root)) for n in names if n in makers}


def _real(name, device):
    import open_clip
    from .clip_metrics import AestheticMLP, Aesthetic, HPSv21
    from .imagereward import REAL_TEXT, REAL_VISION, ImageReward, ImageRewardModel
    from transformers import BertTokenizer
    tok = open_clip.tokenizer.SimpleTokenizer()
    kw = dict(device=device, dtype=torch.bfloat16, batch_size=16)
    if name == "hps":
        return HPSv21(open_clip.create_model("ViT-H-14"), tok, **kw)
    if name == "aesthetic":
        m = open_clip.create_model("ViT-L-14-quickgelu")
        return Aesthetic(m, tok, AestheticMLP(768), **kw)
    if name == "imagereward":
        bt = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"])})
        return ImageReward(ImageRewardModel(REAL_VISION, REAL_TEXT), bt, **kw)
    return None


def _time(m, n_images, size, device):
    x = torch.rand(n_images, 3, size, size)
    prompts = ["a photo of a red cat on the left of a dog"] * n_images
    m.score(x[: min(2, n_images)], prompts[:2])               # warm-up
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    m.score(x, prompts)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - t)


def bench_metrics(names=None, device="cpu", json: bool = False, n_images: int = 16) -> list[dict]:
    """Print (and return) images/s per metric and config."""
    from . import load_metric
    names = list(names or DEFAULT)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        dirs = _tiny_dirs(Path(root), names)
        for n in names:
            if n in dirs:
                d, extra = dirs[n]
                m = load_metric(n, d, device=device, batch_size=8, **extra)
                rows.append({"metric": n, "config": "tiny", "device": str(device),
                             "images_per_s": round(_time(m, n_images, 64, device), 2)})
            if torch.device(device).type == "cuda":
                m = _real(n, device)
                if m is not None:
                    rows.append({"metric": n, "config": "real-size (random weights)", "device": str(device),
                                 "images_per_s": round(_time(m, 4 * n_images, 512, device), 2)})
                    del m
                    torch.cuda.empty_cache()
    if json:
        print(_json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['metric']:<12} {r['config']:<28} {r['device']:<6} {r['images_per_s']:>10.2f} img/s")
    return rows
