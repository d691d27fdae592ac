"""The paper's two base models at their real sizes with random (seeded) weights, built from the official
classes for ``marpipe bench gpu --size real`` (nothing is downloaded): NOVA from the installed ``diffnext``
(``.venv-nova``), Harmon from its remote code in ``$MARPIPE_OFFICIAL_CODE`` or ``../shared/official``
(``.venv-harmon``, einops); :func:`marpipe.bench.gpu.bench_gpu` starts those interpreters itself. The
configs are the published ones (cited where used), the tokenizers byte-level BPE stand-ins
(:func:`bpe_tokenizer`); the two changes made to the official code while it runs are declared in
:func:`import_harmon_code` and :func:`harmon_sampler_shims`. See docs/method.md.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_ENV = "MARPIPE_OFFICIAL_CODE"

# --- NOVA: BAAI/nova-d48w1024-sd512 ------------------------------------------------------------------
# transformer: baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py registers the
# architectures "d48w1024" names: video encoder vit_d16w1024 (16 blocks, width 1024, 16 heads), image
# encoder vit_d32w1024 (32 blocks), head mlp_d6w1024 (6 blocks); absolute position embeddings
# (rotary_pos_embed False). The sd512 model: 512x512, SD VAE (4 latent channels, stride 8) -> 64x64
# latent, patch 2 -> 32x32 = 1,024 tokens; Phi text encoder, 2,560-d, 256 tokens. The video encoder's
# patch is twice the image encoder's (transformer_nova.py), so its base grid is 16x16.
# 645,693,456 parameters (marpipe/models/nova.py's memory table; tests/bench/test_bench_gpu.py).
NOVA_TRANSFORMER = dict(image_dim=4, image_size=512, image_stride=8, text_token_dim=2560, text_token_len=256,
                        image_base_size=[32, 32], video_base_size=[1, 16, 16], rotary_pos_embed=False,
                        arch=("vit_d16w1024", "vit_d32w1024", "mlp_d6w1024"))
# text encoder: diffnext's PhiEncoderModel over Phi-2's config (2,560-d; 32 layers,
# 32 heads, MLP 10,240, vocab 51,200, partial rotary 0.4: microsoft/phi-2's config.json, a download, as
# tests/official/test_nova_official.py's test_real_nova_memory builds it), 2,779,683,840 parameters =
# Phi-2's published 2.78B
PHI2 = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
            num_attention_heads=32, partial_rotary_factor=0.4)
# VAE: diffnext@2cd254a:diffnext/models/autoencoders/autoencoder_kl.py AutoencoderKL at its SD defaults
# (channels 128/256/512/512, 2 layers per block, scaling 0.18215) with 4 latent channels
SD_VAE = dict(latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512)
# scheduler: diffusers' DDPMScheduler (BAAI/nova-d48w1024-sd512's model_index.json; default clip_sample=True) with Stable
# Diffusion's betas, as testbed/official/nova_tiny.py's SCHEDULER_CONFIG
NOVA_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

# --- Harmon: wusize/Harmon-1_5B ------------------------------------------------------------------------
# LLM: Qwen2.5-1.5B-Instruct (github wusize/Harmon@4eb6087:
# configs/models/qwen2_5_1_5b_kl16_mar_h.py llm_name_or_path). Sizes as marpipe/models/cost.py (28 layers,
# hidden 1536, MLP 8960, 12 query / 2 key-value heads, tied embeddings; rope theta 1e6, RMS eps 1e-6 as
# testbed/official/harmon_tiny.py's TINY_LLM); vocab 151,936: Qwen/Qwen2.5-1.5B-Instruct's config.json (a
# download; checked by the parameter count, 1,543,714,304 = the model card's 1.54B, 1.31B non-embedding).
# Everything else is transformers' Qwen2Config default (positions, dropout 0, init std 0.02).
QWEN25_1_5B = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151936, hidden_size=1536,
                   intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                   rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True,
                   use_sliding_window=False)
# MAR: github wusize/Harmon@4eb6087:configs/models/qwen2_5_1_5b_kl16_mar_h.py `mar=dict(type=mar_huge, ...)`
# (mar_huge: AMAP-ML/mar-grpo@fcb7969:src/grpo/src/harmon/mar.py, 20 + 20 blocks of width 1280); the one
# change: num_sampling_steps "25", the paper's 25-step head sampler (config.yaml's sampling), so the official
# sampler runs the steps marpipe's rollout runs (the github config's "100" is its own default)
HARMON_MAR = dict(type="mar_huge", img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16, mask_ratio_min=0.7,
                  label_drop_prob=0.1, class_num=1000, attn_dropout=0.1, proj_dropout=0.1, buffer_size=64,
                  diffloss_d=12, diffloss_w=1536, num_sampling_steps="25", diffusion_batch_mul=4,
                  grad_checkpointing=True)
HARMON_IMAGE_SIZE = 512

REMOTE_CODE = "harmon-remote-code"
BAD_LINE, BAD_TEXT = 238, "self.curtail_cache(past_key_values, inputs_embeds.shape[1])"
CORPUS = ["a photo of a cat sitting on a sofa", "a red circle on the left of a blue square",
          "an astronaut riding a horse on the moon", "three green apples on a wooden table",
          "Generate an image: a dog on the left and a cat on the right.", "Generate an image.",
          "a bowl of fruit, oil painting, highly detailed", "two people walking in the rain at night"]


# ============================================================ where the official code is
def official_root(given: str | Path | None = None) -> Path | None:
    """The folder holding ``NOVA/`` and ``harmon-remote-code/``: ``given``, ``$MARPIPE_OFFICIAL_CODE``,
    or ``../shared/official`` beside the repository; None when none exists."""
    for cand in (given, os.environ.get(OFFICIAL_ENV), REPO.parent / "shared" / "official"):
        if cand and Path(cand).is_dir():
            return Path(cand).resolve()
    return None


def import_diffnext() -> None:
    """Import the installed ``diffnext`` (``.venv-nova``: ``make official-venvs`` installs it at the
    pinned commit); transformers 4 is required."""
    import transformers
    if int(transformers.__version__.split(".")[0]) >= 5:
        raise RuntimeError(f"diffnext's Phi encoder needs transformers 4 (this interpreter has "
                           f"{transformers.__version__}): run in .venv-nova")
    try:
        from diffnext.pipelines import NOVAPipeline  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"diffnext is not installed in this interpreter ({exc}): run in .venv-nova, "
                          "where make official-venvs installs it") from exc


@functools.cache
def import_harmon_code(root: Path | None = None) -> types.SimpleNamespace:
    """Harmon's remote-code files (in ``root``, default :func:`official_root`) imported as a package from
    a temporary copy; returns its modules ``modeling_harmon``, ``configuration_harmon``.

    ``modeling_harmon.py`` line 238 is indented four spaces too deep as shipped (IndentationError): the
    copy has those four spaces removed (the indentation of the same line in github wusize/Harmon
    ``src/models/harmon.py``). Nothing is put on ``sys.path``.
    """
    root = official_root(root)
    src = None if root is None else root / REMOTE_CODE
    if src is None or not (src / "modeling_harmon.py").is_file():
        raise FileNotFoundError(f"Harmon's remote code not found (set ${OFFICIAL_ENV} to a folder with {REMOTE_CODE}/)")
    tmp = Path(tempfile.mkdtemp(prefix="marpipe-harmon-"))
    atexit.register(shutil.rmtree, tmp, True)
    name = f"marpipe_harmon_remote_{tmp.name.replace('-', '_')}"
    pkg_dir = tmp / name
    pkg_dir.mkdir()
    for f in src.glob("*.py"):
        shutil.copy(f, pkg_dir / f.name)
    (pkg_dir / "__init__.py").write_text("")
    path = pkg_dir / "modeling_harmon.py"
    lines = path.read_text().split("\n")
    try:
        compile("\n".join(lines), str(path), "exec")
    except IndentationError:
        line = lines[BAD_LINE - 1]
        if line.strip() != BAD_TEXT or not line.startswith(" " * 16):
            raise RuntimeError(f"{src}/modeling_harmon.py line {BAD_LINE} is not the known mis-indented line") from None
        lines[BAD_LINE - 1] = line[4:]
        path.write_text("\n".join(lines))
    spec = importlib.util.spec_from_file_location(name, pkg_dir / "__init__.py",
                                                  submodule_search_locations=[str(pkg_dir)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    return types.SimpleNamespace(**{m: importlib.import_module(f"{name}.{m}")
                                    for m in ("modeling_harmon", "configuration_harmon")})


# ============================================================ building
@contextlib.contextmanager
def building(device, dtype: torch.dtype, seed: int):
    """Modules constructed inside are created on ``device`` in ``dtype`` (seeded)."""
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


@torch.no_grad()
def perturb_zero_init(module: torch.nn.Module, seed: int, std: float = 0.02) -> int:
    """Give every all-zero parameter of ``module`` normal(0, ``std``) values; returns how many.

    The official heads zero-initialise their output and modulation layers, which makes a fresh head
    ignore its condition and gives the AR part no gradient; a trained model has no such zeros.
    """
    n = 0
    for i, p in enumerate(module.parameters()):
        if p.numel() and p.device.type != "meta" and not p.any():
            g = torch.Generator(p.device).manual_seed(seed + i)
            p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32) * std)
            n += 1
    return n


def bpe_tokenizer(special: tuple[str, ...], vocab_size: int = 1024):
    """A byte-level BPE trained on :data:`CORPUS` (stand-in for a download), ``special`` tokens added.

    NOVA pads every prompt to its 256 text slots, so its cost does not depend on the tokenizer; Harmon's
    prompt length does, a little (this gives about one token per word, as Qwen2.5's does for plain English).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tok


def nova_components(device, dtype: torch.dtype, seed: int = 0, transformer: dict | None = None,
                    phi: dict | None = None, vae: dict | None = None) -> dict:
    """NOVA's five pipeline components, official classes, real configs (or the given ones), random weights."""
    from diffnext.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffnext.models.text_encoders.phi import PhiEncoderModel
    from diffnext.models.transformers.transformer_nova import NOVATransformer3DModel
    from diffusers import DDPMScheduler
    from transformers import CodeGenTokenizerFast, PhiConfig
    with building(device, dtype, seed):
        parts = dict(transformer=NOVATransformer3DModel(**(transformer or NOVA_TRANSFORMER)),
                     text_encoder=PhiEncoderModel(PhiConfig(**(phi or PHI2))),
                     vae=AutoencoderKL(**(vae or SD_VAE)))
    if torch.device(device).type != "meta":
        perturb_zero_init(parts["transformer"], seed + 1)
    eot = "<|endoftext|>"
    vocab = (phi or PHI2)["vocab_size"]
    parts["tokenizer"] = CodeGenTokenizerFast(tokenizer_object=bpe_tokenizer((eot,), min(1024, vocab)),
                                              bos_token=eot, eos_token=eot, unk_token=eot, pad_token=eot)
    parts["scheduler"] = DDPMScheduler(**NOVA_SCHEDULER)
    for name in ("transformer", "text_encoder", "vae"):
        parts[name].eval()
    return parts


def harmon_model(code: types.SimpleNamespace, device, dtype: torch.dtype, seed: int = 0,
                 llm: dict | None = None, mar: dict | None = None):
    """The official ``HarmonModel`` at the real config (or the given one), random weights."""
    cfg = code.configuration_harmon.HarmonConfig(llm=dict(llm or QWEN25_1_5B), mar=dict(mar or HARMON_MAR))
    with building(device, dtype, seed):
        model = code.modeling_harmon.HarmonModel(cfg)
    if torch.device(device).type != "meta":
        perturb_zero_init(model.mar, seed + 1)
    return model.eval()


def harmon_tokenizer(vocab: int):
    """Qwen2-style stand-in: eos ``<|im_end|>``, pad ``<|endoftext|>``, right padding."""
    from transformers import PreTrainedTokenizerFast
    special = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer(special, min(1024, vocab)),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.padding_side = "right"
    return tok


def parameter_counts(family: str, root: Path | None = None) -> dict[str, int]:
    """Parameters of each part at the real config, counted on the meta device (no memory)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    if family == "nova":
        import_diffnext()
        parts = nova_components("meta", torch.float32)
        return {k: count(parts[k]) for k in ("transformer", "text_encoder", "vae")}
    h = harmon_model(import_harmon_code(root), "meta", torch.float32)
    out = {"llm": count(h.llm), "mar": count(h.mar), "mar.diffloss": count(h.mar.diffloss), "vae": count(h.vae),
           "proj": count(h.proj_in) + count(h.proj_out)}
    return out


# ============================================================ the subjects of the bench
class RealSubject:
    """A real-size model for the bench: ``fresh()`` gives a policy (the trained part copied from a
    pristine one, the frozen parts shared), ``official(n, prompt, ar_steps)`` runs the official sampler."""

    def __init__(self, name: str, family: str, pristine, sampler, sampler_name: str, notes: list[str]):
        self.name, self.family, self.pristine = name, family, pristine
        self._sampler, self.sampler_name, self.notes = sampler, sampler_name, notes

    def fresh(self):
        return copy.deepcopy(self.pristine)        # FrozenPartsMixin shares Phi/LLM, VAE, tokenizer

    def official(self, prompt: str, n: int, seed: int, ar_steps: int | None = None) -> torch.Tensor:
        return self._sampler(prompt, n, seed, ar_steps or self.pristine.sampling.ar_steps)


def nova_subject(device, dtype, root: Path | None = None, seed: int = 0, sampling: dict | None = None,
                 gradient_checkpointing: bool = True, **configs) -> RealSubject:
    """NOVA at its real size (``configs``: smaller ``transformer``/``phi``/``vae`` configs, for tests)."""
    import_diffnext()
    from diffnext.pipelines import NOVAPipeline

    from marpipe.models.nova import NOVA_SAMPLING, NovaMAR
    parts = nova_components(device, dtype, seed, **configs)
    model = NovaMAR(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"],
                    sampling=sampling or NOVA_SAMPLING, gradient_checkpointing=gradient_checkpointing,
                    source="random weights, real configs").to(device=device, dtype=dtype)
    pipe = NOVAPipeline(**parts)
    spec = model.sampling

    def sample(prompt, n, seed, ar_steps):
        g = torch.Generator(device).manual_seed(seed)
        out = pipe([prompt], num_images_per_prompt=n, num_inference_steps=ar_steps,
                   num_diffusion_steps=spec.diffusion_steps, guidance_scale=spec.cfg_scale, generator=g,
                   output_type="pt", disable_progress_bar=True)
        pipe.transformer.mask_embed.generator = None     # the run's generator; the policy copies need none
        return out.images
    return RealSubject("nova", "nova", model, sample, "diffnext NOVAPipeline.__call__ (guidance constant)",
                       ["official classes, real configs, random weights",
                        "tokenizer: byte-level BPE stand-in (CodeGenTokenizerFast); prompts padded to 256 slots",
                        f"gradient checkpointing {'on' if gradient_checkpointing else 'off'}"])


@contextlib.contextmanager
def harmon_sampler_shims(harmon_cls):
    """Shims for ``HarmonModel.sample``, only while it runs: it uses the transformers-4 cache API, so under
    transformers >= 4.56 it gets ``DynamicCache()`` for ``from_legacy_cache()`` and a ``curtail_cache`` with
    the official body that unpacks ``(keys, values, ...)``; on a machine without CUDA ``Tensor.cuda``
    (``DiffLoss.sample``) is the identity."""
    from transformers.cache_utils import DynamicCache
    saved = []
    if not torch.cuda.is_available():
        saved.append((torch.Tensor, "cuda", torch.Tensor.cuda))
        torch.Tensor.cuda = lambda self, *a, **k: self
    if not hasattr(DynamicCache, "from_legacy_cache"):
        saved.append((DynamicCache, "from_legacy_cache", None))
        DynamicCache.from_legacy_cache = classmethod(lambda cls, past_key_values=None: cls())

        def curtail_cache(past_key_values, cur_len):      # the official body, (keys, values, ...) unpacked
            for layer in past_key_values:
                keys, values = layer[:2]
                keys.data = keys.data[:, :, :cur_len]
                values.data = values.data[:, :, :cur_len]
        saved.append((harmon_cls, "curtail_cache", harmon_cls.__dict__["curtail_cache"]))
        harmon_cls.curtail_cache = staticmethod(curtail_cache)
    try:
        yield
    finally:
        for owner, attr, value in reversed(saved):
            if value is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, value)


def harmon_subject(device, dtype, root: Path | None = None, seed: int = 0, sampling: dict | None = None,
                   gradient_checkpointing: bool = True, image_size: int = HARMON_IMAGE_SIZE, **configs) -> RealSubject:
    """Harmon at its real size (``configs``: smaller ``llm``/``mar`` configs, for tests)."""
    import numpy as np

    from marpipe.models.harmon import CHAT_TEMPLATE, GENERATION_TEMPLATE, HARMON_SAMPLING, NEGATIVE_PROMPT, HarmonMAR
    code = import_harmon_code(root)
    sampling = dict(sampling or HARMON_SAMPLING)
    mar = {**(configs.pop("mar", None) or HARMON_MAR), "num_sampling_steps": str(sampling["diffusion_steps"])}
    harmon = harmon_model(code, device, dtype, seed, mar=mar, **configs)
    tokenizer = harmon_tokenizer(harmon.llm.config.vocab_size)
    model = HarmonMAR(harmon, tokenizer, sampling=sampling, image_size=image_size,
                      gradient_checkpointing=gradient_checkpointing,
                      source="random weights, real configs").to(device=device, dtype=dtype)
    spec = model.sampling

    def sample(prompt, n, seed, ar_steps):
        # as github wusize/Harmon scripts/batch_text2image.py: [cond x n; uncond x n], padded, constant CFG
        texts = [CHAT_TEMPLATE.format(input=GENERATION_TEMPLATE.format(text=prompt))] * n
        texts += [CHAT_TEMPLATE.format(input=NEGATIVE_PROMPT)] * n
        batch = tokenizer(texts, add_special_tokens=True, return_tensors="pt", padding=True).to(device)
        torch.manual_seed(seed)
        np.random.seed(seed)
        with harmon_sampler_shims(type(harmon)):
            return harmon.sample(**batch, num_iter=ar_steps, cfg=spec.cfg_scale, cfg_schedule="constant",
                                 temperature=1.0, progress=False, image_shape=model.grid)
    return RealSubject("harmon", "harmon", model, sample, "HarmonModel.sample (remote code, constant CFG)",
                       ["official classes, real configs, random weights",
                        "tokenizer: byte-level BPE stand-in (Qwen2 special tokens)",
                        f"official head sampler: {spec.diffusion_steps} steps (mar num_sampling_steps)",
                        f"gradient checkpointing {'on' if gradient_checkpointing else 'off'} (MAR; the LLM: none)"])
