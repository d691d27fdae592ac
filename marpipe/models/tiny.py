"""Tiny MAR models (``tiny-nova``, ``tiny-harmon``) that run in seconds on a CPU.

They implement :class:`marpipe.models.protocol.MARModel` with the real models' moving parts, only
small (:class:`TinyMAR`): a prompt encoder, a bidirectional transformer over prompt and image
tokens, a diffusion head and a linear patch codec in the VAE's role. The default sizes keep
NOVA's ratio of head to AR-transformer multiply-adds per token (:func:`head_to_ar_ratio`), so cost
ratios measured here transfer to the real models. How the small world uses them:
``docs/results.md``, "The small world"."""
from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from marpipe.diffusion import Schedule
from marpipe.grpo import cosine_mask_counts
from marpipe.models.protocol import Prompts, SamplingSpec


@contextmanager
def _composite_kernels():
    """The encoder layers' composite ops also without autograd. Under ``no_grad`` (a rollout,
    generation) PyTorch would take its fused inference kernel ("fastpath"), which at these widths
    on a CPU is slower (tiny-nova's 4 layers, batch 64, one thread: 0.21 s against 0.16 s) and
    differs from the ops the loss recomputes log-probs with by ~1e-5."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


@dataclass
class TinyMARConfig:
    kind: str = "nova"               # "nova" (eps, fixed variance) | "harmon" (learned range)
    image_size: int = 32
    patch: int = 4                   # -> (32/4)^2 = 64 tokens
    token_dim: int = 16              # C
    width: int = 96                  # AR transformer width
    depth: int = 4                   # AR transformer layers
    heads: int = 4
    text_depth: int = 1
    vocab: int = 1024                # word-hash buckets
    max_prompt_len: int = 16
    head_width: int = 40
    head_blocks: int = 3
    beta_schedule: str = "scaled_linear"  # NOVA: scaled-linear DDPM; Harmon: cosine
    zero_init: bool = True           # AdaLN-zero init (pre-training); False gives a random head that
                                     # already depends on z (useful for RL tests without pre-training)
    train_steps: int = 1000
    sampling: dict = field(default_factory=lambda: {"ar_steps": 8, "diffusion_steps": 10, "cfg_scale": 3.0})

    @classmethod
    def preset(cls, name: str, **overrides) -> TinyMARConfig:
        presets = {
            "tiny-nova": dict(kind="nova", beta_schedule="scaled_linear",
                              sampling={"ar_steps": 8, "diffusion_steps": 10, "cfg_scale": 5.0}),
            "tiny-harmon": dict(kind="harmon", beta_schedule="cosine",
                                sampling={"ar_steps": 8, "diffusion_steps": 10, "cfg_scale": 3.0}),
        }
        if name not in presets:
            raise KeyError(f"unknown tiny model {name!r}; use one of {sorted(presets)}")
        base = {**presets[name]}
        if overrides.get("sampling"):
            overrides = {**overrides, "sampling": {**base["sampling"], **overrides["sampling"]}}
        return cls(**{**base, **overrides})


def head_to_ar_ratio(cfg: TinyMARConfig) -> float:
    """Multiply-adds per token: one head step / one AR-transformer forward.

    AR layer: attention projections 4 d^2 + MLP 8 d^2 = 12 d^2 (attention scores
    ignored); the tiny models' 3x3 stem adds 9 d^2. Head block: AdaLN modulation
    3 w^2 + MLP 2 w^2 = 5 w^2; the tiny head's two projections of ``z`` add 2 w d.
    NOVA (d48 w1024, head 6 x 1024): 6*5/(48*12) = 0.052; tiny (d96 x 4, head
    3 x 40): 31,680 / 525,312 = 0.060.
    """
    head = cfg.head_blocks * 5 * cfg.head_width ** 2 + 2 * cfg.head_width * cfg.width
    return head / ((cfg.depth * 12 + 9) * cfg.width ** 2)


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """``[side*side, dim]`` 2-D sin-cos position table (MAE): x in the first half, y in the second."""
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / q)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    parts = []
    for c in (xs, ys):
        a = c.reshape(-1, 1).float() * omega[None]
        parts += [a.sin(), a.cos()]
    return torch.cat(parts, dim=1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AdaLNBlock(nn.Module):
    """Residual MLP block with AdaLN-zero modulation from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
    def zero_init(self):
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x, c):
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    """AdaLN-zero residual MLP blocks whose input also gets a projection of ``z`` (so the condition
    reaches the output from the first step); ``tiny-nova`` gives ``eps`` (fixed DDPM posterior
    variance), ``tiny-harmon`` also ``v`` (learned-range variance, cosine schedule)."""

    def __init__(self, cfg: TinyMARConfig):
        super().__init__()
        w, c = cfg.head_width, cfg.token_dim
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.cond_embed = nn.Linear(cfg.width, w)
        self.cond_in = nn.Linear(cfg.width, w)
        self.input_proj = nn.Linear(c, w)
        self.blocks = nn.ModuleList(AdaLNBlock(w) for _ in range(cfg.head_blocks))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        out = 2 * c if cfg.kind == "harmon" else c
        self.out = nn.Linear(w, out)
        if cfg.zero_init:
            for block in self.blocks:
                block.zero_init()
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.width = w

    def forward(self, x_t, t, z):
        c = self.time_embed(timestep_embedding(t, self.width).to(z.dtype)) + self.cond_embed(z)
        h = self.input_proj(x_t) + self.cond_in(z)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.final_norm(h))


class PatchCodec(nn.Module):
    """Linear patch codec: image patches <-> ``token_dim`` coefficients on a fixed basis."""

    def __init__(self, cfg: TinyMARConfig):
        super().__init__()
        self.patch, self.size = cfg.patch, cfg.image_size
        d = 3 * cfg.patch ** 2
        g = torch.Generator().manual_seed(0)
        basis = torch.linalg.qr(torch.randn(d, cfg.token_dim, generator=g))[0].T  # orthonormal rows
        self.register_buffer("basis", basis.contiguous())         # [C, 3 p^2]
        self.register_buffer("mean", torch.full((d,), 0.5))       # patch mean
        self.register_buffer("scale", torch.ones(cfg.token_dim))  # per-channel latent scale

    def patchify(self, images):  # [B,3,H,W] -> [B,N,3p^2]
        b, p = images.shape[0], self.patch
        x = images.unfold(2, p, p).unfold(3, p, p)                # B,3,h,w,p,p
        return x.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * p * p)

    def unpatchify(self, patches):  # [B,N,3p^2] -> [B,3,H,W]
        b, p, h = patches.shape[0], self.patch, self.size // self.patch
        x = patches.reshape(b, h, h, 3, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, 3, h * p, h * p)

    def encode(self, images):
        return ((self.patchify(images) - self.mean) @ self.basis.T) / self.scale

    def decode(self, latents):
        patches = (latents * self.scale) @ self.basis + self.mean
        return self.unpatchify(patches).clamp(0, 1)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> float:
        """PCA on the patches of ``images``; returns the fraction of variance kept."""
        x = self.patchify(images).reshape(-1, self.basis.shape[1]).double()
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        c = self.basis.shape[0]
        self.mean.copy_(mean.float())
        self.basis.copy_(vh[:c].float())
        coef = (x - mean) @ vh[:c].T
        self.scale.copy_(coef.std(0).clamp_min(1e-6).float())
        return float((s[:c] ** 2).sum() / (s ** 2).sum())


class TinyMAR(nn.Module):
    """A small, complete MAR model implementing the protocol: a word-hash tokenizer and a small text
    transformer (the real models: Phi, Qwen); a bidirectional transformer over ``[prompt ; image
    tokens]`` (known latents or a learned ``[MASK]``, 2-D sin-cos initialised positions) with a
    zero-initialised 3x3 convolution over the token grid first (a locality prior: minutes of CPU
    training do not let attention find the neighbours); :class:`DiffusionHead`; :class:`PatchCodec`
    (PCA-fitted on rendered images when the small world pre-trains the model)."""

    def __init__(self, cfg: TinyMARConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch
        self.num_tokens = self.grid ** 2
        self.token_dim = cfg.token_dim
        self.image_size = cfg.image_size
        self.learned_variance = cfg.kind == "harmon"
        self.sampling = SamplingSpec(**cfg.sampling)
        self.schedule = Schedule.respaced(cfg.beta_schedule, cfg.train_steps, self.sampling.diffusion_steps)
        d = cfg.width
        # text encoder (id 0 = padding, 1 = the empty/negative prompt token)
        self.word_embed = nn.Embedding(cfg.vocab, d)
        self.text_pos = nn.Parameter(torch.zeros(cfg.max_prompt_len, d))
        layer = lambda: nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, dropout=0.0,
                                                   activation="gelu", batch_first=True, norm_first=True)
        self.text_encoder = nn.TransformerEncoder(layer(), cfg.text_depth, enable_nested_tensor=False)
        # AR transformer
        self.token_in = nn.Linear(cfg.token_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.image_pos = nn.Parameter(sincos_2d(self.grid, d))
        self.stem = nn.Conv2d(d, d, 3, padding=1)       # zero-init: the identity at start
        nn.init.zeros_(self.stem.weight)
        nn.init.zeros_(self.stem.bias)
        self.encoder = nn.TransformerEncoder(layer(), cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head_net = DiffusionHead(cfg)
        self.codec = PatchCodec(cfg)

    # --- prompts -------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = torch.zeros(len(prompts), self.cfg.max_prompt_len, dtype=torch.long)
        for i, p in enumerate(prompts):
            words = p.lower().replace(",", " ").replace(".", " ").split()[: self.cfg.max_prompt_len]
            if not words:
                ids[i, 0] = 1
            for j, w in enumerate(words):
                ids[i, j] = 2 + zlib.crc32(w.encode()) % (self.cfg.vocab - 2)
        return ids

    def _encode_ids(self, ids: torch.Tensor) -> Prompts:
        ids = ids.to(self.text_pos.device)
        pad = ids == 0
        h = self.word_embed(ids) + self.text_pos[: ids.shape[1]]
        return Prompts(self.text_encoder(h, src_key_padding_mask=pad), pad)

    def encode_prompts(self, prompts: Sequence[str]) -> Prompts:
        return self._encode_ids(self.tokenize(prompts))

    def encode_negative(self, n: int) -> Prompts:
        return self._encode_ids(self.tokenize([""] * n))

    # --- AR part --------------------------------------------------------------
    def mask_counts(self, ar_steps: int) -> list[int]:
        """marpipe's own cosine schedule (at least one token per step)."""
        return cosine_mask_counts(self.num_tokens, ar_steps)

    @_composite_kernels()
    def ar_forward(self, canvas, known, prompts: Prompts):
        x = torch.where(known[..., None], self.token_in(canvas), self.mask_token)
        b, n, d = x.shape
        grid = x.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        x = x + self.stem(grid).reshape(b, d, n).transpose(1, 2) + self.image_pos
        seq = torch.cat([prompts.emb, x], dim=1)
        pad = torch.cat([prompts.pad, torch.zeros_like(known)], dim=1)
        h = self.encoder(seq, src_key_padding_mask=pad)
        return self.norm(h[:, prompts.emb.shape[1]:])

    # --- diffusion head -----------------------------------------------------------
    def head(self, x_t, step, z):
        """``(eps, v)``. The net predicts the velocity ``sqrt(abar) eps - sqrt(1-abar) x0`` and ``eps``
        is recovered from it: NOVA's ``eps`` interface, but well conditioned at high noise, where a
        tiny MLP cannot learn the near-identity ``eps ~ x_t`` to the precision ``x0`` needs."""
        t = self.schedule.table("timesteps", step.device)[step]
        out = self.head_net(x_t, t, z)
        velocity, v = out.chunk(2, dim=-1) if self.learned_variance else (out, None)
        abar = self.schedule.at("abar", step, x_t)
        return (1 - abar).sqrt() * x_t + abar.sqrt() * velocity, v

    def decode(self, latents):
        return self.codec.decode(latents)

    def encode_images(self, images):
        return self.codec.encode(images)

    def ar_parameters(self):
        for name, p in self.named_parameters():
            if not name.startswith("head_net."):
                yield p

    def head_parameters(self):
        return self.head_net.parameters()

    # --- weights -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(tmp), metadata={"marpipe_config": json.dumps(asdict(self.cfg))})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, **overrides) -> TinyMAR:
        from safetensors import safe_open
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model weights not found: {path} (run the pretrain/download rule first)")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "marpipe_config" not in meta:
            raise ValueError(f"{path}: not a marpipe tiny-model file (no 'marpipe_config' metadata)")
        stored = json.loads(meta["marpipe_config"])
        if overrides.get("sampling"):  # partial sampling overrides keep the stored values
            overrides = {**overrides, "sampling": {**stored["sampling"], **overrides["sampling"]}}
        cfg = TinyMARConfig(**{**stored, **overrides})
        model = cls(cfg)
        model.load_state_dict(load_file(str(path)), strict=True)
        return model
