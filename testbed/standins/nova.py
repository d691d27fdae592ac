"""Stand-ins for NOVA's official modules (package ``diffnext``, github baaivision/NOVA). NOT THE REAL
NOVA: tiny modules with the attribute names, state-dict keys and call signatures of the ``diffnext``
classes that :class:`marpipe.models.nova.NovaMAR` uses (:func:`build_nova_standin` lists them), plus the
``nova-standin`` spec and the stand-in folder (:func:`save_nova_standin`). See docs/development.md.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from marpipe.models.registry import Built

ARCHITECTURE = "NovaStandinPipeline"        # model_index.json's _class_name in a stand-in folder
NOT_REAL = "NOT the real NOVA"


@dataclass
class NovaStandinConfig:
    """Sizes of the stand-in (real NOVA d48w1024-sd512: image 512, stride 8, latent 4 ch,
    patch 2 -> 32x32 tokens, width 1024, video encoder 16 + image encoder 32 layers,
    head 6 x 1024, text 2560-d x 256 tokens)."""
    image_size: int = 64          # latent 8x8, patch 2 -> 4x4 = 16 tokens; video tokens 2x2
    image_stride: int = 8
    image_dim: int = 4
    width: int = 32
    heads: int = 2
    video_depth: int = 2
    image_depth: int = 2
    head_depth: int = 2
    head_width: int = 32
    text_token_dim: int = 24
    text_token_len: int = 8
    vocab: int = 512
    scaling_factor: float = 0.18215
    train_steps: int = 1000
    sampling: dict = field(default_factory=lambda: {"ar_steps": 4, "diffusion_steps": 5, "cfg_scale": 5.0})

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- embeddings
class PatchEmbed(nn.Module):
    """Stands in for ``diffnext.models.embeddings.PatchEmbed`` (``proj`` conv, patchify layout)."""

    def __init__(self, image_dim, embed_dim, patch_size):
        super().__init__()
        self.image_dim, self.patch_size = image_dim, patch_size
        self.height = self.width = None
        self.proj = nn.Conv2d(image_dim, embed_dim, patch_size, patch_size)

    @property
    def hw(self):
        return self.height, self.width

    def patchify(self, x):
        p, c = self.patch_size, self.image_dim
        b, _, hh, ww = x.reshape(-1, c, self.height * p, self.width * p).shape
        x = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (hh // p) * (ww // p), p * p * c).contiguous()

    def unpatchify(self, x):
        p, c, h, w = self.patch_size, self.image_dim, self.height, self.width
        x = x.reshape(-1, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, h * p, w * p).contiguous()

    def forward(self, x):
        if x.dim() == 4:
            self.height, self.width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            return self.proj(x).flatten(2).transpose(1, 2)
        return x


def _sincos_2d(h, w, dim):
    q = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float32) / q))
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    ax, ay = gx.reshape(-1, 1) * freq, gy.reshape(-1, 1) * freq
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=-1)


class PosEmbed(nn.Module):
    """Stands in for ``diffnext`` ``PosEmbed``: fixed 2-D sin-cos added in place (no parameters)."""

    def __init__(self, dim, base_size):
        super().__init__()
        self.dim, self.base = dim, tuple(base_size)

    def forward(self, x):
        return x.add_(_sincos_2d(*self.base, self.dim).to(x.device, x.dtype))


class VideoPosEmbed(PosEmbed):
    """Stands in for ``diffnext`` ``VideoPosEmbed``: ``time_proj`` MLP + ``norm`` over a sin-cos of t."""

    def __init__(self, dim, base_size):
        super().__init__(dim, base_size[1:])
        self.norm = nn.LayerNorm(dim)
        self.time_proj = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))

    def get_time_embed(self, t):
        freq = 1.0 / (10000 ** (torch.arange(128, dtype=torch.float32) / 128))
        arg = torch.arange(t, dtype=torch.float32).view(-1, 1, 1) * freq
        w = self.time_proj[0].weight
        return self.norm(self.time_proj(torch.cat([arg.sin(), arg.cos()], -1).to(w.device, w.dtype)))

    def forward(self, x):
        x = x.add_(self.get_time_embed(x.size(-3))) if x.dim() == 4 else x
        return super().forward(x)


class MaskEmbed(nn.Module):
    """Stands in for ``diffnext`` ``MaskEmbed`` (``bos_token``, ``mask_token`` ``[1, D]``)."""

    def __init__(self, dim):
        super().__init__()
        self.bos_token = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, dim) * 0.02)


class TextEmbed(nn.Module):
    """Stands in for ``diffnext`` ``TextEmbed``: prompts padded with a learned ``weight`` buffer
    (not zeros) to ``num_tokens``, then ``norm(proj(.))``; ``encoders = [tokenizer, text_encoder]``."""

    def __init__(self, token_dim, embed_dim, num_tokens, dropout=0.1):
        super().__init__()
        self.token_dim, self.num_tokens, self.dropout, self.encoders = token_dim, num_tokens, dropout, []
        self.proj, self.norm = nn.Linear(token_dim, embed_dim), nn.LayerNorm(embed_dim)
        self.register_buffer("weight", torch.randn(max(512, num_tokens), token_dim) * 0.02)

    @torch.no_grad()
    def encode_prompts(self, prompts):
        tokenizer, encoder = self.encoders
        x = self.weight[: self.num_tokens].expand(len(prompts), -1, -1).clone()
        ids = [tokenizer(p, padding="max_length", max_length=self.num_tokens, truncation=True).input_ids
               for p in prompts]
        lens = [len(tokenizer(p, max_length=self.num_tokens, truncation=True).input_ids) for p in prompts]
        emb = encoder(torch.as_tensor(ids, device=x.device)).last_hidden_state.to(x.dtype)
        for i, n in enumerate(lens):
            if self.training and self.dropout > 0 and torch.rand(()) < self.dropout:
                continue
            x[i, :n] = emb[i, :n]
        return x

    def forward(self, x):
        if isinstance(x, (list, tuple)):
            x = self.encode_prompts(x)
        return self.norm(self.proj(x))


# ---------------------------------------------------------------------- transformer
class MLP(nn.Module):
    def __init__(self, dim, ratio=4):
        super().__init__()
        self.fc1, self.fc2, self.activation = nn.Linear(dim, dim * ratio), nn.Linear(dim * ratio, dim), nn.GELU()

    def forward(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Stands in for ``diffnext.models.vision_transformer.Block`` (post-norm residuals,
    ``attn_checkpointing`` / ``mlp_checkpointing`` flags)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim), MLP(dim)
        self.attn_checkpointing = self.mlp_checkpointing = False

    def _run(self, name, x):
        f = (lambda y: self.norm1(self.attn(y))) if name == "attn" else (lambda y: self.norm2(self.mlp(y)))
        if getattr(self, f"{name}_checkpointing") and x.requires_grad:
            return checkpoint(f, x, use_reentrant=False)
        return f(x)

    def forward(self, x, pe_func=None):
        x = self._run("attn", x) + x
        return self._run("mlp", x) + x


class VisionTransformer(nn.Module):
    """Stands in for ``diffnext.models.vision_transformer.VisionTransformer``.

    ``forward(x, c, prev_ids, pos)``: with ``prev_ids [B, K, 1]`` the first ``encoder_depth``
    blocks see only ``[c ; tokens prev_ids]`` (MAE-style encoder), their outputs are scattered
    back into the full (masked) sequence and the remaining blocks see everything; returns the
    normalised image part ``[B, N, D]``.
    """

    def __init__(self, depth, embed_dim, num_heads, patch_size=2, image_size=(4, 4), image_dim=4):
        super().__init__()
        self.embed_dim, self.image_size, self.image_dim = embed_dim, tuple(image_size), image_dim
        self.patch_embed = PatchEmbed(image_dim, embed_dim, patch_size)
        self.pos_embed = nn.Identity()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
        self.norm, self.mixer = nn.LayerNorm(embed_dim), nn.Identity()
        self.encoder_depth = depth // 2

    def enable_kvcache(self, mode=True):
        pass

    def forward(self, x, c=None, prev_ids=None, pos=None):
        prev_ids = prev_ids if self.encoder_depth else None
        x = x_full = self.pos_embed(self.patch_embed(x))
        if prev_ids is not None:
            idx = prev_ids.expand(-1, -1, x.size(-1))
            x = x.gather(1, idx)
        x = x if c is None else torch.cat([c, x], 1)
        for blk in self.blocks[: self.encoder_depth]:
            x = blk(x)
        if prev_ids is not None:
            if c is not None:
                c, x = x.split([c.size(1), x.size(1) - c.size(1)], 1)
            x = x_full.to(x.dtype).scatter(1, idx, x)
            x = x if c is None else torch.cat([c, x], 1)
        for blk in self.blocks[self.encoder_depth:]:
            x = blk(x)
        return self.norm(x if c is None else x[:, c.size(1):])


# ---------------------------------------------------------------------- diffusion head
class Projector(nn.Module):
    def __init__(self, dim, mlp_dim, out_dim):
        super().__init__()
        self.fc1, self.fc2, self.activation = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, out_dim), nn.SiLU()

    def forward(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class AdaLayerNormZero(nn.Module):
    """Stands in for ``diffnext.models.normalization.AdaLayerNormZero`` (``lora``, ``proj``, ``norm``)."""

    def __init__(self, dim, num_stats=2, eps=1e-6):
        super().__init__()
        self.lora, self.proj = nn.Identity(), nn.Linear(dim, num_stats * dim)
        self.norm, self.activation, self.num_stats = nn.LayerNorm(dim, eps, elementwise_affine=False), nn.SiLU(), num_stats

    def forward(self, x, z):
        s = self.proj(self.lora(self.activation(z))).chunk(self.num_stats, -1)
        return self.norm(x) * (1 + s[0]) + s[1], s[2:]


class DiffusionBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.proj, self.norm2 = AdaLayerNormZero(dim, 3), Projector(dim, dim, dim), nn.LayerNorm(dim)
        self.mlp_checkpointing = False

    def forward(self, x, z):
        h, (gate,) = self.norm1(x, z)
        return self.norm2(self.proj(h)) * gate + x


class TimeCondEmbed(nn.Module):
    def __init__(self, cond_dim, embed_dim, freq_dim=256):
        super().__init__()
        self.timestep_proj = Projector(freq_dim, embed_dim, embed_dim)
        self.condition_proj = Projector(cond_dim, embed_dim, embed_dim)
        self.freq_dim = freq_dim

    def forward(self, timestep, z):
        half = self.freq_dim // 2
        freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=timestep.device) / half)
        arg = timestep.float().unsqueeze(-1) * freq
        t = self.timestep_proj(torch.cat([arg.cos(), arg.sin()], -1).to(z.dtype))
        return self.condition_proj(z) + (t.unsqueeze(1) if t.dim() == 2 else t)


class DiffusionMLP(nn.Module):
    """Stands in for ``diffnext.models.diffusion_mlp.DiffusionMLP``:
    ``forward(x [B, C, h*p, w*p], timestep [B], z [B, h*w, Dz]) -> [B, h*w, p*p*C]`` (eps)."""

    def __init__(self, depth, embed_dim, cond_dim, patch_size=2, image_dim=4):
        super().__init__()
        self.patch_embed = PatchEmbed(image_dim, embed_dim, patch_size)
        self.time_cond_embed = TimeCondEmbed(cond_dim, embed_dim)
        self.blocks = nn.ModuleList(DiffusionBlock(embed_dim) for _ in range(depth))
        self.norm = AdaLayerNormZero(embed_dim, 2)
        self.head = nn.Linear(embed_dim, patch_size ** 2 * image_dim)

    def forward(self, x, timestep, z, pred_ids=None):
        if pred_ids is not None:
            raise NotImplementedError("the stand-in does not implement pred_ids")
        x = self.patch_embed(x)
        z = self.time_cond_embed(timestep, z)
        for blk in self.blocks:
            x = blk(x, z)
        return self.head(self.norm(x, z)[0])


class NovaTransformerStandin(nn.Module):
    """Stands in for ``diffnext`` ``NOVATransformer3DModel`` (image generation, absolute PE)."""

    def __init__(self, cfg: NovaStandinConfig):
        super().__init__()
        lat = cfg.image_size // cfg.image_stride
        patch = 15 // cfg.image_stride + 1             # NOVA: 2 for stride 8
        vpatch = 2 * patch
        self.config = SimpleNamespace(image_dim=cfg.image_dim, image_size=[cfg.image_size] * 2,
                                      image_stride=cfg.image_stride, text_token_dim=cfg.text_token_dim,
                                      text_token_len=cfg.text_token_len, rotary_pos_embed=False,
                                      image_base_size=[lat // patch] * 2,
                                      video_base_size=[1, lat // vpatch, lat // vpatch])
        d = cfg.width
        self.video_encoder = VisionTransformer(cfg.video_depth, d, cfg.heads, vpatch, (lat, lat), cfg.image_dim)
        self.image_encoder = VisionTransformer(cfg.image_depth, d, cfg.heads, patch, (lat, lat), cfg.image_dim)
        self.image_encoder.pos_embed = PosEmbed(d, self.config.image_base_size)
        self.image_decoder = DiffusionMLP(cfg.head_depth, cfg.head_width, d, patch, cfg.image_dim)
        self.mask_embed = MaskEmbed(d)
        self.text_embed = TextEmbed(cfg.text_token_dim, d, cfg.text_token_len)
        self.label_embed = None
        self.video_pos_embed = VideoPosEmbed(d, self.config.video_base_size)
        self.image_pos_embed = None
        self.motion_embed = None

    @property
    def dtype(self):
        return self.mask_embed.bos_token.dtype

    @property
    def device(self):
        return self.mask_embed.bos_token.device


# ---------------------------------------------------------------------- text, VAE, scheduler
class TokenizerStandin:
    """Stands in for the CodeGen tokenizer: ``tok(text, padding=..., max_length=..., truncation=...)
    .input_ids``; word-hash ids, 0 = padding; the empty prompt has no tokens."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, text, padding=None, max_length=None, truncation=False, **_):
        words = text.lower().replace(",", " ").replace(".", " ").split()
        ids = [1 + zlib.crc32(w.encode()) % (self.vocab - 1) for w in words]
        if truncation and max_length:
            ids = ids[:max_length]
        if padding == "max_length":
            ids = ids + [0] * (max_length - len(ids))
        return SimpleNamespace(input_ids=ids)


class PhiStandin(nn.Module):
    """Stands in for ``diffnext`` ``PhiEncoderModel``: ``forward(input_ids).last_hidden_state``."""

    def __init__(self, vocab, dim):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, dim)
        self.model.layers = nn.ModuleList([nn.TransformerEncoderLayer(dim, 2, 2 * dim, 0.0, batch_first=True)])
        self.model.final_layernorm = nn.LayerNorm(dim)

    @property
    def device(self):
        return self.model.embed_tokens.weight.device

    def forward(self, input_ids, attention_mask=None):
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer(h)
        return SimpleNamespace(last_hidden_state=self.model.final_layernorm(h))


class VaeStandin(nn.Module):
    """Stands in for ``diffnext`` ``AutoencoderKL``: ``config.scaling_factor``, in-place
    ``scale_``/``unscale_``, ``decode(z).sample`` in ``[-1, 1]`` (here: 1x1 conv + pixel shuffle)."""

    def __init__(self, image_dim, stride, scaling_factor):
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=scaling_factor, shift_factor=None)
        self.decoder = nn.Module()
        self.decoder.conv_out = nn.Conv2d(image_dim, 3 * stride * stride, 1)
        self.stride = stride

    def scale_(self, x):
        return x.mul_(self.config.scaling_factor)

    def unscale_(self, x):
        return x.mul_(1 / self.config.scaling_factor)

    def decode(self, z):
        img = torch.tanh(nn.functional.pixel_shuffle(self.decoder.conv_out(z), self.stride))
        return SimpleNamespace(sample=img)


class DDPMSchedulerStandin:
    """Stands in for diffusers' ``DDPMScheduler`` as NOVA's pipeline loads it (SD-style
    ``scaled_linear`` betas, ``leading`` timestep spacing, epsilon prediction, fixed-small variance,
    and diffusers' default ``clip_sample=True``: ``step`` clamps x0 to [-1, 1])."""

    def __init__(self, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012):
        self.config = SimpleNamespace(num_train_timesteps=num_train_timesteps, beta_schedule="scaled_linear",
                                      prediction_type="epsilon", variance_type="fixed_small",
                                      clip_sample=True, clip_sample_range=1.0, thresholding=False,
                                      timestep_spacing="leading", steps_offset=0)
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self.num_inference_steps = None

    def set_timesteps(self, n, device=None):
        self.num_inference_steps = n
        ratio = self.config.num_train_timesteps // n
        self.timesteps = (torch.arange(0, n) * ratio).flip(0).long() + self.config.steps_offset

    def previous_timestep(self, timestep):
        n = self.num_inference_steps or self.config.num_train_timesteps
        return timestep - self.config.num_train_timesteps // n


def build_nova_standin(cfg: NovaStandinConfig) -> dict:
    """The pipeline components as ``NOVAPipeline`` holds them.

    NOT THE REAL NOVA. Each class reproduces, at tiny size, the attribute names,
    state-dict keys and call signatures of the ``diffnext`` class named in its
    docstring, as used by :class:`marpipe.models.nova.NovaMAR`:

    * ``NovaTransformerStandin``  -> ``NOVATransformer3DModel`` (``transformer/``):
      ``video_encoder`` / ``image_encoder`` (``VisionTransformer``), ``image_decoder``
      (``DiffusionMLP``), ``mask_embed`` (``MaskEmbed``: ``bos_token``, ``mask_token``),
      ``text_embed`` (``TextEmbed``), ``video_pos_embed`` (``VideoPosEmbed``);
    * ``PhiStandin`` -> ``PhiEncoderModel`` (``text_encoder/``), ``TokenizerStandin`` ->
      the CodeGen tokenizer, ``VaeStandin`` -> ``diffnext`` ``AutoencoderKL`` (SD VAE,
      4 channels, stride 8, ``scale_``/``unscale_``, ``decode(x).sample``),
      ``DDPMSchedulerStandin`` -> diffusers' ``DDPMScheduler`` (epsilon prediction, x0 clipped to
      [-1, 1], ``set_timesteps``, ``timesteps``, ``previous_timestep``, ``alphas_cumprod``).

    Token layout (as ``PatchEmbed.patchify``): a latent ``[B, C, H, W]`` cut into
    ``p x p`` patches, token ``(h, w)`` row-major, vector ordered ``(py, px, c)``.
    """
    return dict(transformer=NovaTransformerStandin(cfg), vae=VaeStandin(cfg.image_dim, cfg.image_stride, cfg.scaling_factor),
                text_encoder=PhiStandin(cfg.vocab, cfg.text_token_dim), tokenizer=TokenizerStandin(cfg.vocab),
                scheduler=DDPMSchedulerStandin(cfg.train_steps))


# ---------------------------------------------------------------------- the spec and the folder
def fresh_nova_standin(device, dtype, gradient_checkpointing=False, sampling=None, seed: int = 0):
    """The ``nova-standin`` spec: :class:`NovaMAR` over freshly built, seeded stand-in modules."""
    from marpipe.models.nova import NovaMAR
    torch.manual_seed(seed)
    cfg = NovaStandinConfig()
    p = build_nova_standin(cfg)
    m = NovaMAR(p["transformer"], p["vae"], p["text_encoder"], p["tokenizer"], p["scheduler"],
                sampling=sampling or cfg.sampling, gradient_checkpointing=gradient_checkpointing,
                source=f"nova-standin ({NOT_REAL})")
    return m.to(device=device, dtype=dtype)


def model_index(cfg: NovaStandinConfig) -> dict:
    """A stand-in folder's ``model_index.json``: the pipeline's layout, the stand-in classes named,
    the stand-in's sizes under ``_standin_config``."""
    here = __name__
    return {"_class_name": ARCHITECTURE, "_standin_config": cfg.to_dict(),
            "scheduler": [here, "DDPMSchedulerStandin"], "text_encoder": [here, "PhiStandin"],
            "tokenizer": [here, "TokenizerStandin"], "transformer": [here, "NovaTransformerStandin"],
            "vae": [here, "VaeStandin"]}


def build_from_folder(folder: Path, dtype) -> Built:
    """The builder registered for :data:`ARCHITECTURE`: the stand-in modules at the folder's sizes."""
    cfg = NovaStandinConfig(**json.loads((Path(folder) / "model_index.json").read_text())["_standin_config"])
    return Built(build_nova_standin(cfg), sampling=cfg.sampling, note=f"stand-in, {NOT_REAL}")


def save_nova_standin(folder: str | Path, cfg: NovaStandinConfig | None = None, seed: int = 0) -> Path:
    """Write a stand-in NOVA folder in the pipeline's layout (``transformer/``, ``vae/``,
    ``text_encoder/`` safetensors, ``model_index.json`` naming :data:`ARCHITECTURE`) and its manifest."""
    from safetensors.torch import save_file

    from marpipe.models.download import write_manifest
    cfg = cfg or NovaStandinConfig()
    folder = Path(folder)
    torch.manual_seed(seed)
    parts = build_nova_standin(cfg)
    for name in ("transformer", "vae", "text_encoder"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous() for k, v in parts[name].state_dict().items()}
        save_file(sd, str(folder / name / "diffusion_pytorch_model.safetensors"))
    (folder / "model_index.json").write_text(json.dumps(model_index(cfg), indent=1))
    write_manifest(folder)
    return folder
