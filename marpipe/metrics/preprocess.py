"""Metric image preprocessing: ``[B,3,H,W]`` float in [0,1] in, the model input out.

Each metric's input is prepared as its official pipeline prepares it: PIL on the 8-bit image
(converted as :func:`marpipe.io.files.to_uint8` does, the rule of the pipeline's PNGs) for all but
HPS v2.1, which resizes the float tensor. Which official transform each function reproduces, with
citations: ``docs/method.md``, "Metric preprocessing"."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..io.files import to_uint8

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def normalize(images: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def pil_resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Each image as 8-bit PIL, ``Image.resize`` to ``size = (h, w)``, back as uint8 / 255
    (ToTensor), stacked on the input's device. PIL itself, not a float imitation: PIL's bicubic
    (a = -0.5) rounds and clips to 0..255 after each of its two separable passes, which torch's
    antialiased bicubic misses by ~1 grey level on smooth images and up to ~24 on noise."""
    h, w = size
    out = [np.asarray(Image.fromarray(a).resize((w, h), PIL_FILTERS[mode])) for a in to_uint8(images)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(images.device)


def shortest_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` / transformers ``get_resize_output_image_size`` with
    ``default_to_square=False``: shortest side -> ``size``, long side ``int(size * long / short)``."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def center_crop_offset(side: int, crop: int, rounding: str) -> int:
    """``"round"``: torchvision ``center_crop``, ``int(round((side - crop) / 2.0))`` (ties to
    even); ``"floor"``: transformers ``center_crop``, ``(side - crop) // 2``."""
    if rounding == "round":
        return int(round((side - crop) / 2.0))
    if rounding == "floor":
        return (side - crop) // 2
    raise ValueError(f"unknown crop rounding {rounding!r}")


def resize_shortest_center_crop(images: torch.Tensor, size: int = 224, crop: int | None = None,
                                rounding: str = "round") -> torch.Tensor:
    """Shortest side -> ``size`` (PIL bicubic on 8 bits), centre crop ``crop`` (default ``size``)
    with the offsets of :func:`center_crop_offset`. Values are ``k / 255``."""
    crop = crop or size
    nh, nw = shortest_side_size(*images.shape[-2:], size)
    images = pil_resize(images, (nh, nw))
    top, left = center_crop_offset(nh, crop, rounding), center_crop_offset(nw, crop, rounding)
    return images[..., top:top + crop, left:left + crop]


def resize_square(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """``size x size`` ignoring the aspect ratio, PIL on 8 bits (BLIP-VQA: bicubic; the
    T2I-CompBench DPT transform ``transforms.Resize([480, 480])``: ``mode="bilinear"``)."""
    return pil_resize(images, (size, size), mode)


def resize_longest_pad(images: torch.Tensor, size: int = 224, *, antialias: bool = True,
                       fill: float = 0.0) -> torch.Tensor:
    """HPS v2 ``ResizeMaxSize`` on the float tensor: longest side -> ``size`` (bicubic, no
    clamping), zero-pad to square.

    The reference skips both steps when the longest side already equals ``size``; we
    still pad such (non-square) images so that a batch has one shape (identical for the
    square images the pipeline produces).
    """
    h, w = images.shape[-2:]
    scale = size / float(max(h, w))
    nh, nw = round(h * scale), round(w * scale)
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False,
                               antialias=antialias)
    ph, pw = size - nh, size - nw
    if ph or pw:
        images = F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
    return images


def hps_preprocess(images: torch.Tensor, size: int = 224, antialias: bool = True) -> torch.Tensor:
    """HPS v2.1 (``ResizeMaxSize``): ToTensor, longest side to ``size`` bicubic on the float tensor
    (``antialias``: torchvision >= 0.17's default), zero-pad to square, normalise; no crop, no
    8-bit rounding after the resize."""
    return normalize(resize_longest_pad(images, size, antialias=antialias))


def clip_preprocess(images: torch.Tensor, size: int = 224, mean=OPENAI_MEAN,
                    std=OPENAI_STD) -> torch.Tensor:
    """OpenAI ``clip.load`` preprocess (Aesthetic, CLIPScore, ImageReward): PIL bicubic
    shortest side, torchvision ``CenterCrop`` (round offsets), normalise."""
    return normalize(resize_shortest_center_crop(images, size), mean, std)


def hf_clip_preprocess(images: torch.Tensor, size: int = 224, crop: int | None = None,
                       mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """transformers ``CLIPImageProcessor`` (PIL implementation; PickScore, GIT-VQA): PIL
    bicubic shortest edge ``size``, ``center_crop`` ``crop`` (floor offsets), normalise."""
    return normalize(resize_shortest_center_crop(images, size, crop, rounding="floor"), mean, std)
