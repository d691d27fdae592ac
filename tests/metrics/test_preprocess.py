import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from marpipe.metrics.preprocess import (OPENAI_MEAN, OPENAI_STD, normalize, resize_longest_pad,
                                        resize_shortest_center_crop, resize_square)

torch.set_num_threads(1)


def test_openai_mean_std_hand_computed():
    x = torch.ones(1, 3, 2, 2)
    y = normalize(x)
    exp = [(1 - 0.48145466) / 0.26862954, (1 - 0.4578275) / 0.26130258, (1 - 0.40821073) / 0.27577711]
    assert torch.allclose(y[0, :, 0, 0], torch.tensor(exp))
    m = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(normalize(m), torch.zeros(1, 3, 2, 2), atol=1e-7)
    assert OPENAI_STD == (0.26862954, 0.26130258, 0.27577711)


def test_hps_pads_not_crops():
    # 2x4 image, longest side already 4: no resize, one zero row on top and bottom
    x = torch.arange(24, dtype=torch.float32).view(1, 3, 2, 4) / 24
    y = resize_longest_pad(x, 4)
    assert y.shape == (1, 3, 4, 4)
    assert torch.equal(y[..., 0, :], torch.zeros(1, 3, 4)) and torch.equal(y[..., 3, :], torch.zeros(1, 3, 4))
    assert torch.equal(y[..., 1:3, :], x)
    # odd padding: left/top get pad // 2 (ResizeMaxSize)
    y = resize_longest_pad(torch.ones(1, 3, 4, 1), 4)
    assert torch.equal(y[0, 0, 0], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_hps_resize_longest_constant_and_shape():
    x = torch.full((1, 3, 6, 12), 0.7)
    y = resize_longest_pad(x, 4)           # -> 2x4 content, rows 0 and 3 padded
    assert torch.allclose(y[..., 1:3, :], torch.full((1, 3, 2, 4), 0.7), atol=1e-6)
    assert torch.equal(y[..., 0, :], torch.zeros(1, 3, 4))
    # new side = round(side * scale) (ResizeMaxSize): 224 * 100/300 = 74.67 -> 75
    assert resize_longest_pad(torch.rand(1, 3, 100, 300), 224)[0, 0, :, 0].ne(0).sum() <= 75


def test_hps_resize_is_torchvision_bicubic_antialias():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 64, generator=g)
    ref = TF.resize(x, [35, 56], InterpolationMode.BICUBIC, antialias=True)  # 56/64*40 = 35
    y = resize_longest_pad(x, 56)
    assert torch.allclose(y[..., 10:45, :], ref, atol=1e-6)   # pad_h = 21 -> 10 on top


def test_antialias_matters_when_downsampling():
    x = torch.zeros(1, 3, 64, 64)
    x[..., ::4, :] = 1                # one bright row in four: mean 0.25
    aa = resize_square(x, 16, clamp=False)
    assert torch.allclose(aa[..., 2:-2, :], torch.full_like(aa[..., 2:-2, :], 0.25), atol=2e-2)
    no = resize_square(x, 16, antialias=False, clamp=False)
    assert (no - 0.25).abs().max() > 0.1


def test_clip_centre_crop_no_pad():
    x = torch.rand(1, 3, 4, 8)
    y = resize_shortest_center_crop(x, 4)   # shortest already 4: pure centre crop
    assert torch.equal(y, x[..., :, 2:6])
    y = resize_shortest_center_crop(torch.rand(2, 3, 30, 20), 10)  # -> 15x10, crop rows 2..12
    assert y.shape == (2, 3, 10, 10)


def test_clip_resize_matches_torchvision_and_clamps():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 48, 60, generator=g)
    ref = TF.center_crop(TF.resize(x, 24, InterpolationMode.BICUBIC, antialias=True), 24).clamp(0, 1)
    assert torch.allclose(resize_shortest_center_crop(x, 24), ref, atol=1e-6)
    assert resize_shortest_center_crop(x, 24).min() >= 0   # PIL 8-bit clipping
