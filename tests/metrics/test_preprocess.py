"""Metric preprocessing against the official pipelines, rebuilt here from PIL, torchvision and
transformers themselves (their own code on a PIL image, not a re-implementation)."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from marpipe.metrics.preprocess import (
    OPENAI_MEAN,
    OPENAI_STD,
    center_crop_offset,
    clip_preprocess,
    hf_clip_preprocess,
    hps_preprocess,
    normalize,
    resize_longest_pad,
    resize_shortest_center_crop,
    resize_square,
)

torch.set_num_threads(1)

BICUBIC = InterpolationMode.BICUBIC
#: (h, w); 333 x 517 -> 224 x 347 and 224 x 227 have odd crop margins (123, 3): torchvision's
#: round-half-even and transformers' floor offsets differ there (62 vs 61, 2 vs 1)
SIZES = [(224, 224), (480, 640), (333, 517), (1000, 1000), (512, 512), (32, 32), (224, 227)]
GREY = (1000, 1000)


def image(h, w, seed=0):
    """uint8-exact (k / 255) random image; the 1000 x 1000 one grey (all channels equal)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (1, 1 if (h, w) == GREY else 3, h, w), generator=g).float() / 255
    return x.expand(1, 3, h, w).contiguous()


def pil(x):
    """The 8-bit PIL image of a [1,3,H,W] image: round(x * 255), ties to even (np.rint)."""
    return Image.fromarray(np.rint(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def openai_clip_ref(n=224):
    """OpenAI ``clip.load`` preprocess (Aesthetic, CLIPScore, ImageReward)."""
    return T.Compose([T.Resize(n, interpolation=BICUBIC), T.CenterCrop(n), T.ToTensor(),
                      T.Normalize(OPENAI_MEAN, OPENAI_STD)])


def hf_clip_ref(size=224, crop=224):
    """The laion CLIP processor PickScore loads. transformers 5 names its PIL implementation
    ``CLIPImageProcessorPil`` (``CLIPImageProcessor`` is now the torchvision one); the
    PickScore code ran the PIL one (transformers 4)."""
    from transformers.models.clip import CLIPImageProcessorPil
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop},
                                 do_resize=True, do_center_crop=True, resample=3,
                                 image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    return lambda im: proc(images=im, return_tensors="pt")["pixel_values"][0]


def blip_ref(n=480):
    return T.Compose([T.Resize((n, n), interpolation=BICUBIC), T.ToTensor(),
                      T.Normalize(OPENAI_MEAN, OPENAI_STD)])


def dpt_ref(n=480):
    return T.Compose([T.Resize([n, n]), T.ToTensor(), T.Normalize(mean=0.5, std=0.5)])


def assert_close(ours, ref):
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert (ours - ref).abs().max() <= 2e-6     # float normalisation noise only


# --- PIL pipelines ---------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", SIZES)
def test_openai_clip_preprocess_equals_torchvision_on_pil(h, w):
    x = image(h, w)
    assert_close(clip_preprocess(x, 224), openai_clip_ref()(pil(x))[None])


@pytest.mark.parametrize("h,w", SIZES)
def test_hf_clip_preprocess_equals_transformers_processor(h, w):
    x = image(h, w, seed=1)
    assert_close(hf_clip_preprocess(x, 224, 224), hf_clip_ref()(pil(x))[None])


@pytest.mark.parametrize("h,w", SIZES)
def test_blip_resize_equals_torchvision_on_pil(h, w):
    x = image(h, w, seed=2)
    assert_close(normalize(resize_square(x, 480)), blip_ref()(pil(x))[None])


@pytest.mark.parametrize("h,w", [(480, 640), (32, 32)])
def test_dpt_bilinear_resize_equals_torchvision_on_pil(h, w):
    x = image(h, w, seed=3)
    assert_close(normalize(resize_square(x, 480, mode="bilinear"), (0.5,) * 3, (0.5,) * 3),
                 dpt_ref()(pil(x))[None])


def test_hf_crop_size_smaller_than_resize():
    x = image(333, 517, seed=4)
    assert_close(hf_clip_preprocess(x, 240, 224), hf_clip_ref(240, 224)(pil(x))[None])


def test_grey_image_stays_grey():
    x = image(*GREY)
    y = resize_shortest_center_crop(x, 224)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


def test_pil_paths_go_image_by_image_and_the_hps_batch_equals_its_singles():
    """The PIL paths resize ONE image at a time, as the official pipelines do (PIL has no batch), so
    a batch equals its singles exactly by construction (the normalisation is elementwise): checked
    here is that image i stays at position i. HPS's resize runs on the whole float batch
    (``F.interpolate``): equal to the singles within float32 rounding of the values' scale, a
    tolerance far below the difference between two images."""
    x = torch.cat([image(333, 517, seed=s) for s in range(3)])
    for f in (clip_preprocess, hf_clip_preprocess, lambda t: resize_square(t, 480)):
        y = f(x)
        assert torch.equal(y, torch.cat([f(x[i:i + 1]) for i in range(3)]))
        assert torch.equal(f(x.flip(0)), y.flip(0)) and not torch.equal(y[0], y[1])
    y = hps_preprocess(x, 224)
    singles = torch.cat([hps_preprocess(x[i:i + 1], 224) for i in range(3)])
    tol = 1e-6 * float(y.abs().max())
    assert float((y - singles).abs().max()) <= tol
    assert float((y[0] - y[1]).abs().max()) > 1e4 * tol


# --- 8-bit conversion ------------------------------------------------------------------------

def test_float_images_are_rounded_to_8_bits_ties_to_even():
    """Values whose float32 ``x * 255`` is exactly ``k + 0.5`` go to the even neighbour
    (``torch.round``, ``np.rint``, as the saved PNGs); a same-size resize is PIL's copy."""
    cand = np.float32((np.arange(255) + 0.5) / 255)
    ties = cand[cand * np.float32(255) == np.arange(255) + 0.5]
    assert len(ties) > 50
    x = torch.from_numpy(np.resize(ties, 3 * 8 * 8)).view(1, 3, 8, 8)
    got = resize_square(x, 8) * 255
    k = np.floor(x.numpy() * np.float32(255))
    assert torch.equal(got.round(), torch.from_numpy(k + k % 2))        # ties to even
    assert (k % 2 == 1).any()                                         # ... half-up would differ


def test_non_8_bit_image_is_quantised_like_the_reference():
    x = torch.rand(1, 3, 333, 517, generator=torch.Generator().manual_seed(5))
    assert_close(clip_preprocess(x, 224), openai_clip_ref()(pil(x))[None])
    assert_close(hf_clip_preprocess(x, 224), hf_clip_ref()(pil(x))[None])


# --- crop offsets ----------------------------------------------------------------------------

def test_crop_offsets_are_the_libraries_own():
    """torchvision ``center_crop`` rounds ``(side - crop) / 2`` (Python round, ties to even),
    transformers ``center_crop`` floors it."""
    from transformers.image_transforms import center_crop as hf_center_crop
    for side in range(224, 240):
        ramp = torch.arange(side, dtype=torch.float32).view(1, 1, side)
        tv_left = int(TF.center_crop(ramp, [1, 224])[0, 0, 0])
        hf_left = int(hf_center_crop(ramp.numpy(), (1, 224), input_data_format="channels_first")[0, 0, 0])
        assert center_crop_offset(side, 224, "round") == tv_left
        assert center_crop_offset(side, 224, "floor") == hf_left
    assert (center_crop_offset(227, 224, "round"), center_crop_offset(227, 224, "floor")) == (2, 1)


def test_odd_margin_crops_one_column_apart():
    x = image(224, 227, seed=6)
    tv, hf = resize_shortest_center_crop(x, 224), resize_shortest_center_crop(x, 224, rounding="floor")
    assert torch.equal(tv, x[..., 2:226]) and torch.equal(hf, x[..., 1:225])


# --- HPS: tensor path (ResizeMaxSize on the float tensor) -----------------------------------

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


def test_hps_resize_is_torchvision_bicubic_antialias_on_the_tensor():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 64, generator=g)
    ref = TF.resize(x, [35, 56], InterpolationMode.BICUBIC, antialias=True)  # 56/64*40 = 35
    y = resize_longest_pad(x, 56)
    assert torch.allclose(y[..., 10:45, :], ref, atol=1e-6)   # pad_h = 21 -> 10 on top
    assert not torch.equal(y, y.clamp(0, 1))                  # float tensor: no 8-bit clipping
