"""Image preprocessing as pure tensor functions (``[B,3,H,W]`` float in [0,1] in and out).

Facts (the metrics' official code and the reference code):

* OpenAI CLIP mean/std ``(0.48145466, 0.4578275, 0.40821073)`` /
  ``(0.26862954, 0.26130258, 0.27577711)`` -- used by HPS, PickScore (laion CLIP
  processor), Aesthetic (OpenAI CLIP), ImageReward and BLIP-VQA.
* HPS v2 (``hpsv2/src/open_clip/transform.py``, ``ResizeMaxSize`` with
  ``light_augmentation=True``): ToTensor, then resize the LONGEST side to 224 with
  bicubic interpolation on the float tensor (new side = ``round(side * scale)``), then
  zero-pad to a square (left/top get ``pad // 2``), then normalise. No crop. The resize
  runs on a tensor, so there is no clamping; torchvision >= 0.17 antialiases tensors by
  default (older torchvision did not: ``antialias=False`` reproduces that).
* CLIP-style (OpenAI ``clip.load`` preprocess, ImageReward ``_transform``, the
  transformers CLIP processor): resize the SHORTEST side to N (long side
  ``int(N * long / short)``, truncated, as torchvision), bicubic with antialias (PIL),
  centre crop N (offset ``int(round((H - N) / 2))``), normalise. PIL works on 8-bit
  images and clips to [0, 255]; we clamp to [0, 1] after resizing to match.
* BLIP-VQA (T2I-CompBench ``BLIPvqa_eval/data/__init__.py``): resize to a fixed
  480x480 square (aspect not kept), bicubic (PIL), normalise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def _resize(images: torch.Tensor, size: tuple[int, int], antialias: bool, clamp: bool,
            mode: str = "bicubic") -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    # antialias only matters (and is only supported the torchvision way) when downsampling;
    # F.interpolate ignores it for upsampling in the same manner as torchvision/PIL.
    out = F.interpolate(images, size=size, mode=mode, align_corners=False,
                        antialias=antialias)
    return out.clamp(0, 1) if clamp else out


def resize_longest_pad(images: torch.Tensor, size: int = 224, *, antialias: bool = True,
                       fill: float = 0.0) -> torch.Tensor:
    """HPS v2 ``ResizeMaxSize``: longest side -> ``size`` (bicubic), zero-pad to square.

    The reference skips both steps when the longest side already equals ``size``; we
    still pad such (non-square) images so that a batch has one shape (identical for the
    square images the pipeline produces).
    """
    h, w = images.shape[-2:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        images = _resize(images, (nh, nw), antialias, clamp=False)
    else:
        nh, nw = h, w
    ph, pw = size - nh, size - nw
    if ph or pw:
        images = F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
    return images


def resize_shortest_center_crop(images: torch.Tensor, size: int = 224, *,
                                antialias: bool = True, clamp: bool = True) -> torch.Tensor:
    """CLIP preprocess: shortest side -> ``size`` (bicubic, antialias), centre crop ``size``."""
    h, w = images.shape[-2:]
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    images = _resize(images, (nh, nw), antialias, clamp)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def resize_square(images: torch.Tensor, size: int, *, antialias: bool = True,
                  clamp: bool = True, mode: str = "bicubic") -> torch.Tensor:
    """Resize to ``size x size`` ignoring the aspect ratio (BLIP-VQA test transform: bicubic;
    the T2I-CompBench DPT transform ``transforms.Resize([480, 480])``: ``mode="bilinear"``)."""
    return _resize(images, (size, size), antialias, clamp, mode)


def hps_preprocess(images: torch.Tensor, size: int = 224, antialias: bool = True) -> torch.Tensor:
    return normalize(resize_longest_pad(images, size, antialias=antialias))


def clip_preprocess(images: torch.Tensor, size: int = 224, mean=OPENAI_MEAN, std=OPENAI_STD,
                    antialias: bool = True) -> torch.Tensor:
    return normalize(resize_shortest_center_crop(images, size, antialias=antialias), mean, std)
