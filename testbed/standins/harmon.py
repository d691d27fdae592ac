"""Stand-ins for Harmon's official modules (HF ``wusize/Harmon-1_5B`` remote code / github wusize/Harmon).
NOT THE REAL HARMON: a tiny ``HarmonModel`` look-alike with its attribute layout, state-dict keys and the
methods :class:`marpipe.models.harmon.HarmonMAR` calls (:func:`build_harmon_standin` lists them), plus the
``harmon-standin`` spec and the stand-in folder (:func:`save_harmon_standin`). See docs/development.md.
"""
from __future__ import annotations

import functools
import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from marpipe.diffusion import betas_for
from marpipe.models.registry import Built

ARCHITECTURE = "HarmonStandin"             # config.json's architectures in a stand-in folder
NOT_REAL = "NOT the real Harmon"


@dataclass
class HarmonStandinConfig:
    image_size: int = 64          # generation size; tokens = (image_size / 16)^2
    train_image_size: int = 32    # size the MAR pos-embeds were learned at (Harmon: 256 -> resized for 512)
    vae_stride: int = 16
    token_dim: int = 16
    width: int = 32               # MAR encoder/decoder width (Harmon: 1280)
    depth: int = 1                # MAR encoder and decoder depth each (Harmon: 20)
    heads: int = 2
    buffer_size: int = 4          # Harmon: 64
    head_depth: int = 2           # Harmon: 12
    head_width: int = 32          # Harmon: 1536
    llm_hidden: int = 32          # Harmon: 1536
    llm_layers: int = 1
    vocab: int = 512
    vae_scale: float = 0.2325
    train_steps: int = 1000
    sampling: dict = field(default_factory=lambda: {"ar_steps": 4, "diffusion_steps": 5, "cfg_scale": 3.0})

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- diffusion MLP (DiffLoss.net)
class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frequency_embedding_size = freq

    def forward(self, t):
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], -1).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.in_ln = nn.LayerNorm(ch, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(ch, ch), nn.SiLU(), nn.Linear(ch, ch))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(ch, 3 * ch))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, -1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, ch, out):
        super().__init__()
        self.norm_final = nn.LayerNorm(ch, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(ch, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(ch, 2 * ch))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, -1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
    """Stands in for Harmon/MAR ``SimpleMLPAdaLN``: ``forward(x [M,C], t [M], c [M,Dz]) -> [M, 2C]``."""

    def __init__(self, in_channels, model_channels, out_channels, z_channels, num_res_blocks, grad_checkpointing=False):
        super().__init__()
        self.in_channels, self.grad_checkpointing = in_channels, grad_checkpointing
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList(ResBlock(model_channels) for _ in range(num_res_blocks))
        self.final_layer = FinalLayer(model_channels, out_channels)

    def forward(self, x, t, c):
        x = self.input_proj(x.to(self.input_proj.weight.dtype))
        y = self.time_embed(t) + self.cond_embed(c.to(self.cond_embed.weight.dtype))
        for blk in self.res_blocks:
            x = checkpoint(blk, x, y, use_reentrant=False) if self.grad_checkpointing and x.requires_grad else blk(x, y)
        return self.final_layer(x, y)


class DiffLoss(nn.Module):
    """Stands in for ``DiffLoss``: ``net`` plus ``train_diffusion.alphas_cumprod`` (cosine, 1000 steps)."""

    def __init__(self, target_channels, z_channels, depth, width, train_steps=1000, grad_checkpointing=False):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, 2 * target_channels, z_channels, depth, grad_checkpointing)
        abar = torch.cumprod(1 - betas_for("cosine", train_steps), 0).numpy()
        self.train_diffusion = SimpleNamespace(alphas_cumprod=abar, num_timesteps=train_steps)


# ---------------------------------------------------------------------- MAR
class MAR(nn.Module):
    """Stands in for Harmon's ``MAR`` (encoder/decoder with a class-embedding buffer, timm blocks)."""

    def __init__(self, cfg: HarmonStandinConfig):
        super().__init__()
        from timm.models.vision_transformer import Block
        d = cfg.width
        self.vae_embed_dim, self.patch_size = cfg.token_dim, 1
        self.seq_h = self.seq_w = cfg.train_image_size // cfg.vae_stride
        self.seq_len = self.seq_h * self.seq_w
        self.token_embed_dim = cfg.token_dim
        self.grad_checkpointing = False
        self.buffer_size, self.encoder_embed_dim, self.decoder_embed_dim = cfg.buffer_size, d, d
        self.class_emb = nn.Embedding(10, d)
        self.fake_latent = nn.Parameter(torch.randn(1, d) * 0.02)
        self.z_proj, self.z_proj_ln = nn.Linear(cfg.token_dim, d), nn.LayerNorm(d, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.randn(1, self.seq_len + self.buffer_size, d) * 0.02)
        block = lambda: Block(d, cfg.heads, 4.0, qkv_bias=True, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
                              proj_drop=0.1, attn_drop=0.1)
        self.encoder_blocks = nn.ModuleList(block() for _ in range(cfg.depth))
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_embed = nn.Linear(d, d)
        self.mask_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.decoder_pos_embed_learned = nn.Parameter(torch.randn(1, self.seq_len + self.buffer_size, d) * 0.02)
        self.decoder_blocks = nn.ModuleList(block() for _ in range(cfg.depth))
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.randn(1, self.seq_len, d) * 0.02)
        self.diffloss = DiffLoss(cfg.token_dim, d, cfg.head_depth, cfg.head_width, cfg.train_steps)

    def _resize(self, pe, h, w, buffer):
        if (h, w) == (self.seq_h, self.seq_w):
            return pe
        buf, img = pe.split([buffer, self.seq_len], 1)
        img = img.reshape(1, self.seq_h, self.seq_w, -1).permute(0, 3, 1, 2)
        img = nn.functional.interpolate(img, size=(h, w), mode="bilinear").permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([buf, img], 1)

    def get_encoder_pos_embed(self, h, w):
        return self._resize(self.encoder_pos_embed_learned, h, w, self.buffer_size)

    def get_decoder_pos_embed(self, h, w):
        return self._resize(self.decoder_pos_embed_learned, h, w, self.buffer_size)

    def get_diffusion_pos_embed(self, h, w):
        return self._resize(self.diffusion_pos_embed_learned, h, w, 0)

    def _blocks(self, blocks, x):
        for blk in blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and x.requires_grad else blk(x)
        return x

    def forward_mae_encoder(self, x, mask, class_embedding, image_shape=None):
        """``x [B, N, C]`` tokens, ``mask [B, N]`` (1 = unknown) -> ``[B, buffer + K, D]`` (kept tokens)."""
        x = self.z_proj(x.to(self.fake_latent.dtype))
        b, n, d = x.shape
        x = torch.cat([x.new_zeros(b, self.buffer_size, d), x], 1)
        keep = torch.cat([mask.new_zeros(b, self.buffer_size), mask], 1) == 0
        x[:, : self.buffer_size] = class_embedding.view(b, -1, d)
        h, w = image_shape if image_shape is not None else (self.seq_h, self.seq_w)
        x = self.z_proj_ln(x + self.get_encoder_pos_embed(h, w))
        x = x[keep.nonzero(as_tuple=True)].reshape(b, -1, d)
        return self.encoder_norm(self._blocks(self.encoder_blocks, x))

    def forward_mae_decoder(self, x, mask, image_shape=None, x_con=None):
        """Encoder output + ``mask`` -> ``z [B, N, D]`` for every position (mask tokens elsewhere)."""
        b, n = mask.shape
        x = self.decoder_embed(x)
        keep = torch.cat([mask.new_zeros(b, self.buffer_size), mask], 1) == 0
        full = self.mask_token.repeat(b, self.buffer_size + n, 1).to(x.dtype)
        full[keep.nonzero(as_tuple=True)] = x.reshape(-1, x.shape[-1])
        h, w = image_shape if image_shape is not None else (self.seq_h, self.seq_w)
        x = self.decoder_norm(self._blocks(self.decoder_blocks, full + self.get_decoder_pos_embed(h, w)))
        return x[:, self.buffer_size:] + self.get_diffusion_pos_embed(h, w)


# ---------------------------------------------------------------------- VAE, tokenizer, model
class VaeStandin(nn.Module):
    """Stands in for Harmon's KL-16 ``AutoencoderKL``: ``embed_dim``, ``decode(z [B,16,m,n]) -> [B,3,16m,16n]``."""

    def __init__(self, embed_dim, stride):
        super().__init__()
        self.embed_dim, self.stride = embed_dim, stride
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.decoder = nn.Module()
        self.decoder.conv_out = nn.Conv2d(embed_dim, 3 * stride * stride, 1)

    def decode(self, z):
        return torch.tanh(nn.functional.pixel_shuffle(self.decoder.conv_out(self.post_quant_conv(z)), self.stride))


class TokenizerStandin:
    """Stands in for the Qwen2.5 tokenizer (word-hash ids; ``eos_token_id``)."""

    def __init__(self, vocab):
        self.vocab, self.eos_token_id, self.pad_token_id = vocab, 2, 2

    def encode(self, text, add_special_tokens=True, return_tensors=None):
        words = text.replace("\n", " \n ").split(" ")
        ids = [3 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in words if w]
        return torch.tensor([ids]) if return_tensors == "pt" else ids


class HarmonStandin(nn.Module):
    """Stands in for ``HarmonModel`` (attribute and state-dict layout)."""

    def __init__(self, cfg: HarmonStandinConfig):
        super().__init__()
        from transformers import Qwen2Config, Qwen2ForCausalLM
        self.vae = VaeStandin(cfg.token_dim, cfg.vae_stride)
        self.vae_scale = cfg.vae_scale
        qcfg = Qwen2Config(vocab_size=cfg.vocab, hidden_size=cfg.llm_hidden, intermediate_size=2 * cfg.llm_hidden,
                           num_hidden_layers=cfg.llm_layers, num_attention_heads=2, num_key_value_heads=1,
                           max_position_embeddings=512, tie_word_embeddings=True)
        qcfg._attn_implementation = "eager"
        self.llm = Qwen2ForCausalLM(qcfg)
        self.mar = MAR(cfg)
        mlp = lambda i, h, o: nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, o))
        self.proj_in = mlp(cfg.width, cfg.llm_hidden, cfg.llm_hidden)
        self.proj_out = mlp(cfg.llm_hidden, cfg.llm_hidden, cfg.width)


def build_harmon_standin(cfg: HarmonStandinConfig) -> tuple[HarmonStandin, TokenizerStandin]:
    """The stand-in ``HarmonModel`` and its tokenizer.

    NOT THE REAL HARMON. ``HarmonStandin`` has the ``HarmonModel`` attribute layout
    (``vae``, ``llm``, ``mar``, ``proj_in``, ``proj_out``; state-dict keys ``mar.encoder_blocks.0.attn.qkv.weight``,
    ``mar.diffloss.net.res_blocks.0.adaLN_modulation.1.weight`` ...) at tiny size:

    * ``llm`` is a real ``transformers`` ``Qwen2ForCausalLM`` with a tiny config (Harmon: Qwen2.5-1.5B-Instruct);
    * ``mar`` -> ``MAR`` (``mar_huge`` in Harmon: 20+20 timm ``Block`` layers of width 1280, buffer 64,
      pos-embeds learned at 16x16 and bilinearly resized for 32x32 generation) with
      ``forward_mae_encoder(x, mask, class_embedding, image_shape)`` and
      ``forward_mae_decoder(x, mask, image_shape, x_con)``; ``mar.diffloss.net`` -> ``SimpleMLPAdaLN``
      (Harmon: 12 res-blocks, width 1536, output ``2 C`` = eps and the learned-range ``v``);
      ``mar.diffloss.train_diffusion.alphas_cumprod`` -> the cosine schedule of 1000 steps;
    * ``vae`` -> Harmon's KL-16 ``AutoencoderKL`` (``embed_dim`` 16, stride 16, ``decode(z)`` in ``[-1, 1]``);
    * ``TokenizerStandin`` -> the Qwen tokenizer (``encode(text, add_special_tokens=True, return_tensors='pt')``).
    """
    return HarmonStandin(cfg), TokenizerStandin(cfg.vocab)


# ---------------------------------------------------------------------- the spec and the folder
def fresh_harmon_standin(device, dtype, gradient_checkpointing=False, sampling=None, seed: int = 0):
    """The ``harmon-standin`` spec: :class:`HarmonMAR` over a freshly built, seeded stand-in."""
    from marpipe.models.harmon import HarmonMAR
    torch.manual_seed(seed)
    cfg = HarmonStandinConfig()
    h, tok = build_harmon_standin(cfg)
    m = HarmonMAR(h, tok, sampling=sampling or cfg.sampling, image_size=cfg.image_size,
                  gradient_checkpointing=gradient_checkpointing, source=f"harmon-standin ({NOT_REAL})")
    return m.to(device=device, dtype=dtype)


def build_from_folder(folder: Path, dtype) -> Built:
    """The builder registered for :data:`ARCHITECTURE`: the stand-in at the sizes of ``config.json``."""
    meta = json.loads((Path(folder) / "config.json").read_text())
    cfg = HarmonStandinConfig(**{k: v for k, v in meta.items() if k not in ("architectures", "model_type")})
    harmon, tokenizer = build_harmon_standin(cfg)
    return Built({"harmon": harmon, "tokenizer": tokenizer}, sampling=cfg.sampling, image_size=cfg.image_size,
                 note=f"stand-in, {NOT_REAL}")


def save_harmon_standin(folder: str | Path, cfg: HarmonStandinConfig | None = None, seed: int = 0) -> Path:
    """Write a stand-in Harmon folder (``model.safetensors`` in ``HarmonModel``'s key layout, the tied
    ``llm.lm_head.weight`` left out as ``save_pretrained`` does; ``config.json`` naming
    :data:`ARCHITECTURE`) and its manifest."""
    from safetensors.torch import save_file

    from marpipe.models.download import tied_keys, write_manifest
    cfg = cfg or HarmonStandinConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    harmon, _ = build_harmon_standin(cfg)
    tied = tied_keys(harmon)          # written once, as save_pretrained does (Qwen2: lm_head = embed_tokens)
    sd = {k: v.detach().clone().contiguous() for k, v in harmon.state_dict().items() if k not in tied}
    save_file(sd, str(folder / "model.safetensors"))
    config = {"architectures": [ARCHITECTURE], "model_type": "harmon_standin", **cfg.to_dict()}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    write_manifest(folder)
    return folder
