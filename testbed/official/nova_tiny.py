"""The OFFICIAL NOVA pipeline (package ``diffnext``, github baaivision/NOVA @2cd254a) at tiny size
with random weights, saved in the hub layout that ``NOVAPipeline.from_pretrained`` and marpipe's loader
read: every module is the official class with a tiny config (:func:`tiny_components`). See
``docs/development.md``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

TINY_ARCH = ("marpipe_tiny_vit_d2w32_video", "marpipe_tiny_vit_d2w32_image", "marpipe_tiny_mlp_d2w32")
WIDTH, HEADS = 32, 2
TEXT_DIM, TEXT_LEN = 32, 8
SCHEDULER_CONFIG = {               # what is not here is diffusers' default (clip_sample=True!)
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
}
MODEL_INDEX = {
    "_class_name": "NOVAPipeline",
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["diffnext.models.text_encoders.phi", "PhiEncoderModel"],
    "tokenizer": ["transformers", "CodeGenTokenizerFast"],
    "transformer": ["diffnext.models.transformers.transformer_nova", "NOVATransformer3DModel"],
    "vae": ["diffnext.models.autoencoders.autoencoder_kl", "AutoencoderKL"],
}
SMALL_SAMPLING = {"ar_steps": 4, "diffusion_steps": 5, "cfg_scale": 5.0}
CORPUS = [
    "a red circle on the left", "two blue squares", "a photo of a cat sitting on a sofa",
    "a shiba inu wearing a beret and black turtleneck", "an astronaut riding a horse on the moon",
    "a bowl of fruit, oil painting", "three green triangles above a yellow star",
]


def import_diffnext(official: Path) -> None:
    """Import diffnext (installed in ``.venv-nova``; else from ``<official>/NOVA``, put on the test
    process's ``sys.path``) and register the tiny architectures (raises whatever the import raises:
    the caller turns it into a skip)."""
    try:
        import diffnext  # noqa: F401
    except ImportError:
        path = str(Path(official) / "NOVA")
        if path not in sys.path:
            sys.path.insert(0, path)
    from diffnext.models.transformers import transformer_nova as tn
    from diffnext.pipelines import NOVAPipeline  # noqa: F401  (diffusers + transformers import)
    tn.VIDEO_ENCODERS.register(TINY_ARCH[0], func=tn.video_encoder, depth=2, embed_dim=WIDTH, num_heads=HEADS)
    tn.IMAGE_ENCODERS.register(TINY_ARCH[1], func=tn.image_encoder, depth=2, embed_dim=WIDTH, num_heads=HEADS)
    tn.IMAGE_DECODERS.register(TINY_ARCH[2], func=tn.image_decoder, depth=2, embed_dim=WIDTH)


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on :data:`CORPUS`, as Phi-2's tokenizer class."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CodeGenTokenizerFast
    eot = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[eot], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return CodeGenTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot, pad_token=eot)


def tiny_components(image_size: int = 64, seed: int = 0) -> dict:
    """The five pipeline components, official classes, tiny config, random weights:

    * ``transformer/``: ``NOVATransformer3DModel`` (absolute position embeddings, as
      ``nova-d48w1024-sd512``) with three tiny architectures registered in diffnext's own registries
      (``VIDEO_ENCODERS`` / ``IMAGE_ENCODERS`` / ``IMAGE_DECODERS``, through the same factory functions as
      ``vit_d16w1024`` / ``vit_d32w1024`` / ``mlp_d6w1024``): width 32, 2 layers each; image 64 px,
      stride 8, patch 2 -> 4 x 4 = 16 tokens (``image_size=512`` gives the real 32 x 32 = 1024);
    * ``text_encoder/``: diffnext's ``PhiEncoderModel`` over a tiny transformers ``PhiConfig``;
    * ``tokenizer/``: a byte-level BPE trained here on a few sentences (no hub), as a
      ``CodeGenTokenizerFast`` (Phi-2's tokenizer class), padding with ``<|endoftext|>``;
    * ``vae/``: diffnext's ``AutoencoderKL`` (4 latent channels, 4 blocks -> stride 8, 32 channels);
    * ``scheduler/``: diffusers' ``DDPMScheduler``, the class NOVA's ``model_index.json`` names, with
      Stable Diffusion's betas (``scaled_linear`` 0.00085..0.012, 1000 steps) and everything else left
      at diffusers' defaults, as a config that does not set them leaves it: ``clip_sample=True``
      (range 1), ``leading`` spacing, ``steps_offset=0``, ``epsilon``, ``fixed_small``.

    Random init: diffnext's modules initialise nothing to zero except what PyTorch/transformers do; any
    all-zero tensor of the transformer (an AdaLN-zero style output layer would be one) is perturbed, so
    the head's output depends on its inputs.
    """
    from diffnext.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffnext.models.text_encoders.phi import PhiEncoderModel
    from diffnext.models.transformers.transformer_nova import NOVATransformer3DModel
    from diffusers import DDPMScheduler
    from transformers import PhiConfig
    torch.manual_seed(seed)
    stride, patch = 8, 2
    grid = image_size // stride // patch
    transformer = NOVATransformer3DModel(
        image_dim=4, image_size=image_size, image_stride=stride, text_token_dim=TEXT_DIM, text_token_len=TEXT_LEN,
        image_base_size=[grid, grid], video_base_size=[1, grid // 2, grid // 2], arch=TINY_ARCH)
    with torch.no_grad():
        for p in transformer.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    tokenizer = tiny_tokenizer()
    phi = PhiEncoderModel(PhiConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM, num_hidden_layers=2,
        num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                        sample_size=image_size, scaling_factor=0.18215)
    scheduler = DDPMScheduler.from_config({k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")})
    return dict(transformer=transformer.eval(), text_encoder=phi.eval(), tokenizer=tokenizer, vae=vae.eval(),
                scheduler=scheduler)


def official_pipeline(parts: dict):
    """``NOVAPipeline`` over in-memory components (as ``from_pretrained`` wires them)."""
    from diffnext.pipelines import NOVAPipeline
    return NOVAPipeline(**parts)


def save_tiny_nova(folder: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """Write the tiny pipeline in the hub layout + marpipe's ``MANIFEST.sha256``; returns the folder."""
    from marpipe.models.download import write_manifest
    folder = Path(folder)
    parts = tiny_components(image_size, seed)
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        parts[name].save_pretrained(str(folder / name))
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    write_manifest(folder)
    return folder


def load_official(folder: str | Path):
    """The official pipeline loaded from ``folder`` (float32, CPU), as NOVA's README loads it."""
    from diffnext.pipelines import NOVAPipeline
    return NOVAPipeline.from_pretrained(str(folder), torch_dtype=torch.float32, trust_remote_code=True)


def load_adapter(folder: str | Path, sampling: dict | None = None):
    """marpipe's adapter over ``folder``, loaded exactly as the pipeline loads a base model."""
    from marpipe.models.registry import load_model
    return load_model(f"nova:{folder}", device="cpu", dtype=torch.float32, sampling=sampling or SMALL_SAMPLING)
