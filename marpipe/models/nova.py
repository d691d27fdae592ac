"""NOVA (``BAAI/nova-d48w1024-sd512``, 0.6B, 512x512) behind the MAR protocol: :class:`NovaMAR` maps
the official ``diffnext`` modules (github baaivision/NOVA, installed in ``.venv-nova``) onto the
protocol primitives, and :meth:`NovaMAR.from_pretrained` loads a downloaded folder. See docs/method.md.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from marpipe.diffusion import Schedule
from marpipe.models.protocol import Prompts, SamplingSpec
from marpipe.models.registry import Built, register_architecture

NOVA_SAMPLING = {"ar_steps": 64, "diffusion_steps": 25, "cfg_scale": 5.0}
DIFFNEXT_COMMIT = "2cd254afdedae8670ccb492c28c53caa08f7b5a0"   # baaivision/NOVA, pinned in the Makefile (DIFFNEXT)


# ============================================================ helpers shared with harmon.py
def schedule_from_alphas_cumprod(abar_all, timesteps) -> Schedule:
    """A :class:`Schedule` for sampling at the official scheduler's ``timesteps``."""
    return Schedule.from_abar(abar_all, timesteps)


def disable_dropout(module: nn.Module) -> None:
    """Zero every dropout probability: log-probs recomputed in ``train()`` mode must equal the
    rollout's (the ratio is 1 at theta = theta_old), so no module may be stochastic."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for name in ("attn_drop", "proj_drop", "dropout"):
            v = getattr(m, name, None)
            if isinstance(v, float):
                setattr(m, name, 0.0)


def rows_by_known_count(known: torch.Tensor) -> list[torch.Tensor]:
    """Row indices grouped by their number of known tokens (the official encoders keep only
    the known tokens, which needs the same count within a batch)."""
    counts = known.sum(1)
    return [(counts == c).nonzero(as_tuple=True)[0] for c in torch.unique(counts)]


class FrozenPartsMixin:
    """Frozen sub-models (text encoder, LLM, VAE) live in ``self._frozen`` (a plain dict, so
    not in ``parameters()``/``state_dict()``: ``set_trainable(model, 'all')`` can never unfreeze
    them and checkpoints hold only the trained weights). ``.to()/.cuda()/.half()`` reach them;
    ``copy.deepcopy`` shares them (the reference model costs no second LLM)."""

    # the trained module and its diffusion-head child (set by each adapter)
    TRAINED: str = ""
    HEAD: str = ""
    # plain attributes that deep copies share too (tokenizers, schedulers: nothing trained)
    SHARED: tuple[str, ...] = ()

    def ar_parameters(self):
        """Everything trained except the diffusion head (what ``fix_decoder`` trains)."""
        for name, p in getattr(self, self.TRAINED).named_parameters():
            if not name.startswith(self.HEAD + "."):
                yield p

    def head_parameters(self):
        return getattr(getattr(self, self.TRAINED), self.HEAD).parameters()

    def _init_frozen(self, **parts: nn.Module) -> None:
        self._frozen = {}
        for name, m in parts.items():
            m.requires_grad_(False).eval()
            self._frozen[name] = m

    def _apply(self, fn, *args, **kwargs):
        for m in self._frozen.values():
            m._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen.values():
            m.eval()
        return self

    def __deepcopy__(self, memo):
        # every frozen module, and each of its sub-modules, parameters and buffers, is shared by
        # the copy wherever it is referenced from, not only through ``self._frozen`` (NOVA's
        # ``transformer.text_embed.encoders`` holds the Phi text encoder inside the trained tree)
        memo[id(self._frozen)] = self._frozen
        for m in self._frozen.values():
            for obj in (m, *m.modules(), *m.parameters(), *m.buffers()):
                memo[id(obj)] = obj
        for name in self.SHARED:
            obj = self.__dict__.get(name)
            if obj is not None:
                memo[id(obj)] = obj
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            object.__setattr__(new, k, copy.deepcopy(v, memo))
        return new


def merge_rows(parts: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    """Reassemble per-group outputs ``[(rows, out)]`` into ``[n, ...]`` (differentiably)."""
    if len(parts) == 1:
        rows, out = parts[0]
        if torch.equal(rows, torch.arange(n, device=rows.device)):
            return out
    first = parts[0][1]
    out = first.new_zeros(n, *first.shape[1:])
    for rows, h in parts:
        out = out.index_copy(0, rows, h)
    return out


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype != torch.float32 else x


# ============================================================ the head's sampling posterior
def _config_get(cfg, key: str, default=None):
    """A scheduler config value (diffusers' ``FrozenDict`` or a namespace)."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


# the scheduler classes whose ``step`` marpipe's posterior reproduces, by (top-level package, class
# name): True when ``step`` clips x0 as its config says (diffusers' ``DDPMScheduler``), False when it
# never clips (diffnext's own ``DDPMScheduler``, NOVA's training noise scheduler)
SCHEDULER_CLIPS: dict[tuple[str, str], bool] = {("diffusers", "DDPMScheduler"): True,
                                                 ("diffnext", "DDPMScheduler"): False}


def register_scheduler(package: str, name: str, clips_like_diffusers: bool) -> None:
    """Accept the scheduler class ``name`` of the top-level ``package``: its ``step`` clips x0 as
    diffusers' ``DDPMScheduler`` does (``clip_sample``, ``clip_sample_range``), or never."""
    SCHEDULER_CLIPS[(package, name)] = clips_like_diffusers


def scheduler_clips_x0(scheduler) -> float | None:
    """How ``scheduler.step`` treats ``x0_hat`` before the posterior mean: the clip range, or None.

    * diffusers' ``DDPMScheduler`` (what NOVA's ``model_index.json`` names):
      clamps ``x0_hat`` to ``[-clip_sample_range, clip_sample_range]`` when ``clip_sample`` (default
      **True**, range 1.0); ``thresholding`` (dynamic thresholding) is not supported here: error.
    * diffnext's own ``diffnext.schedulers.scheduling_ddpm.DDPMScheduler`` (what NOVA's training
      pipeline builds as its noise scheduler): accepts ``clip_sample``/``thresholding`` in its config
      but its ``step`` never clips nor thresholds: None.
    Any other scheduler class (unless given to :func:`register_scheduler`) is an error: its ``step`` is
    not known to match marpipe's posterior.
    """
    cls = type(scheduler)
    mod, name = cls.__module__, cls.__name__
    clips = SCHEDULER_CLIPS.get((mod.split(".")[0], name))
    if clips is None:
        raise ValueError(f"NOVA scheduler {mod}.{name}: marpipe's head posterior supports diffusers' or "
                         "diffnext's DDPMScheduler only (or a class given to register_scheduler)")
    if not clips:
        return None
    cfg = scheduler.config
    if _config_get(cfg, "thresholding", False):
        raise ValueError("NOVA scheduler config: thresholding=True (dynamic thresholding of x0) is not "
                         "supported by marpipe's head posterior")
    if _config_get(cfg, "clip_sample", True):
        return float(_config_get(cfg, "clip_sample_range", 1.0))
    return None


def nova_schedule(scheduler, diffusion_steps: int) -> Schedule:
    """The head's sampling :class:`Schedule`, read from the official ``scheduler`` object itself.

    ``scheduler.set_timesteps(diffusion_steps)`` gives the timesteps (so ``timestep_spacing`` and
    ``steps_offset`` are the scheduler's), ``scheduler.alphas_cumprod`` the alpha-bars (so the beta
    schedule, ``trained_betas`` and ``rescale_betas_zero_snr`` are), :func:`scheduler_clips_x0` the
    x0 clamp. ``scheduler.step`` reads ``alphas_cumprod[previous_timestep(t)]`` (1 below 0) as
    alpha-bar-prev; marpipe's schedule uses the next sampling timestep, so the two must agree (they
    do for ``leading`` spacing, NOVA's): anything else, and any ``prediction_type`` but ``epsilon`` or
    ``variance_type`` but ``fixed_small(_log)``, is an error here, at load time.
    """
    cfg = scheduler.config
    pred = _config_get(cfg, "prediction_type", "epsilon")
    if pred != "epsilon":
        raise ValueError(f"NOVA scheduler predicts {pred!r}; marpipe's head posterior needs 'epsilon'")
    var = _config_get(cfg, "variance_type", "fixed_small")
    if var not in ("fixed_small", "fixed_small_log"):      # both: std = sqrt(posterior variance)
        raise ValueError(f"NOVA scheduler variance_type {var!r}: marpipe's head posterior needs fixed_small")
    clip = scheduler_clips_x0(scheduler)
    scheduler.set_timesteps(diffusion_steps)
    ts = [int(t) for t in scheduler.timesteps]
    prev = getattr(scheduler, "previous_timestep", None)
    if prev is not None:
        expect = ts[1:] + [-1]
        got = [int(prev(t)) for t in scheduler.timesteps]
        bad = [(t, g, e) for t, g, e in zip(ts, got, expect) if g != e and not (g < 0 and e < 0)]
        if bad:
            t, g, e = bad[0]
            raise ValueError(f"NOVA scheduler ({_config_get(cfg, 'timestep_spacing', '?')} spacing, "
                             f"{diffusion_steps} steps): step() at t={t} uses alpha-bar of t={g}, not of the next "
                             f"sampling timestep {e}; marpipe's posterior does not support this spacing")
    sched = schedule_from_alphas_cumprod(scheduler.alphas_cumprod, ts)
    if not bool((sched.abar > 0).all()):
        raise ValueError("NOVA scheduler: alpha-bar is 0 at a sampling timestep (zero-terminal-SNR betas?)")
    return dataclasses.replace(sched, clip_x0=clip)


# ============================================================ the adapter
class NovaMAR(FrozenPartsMixin, nn.Module):
    """NOVA's ``diffnext`` pipeline components driven through :class:`MARModel`.

    The official modules do the computing; this class only maps their methods onto the protocol
    primitives (facts from ``diffnext`` at commit 2cd254a and AMAP-ML/mar-grpo at fcb7969):

    * prompts: ``transformer.text_embed`` (Phi encoder, 256 tokens, padded with the learned
      ``weight`` rows; projection + norm) feeds ``transformer.video_encoder`` over 256
      ``bos_token`` tokens (+ time and 2-D sin-cos embeddings) -> ``Prompts.emb [B, 256, 1024]``,
      the prefix that every image-encoder call attends to. Negative prompt: ``""``. Each distinct
      text is encoded once per call (Phi-2 and the video encoder) and its rows repeated: the negative
      prompt once per rollout, a group's prompt once per loss.
    * one AR step: ``image_encoder.patch_embed`` of the known-token latent, ``mask_token`` on
      the unknown positions, ``image_encoder(z, c, prev_ids)`` with ``prev_ids`` = the known
      positions (its first half encodes only those, MAE style) -> ``z [B, 1024, 1024]``.
    * head: ``image_decoder(x [M, 4, 2, 2], t [M], z [M, 1, 1024])`` = eps for one token
      (``DiffusionMLP``, 6 AdaLN-zero blocks); the DDPM posterior of the scheduler shipped with the
      weights (:func:`nova_schedule`): timesteps, ``alphas_cumprod`` and ``previous_timestep`` of the
      pipeline's own scheduler after ``set_timesteps(25)``, and its x0 clamp: the class and config that
      ship with the weights decide (NOVA's ``model_index.json`` names diffusers' ``DDPMScheduler``, whose
      ``clip_sample``, default True, clamps x0 to [-1, 1] before the posterior mean:
      :attr:`marpipe.diffusion.Schedule.clip_x0`). A setting marpipe's
      posterior does not reproduce (another prediction or variance type, thresholding, a spacing whose
      ``previous_timestep`` is not the next sampling timestep) is an error at load time.
    * mask schedule: NOVA's cosine ``num_preds`` with empty steps dropped (:meth:`NovaMAR.mask_counts`).
    * decode: tokens -> latent ``[B, 4, 64, 64]`` (``PatchEmbed.unpatchify`` layout: token
      ``(h, w)``, vector ``(py, px, c)``), ``vae.unscale_`` (scaling factor), ``vae.decode``,
      ``[-1, 1] -> [0, 1]``.
    * trainable: the whole transformer; ``head_parameters`` = ``image_decoder``, ``ar_parameters``
      = the rest of the transformer. Phi and the VAE are frozen and are not parameters of this
      module (they are kept outside the module tree, shared by deep copies such as the
      reference model, and moved by ``.to()``). ``transformer.text_embed.encoders`` holds the
      tokenizer and Phi inside the transformer, as the official pipeline wires them;
      ``copy.deepcopy`` shares them all the same (:meth:`FrozenPartsMixin.__deepcopy__`).

    Memory of the weights at bf16 (parameter counts of the official classes built with the real
    configs on the meta device: transformer d48w1024 = video encoder vit_d16w1024 + image encoder
    vit_d32w1024 + head mlp_d6w1024, text 2560 x 256; Phi-2 text encoder, 32 x 2560, vocab 51200,
    incl. its unused ``lm_head``; SD VAE 128/256/512/512, 4 latent channels):

    =========================  =============  ===============================
    part                       parameters     bf16
    =========================  =============  ===============================
    transformer (trained)        645,693,456  1.29 GB (+2.6 MB of buffers)
    Phi text encoder (frozen)  2,779,683,840  5.56 GB
    VAE (frozen)                  83,653,863  0.17 GB
    policy                     3,509,031,159  7.02 GB (6.54 GiB)
    KL reference (deepcopy)      645,693,456  1.29 GB: the transformer only
    policy + reference                        8.31 GB (7.74 GiB)
    =========================  =============  ===============================

    (A deep copy that also copied Phi would cost 5.56 GB more: 13.87 GB for both. Gradients and AdamW
    state of the transformer come on top.)

    Sampling defaults: CFG 5 (batch [cond; uncond]), 64 AR steps, 25 head steps.
    """
    TRAINED, HEAD = "transformer", "image_decoder"
    SHARED = ("tokenizer", "scheduler")

    learned_variance = False

    def __init__(self, transformer: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer,
                 scheduler, sampling: dict | None = None, negative_prompt: str = "",
                 gradient_checkpointing: bool = False, source: str = ""):
        super().__init__()
        self.transformer = transformer
        self._init_frozen(vae=vae, text_encoder=text_encoder)
        self.tokenizer, self.negative_prompt, self.source = tokenizer, negative_prompt, source
        tcfg = transformer.config
        self.sampling = SamplingSpec(**(sampling or NOVA_SAMPLING))
        pe = transformer.image_encoder.patch_embed
        self.patch, self.latent_channels = int(pe.patch_size), int(pe.image_dim)
        self.grid = tuple(int(s) for s in tcfg.image_base_size)              # (32, 32)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.token_dim = self.patch ** 2 * self.latent_channels             # 16
        size = tcfg.image_size
        self.image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.vae_stride = int(tcfg.image_stride)
        if self.grid[0] * self.patch * self.vae_stride != self.image_size:
            raise ValueError(f"NOVA config: image_base_size {self.grid} x patch {self.patch} x stride "
                             f"{self.vae_stride} != image_size {self.image_size}")
        # the posterior of the scheduler shipped with the weights (an unsupported setting is an error here)
        self.schedule = nova_schedule(scheduler, self.sampling.diffusion_steps)
        self.scheduler = scheduler
        transformer.text_embed.encoders = [tokenizer, text_encoder]
        transformer.text_embed.dropout = 0.0          # training-time prompt dropout must stay off
        disable_dropout(transformer)
        self.set_gradient_checkpointing(gradient_checkpointing)

    # --- sizes / dtype -----------------------------------------------------------------
    # tensors that diffnext's modules derive at their first forward, on that device and dtype, and
    # then reuse: ``PosEmbed.space_embed``, ``VideoPosEmbed.time_embed``, ``TimeCondEmbed.time_freq``
    # (plain attributes, not buffers) and ``PhiModel.cache`` (rotary tables, rebuilt when its
    # ``device`` is None)
    _FIRST_USE_CACHES = ("space_embed", "time_embed", "time_freq")

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        # .to()/.half() after a first forward: drop the caches, the next forward rebuilds them where
        # the weights are now (left stale they mix float32 and bf16, or two devices)
        for m in (*self.transformer.modules(), *(mm for f in self._frozen.values() for mm in f.modules())):
            for name in self._FIRST_USE_CACHES:
                if isinstance(m.__dict__.get(name), torch.Tensor):
                    m.__dict__[name] = None
            if type(m).__name__ == "PhiCache" and getattr(m, "device", None) is not None:
                m.device = None
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.mask_embed.mask_token.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.mask_embed.mask_token.device

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        t = self.transformer
        for enc in (t.video_encoder, t.image_encoder):
            for blk in enc.blocks:
                blk.attn_checkpointing = blk.mlp_checkpointing = on
        for blk in t.image_decoder.blocks:
            blk.mlp_checkpointing = on

    # --- token <-> latent layout (PatchEmbed.patchify / unpatchify) ---------------------------
    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, p*p*c]`` (token (h, w) row-major, vector (py, px, c)) -> ``[B, c, h*p, w*p]``."""
        b, p, c, (h, w) = tokens.shape[0], self.patch, self.latent_channels, self.grid
        x = tokens.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h * p, w * p)

    def latents_to_tokens(self, lat: torch.Tensor) -> torch.Tensor:
        b, p, c, (h, w) = lat.shape[0], self.patch, self.latent_channels, self.grid
        x = lat.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h * w, p * p * c)

    # --- prompts -------------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> Prompts:
        """Each distinct text through Phi-2 and the video encoder once, its rows repeated."""
        unique = list(dict.fromkeys(texts))
        if len(unique) == len(texts):
            return self._encode_rows(texts)
        enc = self._encode_rows(unique)
        where = torch.tensor([unique.index(t) for t in texts], device=enc.emb.device)
        return enc.index(where)

    def _encode_rows(self, texts: Sequence[str]) -> Prompts:
        """Every text through Phi-2 and the video encoder, one row each."""
        t = self.transformer
        text = t.text_embed(list(texts))                                       # [B, 256, D]
        b = text.shape[0]
        x = torch.zeros(b, self.latent_channels, *(g * self.patch for g in self.grid), device=self.device, dtype=self.dtype)
        n_video = t.video_encoder.patch_embed(x).shape[1]                      # sets patch_embed.hw as official
        c = t.mask_embed.bos_token.expand(b, n_video, -1).clone()
        pos = None
        if t.image_pos_embed is not None:   # RoPE variant: time/space positions come from the rotary embedding
            pos = t.video_pos_embed.get_pos(1)
        else:
            c = t.video_pos_embed(c + t.video_pos_embed.get_time_embed(1)[0])
        t.video_encoder.enable_kvcache(False)
        c = t.video_encoder(c, text, pos=pos)                                   # [B, 256, D]
        return Prompts(c, torch.zeros(c.shape[:2], dtype=torch.bool, device=c.device))

    def encode_prompts(self, prompts: Sequence[str]) -> Prompts:
        return self._encode(list(prompts))

    def encode_negative(self, n: int) -> Prompts:
        return self._encode([self.negative_prompt] * n)

    # --- mask schedule ---------------------------------------------------------------------------
    def mask_counts(self, ar_steps: int) -> list[int]:
        """Tokens made known at each AR step: NOVA's cosine schedule with the steps that would make
        no token known dropped (``NOVAPipeline.__call__`` ``num_preds``, filtered ``> 0`` by
        ``Transformer3DModel.generate_frame``); e.g. 1024 tokens x 64 steps run 63 AR passes."""
        from marpipe.grpo import nova_mask_counts
        return nova_mask_counts(self.num_tokens, ar_steps)

    # --- AR step ---------------------------------------------------------------------------------
    def ar_forward(self, canvas: torch.Tensor, known: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        if prompts.pad.any():
            raise ValueError("NOVA prompt encodings never have padding (all 256 positions are used)")
        t = self.transformer
        parts = []
        for rows in rows_by_known_count(known):
            kn = known[rows]
            lat = self.tokens_to_latents(canvas[rows].to(self.dtype))
            z = t.image_encoder.patch_embed(lat)                                 # [b, N, D]
            m = (~kn).unsqueeze(-1).to(z.dtype)
            z = z * (1 - m) + t.mask_embed.mask_token * m
            k = int(kn[0].sum())
            prev_ids = kn.nonzero(as_tuple=True)[1].view(len(rows), k, 1) if k else \
                torch.zeros(len(rows), 0, 1, dtype=torch.long, device=z.device)
            pos = t.image_pos_embed.get_pos(1, len(rows)) if t.image_pos_embed is not None else None
            parts.append((rows, t.image_encoder(z, prompts.emb[rows].to(z.dtype), prev_ids, pos=pos)))
        out = merge_rows(parts, canvas.shape[0])
        return to_float(out)

    # --- head --------------------------------------------------------------------------------
    def head(self, x_t: torch.Tensor, step: torch.Tensor, z: torch.Tensor):
        m, p, c = x_t.shape[0], self.patch, self.latent_channels
        tt = self.schedule.table("timesteps", step.device)[step]
        x = x_t.to(self.dtype).reshape(m, p, p, c).permute(0, 3, 1, 2)         # one token as a p x p latent patch
        eps = self.transformer.image_decoder(x, tt, z.to(self.dtype).unsqueeze(1))
        return to_float(eps.reshape(m, self.token_dim)), None

    # --- decode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        vae = self._frozen["vae"]
        out = []
        for part in latents.split(chunk):
            lat = vae.unscale_(self.tokens_to_latents(part.to(self.dtype)).clone())
            out.append(to_float(vae.decode(lat).sample))
        return ((torch.cat(out) + 1) / 2).clamp(0, 1)

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path, device="cuda", dtype=torch.bfloat16, verify: bool = True,
                        gradient_checkpointing: bool = False, sampling: dict | None = None) -> NovaMAR:
        """Load a downloaded ``BAAI/nova-d48w1024-sd512`` folder: manifest check, the modules of the
        architecture ``model_index.json`` declares (:func:`~marpipe.models.registry.build_architecture`),
        strict safetensors loading."""
        from marpipe.models.download import load_strict, load_weights, verify_manifest
        from marpipe.models.registry import build_architecture
        folder = Path(folder)
        if verify:
            verify_manifest(folder)
        built = build_architecture("nova", folder, dtype)
        parts = built.modules
        for name in ("transformer", "vae", "text_encoder"):
            files = sorted((folder / name).glob("*.safetensors")) or sorted((folder / name).glob("*.bin"))
            if not files:
                raise FileNotFoundError(f"{folder}/{name}: no weight files (safetensors or .bin)")
            load_strict(parts[name], load_weights(files), f"NOVA {name} ({folder / name})")
        model = cls(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"],
                    sampling=sampling or built.sampling, gradient_checkpointing=gradient_checkpointing,
                    source=f"{folder} ({built.note})" if built.note else str(folder))
        return model.to(device=device, dtype=dtype)


def _load_official_nova(folder: Path, dtype) -> Built:
    """The pipeline components built by ``diffnext``'s own classes (weights then loaded strictly)."""
    try:
        from diffnext.pipelines import NOVAPipeline
    except ImportError as exc:
        raise ImportError("loading real NOVA weights needs the 'diffnext' package (github baaivision/NOVA at "
                          f"{DIFFNEXT_COMMIT[:12]}); run in .venv-nova (make official-venvs installs it), the deployment of NOVA's jobs") from exc
    pipe = NOVAPipeline.from_pretrained(str(folder), torch_dtype=dtype, trust_remote_code=True)
    return Built(dict(transformer=pipe.transformer, vae=pipe.vae, text_encoder=pipe.text_encoder,
                      tokenizer=pipe.tokenizer, scheduler=pipe.scheduler))


register_architecture("nova", "NOVAPipeline", _load_official_nova)
