"""Harmon (``wusize/Harmon-1_5B``, 1.5B) behind the MAR protocol: :class:`HarmonMAR` maps the official
``HarmonModel`` (the HF repo's remote code, run in ``.venv-harmon``) onto the protocol primitives, and
:meth:`HarmonMAR.from_pretrained` loads a downloaded folder. See docs/method.md.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from marpipe.diffusion import betas_for
from marpipe.models.nova import (
    FrozenPartsMixin,
    disable_dropout,
    merge_rows,
    rows_by_known_count,
    schedule_from_alphas_cumprod,
    to_float,
)
from marpipe.models.protocol import Prompts, SamplingSpec
from marpipe.models.registry import Built, register_architecture

HARMON_SAMPLING = {"ar_steps": 64, "diffusion_steps": 25, "cfg_scale": 3.0}
CHAT_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
GENERATION_TEMPLATE = "Generate an image: {text}"
NEGATIVE_PROMPT = "Generate an image."
HARMON_GITHUB_COMMIT = "4eb608765629a1d1b1ce28a85f4c3d126d98b690"   # wusize/Harmon, for reference (envs/harmon-requirements.txt)


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """ADM's evenly strided respacing for one section: ``round(i * (T - 1) / (count - 1))``."""
    if count > num_timesteps:
        raise ValueError(f"cannot take {count} of {num_timesteps} steps")
    if count <= 1:
        return [0]
    stride = (num_timesteps - 1) / (count - 1)
    return sorted({int(round(i * stride)) for i in range(count)})


class PromptKV:
    """The last prompt batch's LLM keys and values, held with the ``Prompts.emb`` they belong to (held,
    so its ``id`` cannot be reused); a copy of the adapter (the KL reference) starts empty."""

    def __init__(self):
        self.emb, self.version, self.kv = None, None, None

    def get(self, prompts: Prompts):
        if self.emb is prompts.emb and self.version == prompts.emb._version:
            return self.kv
        return None

    def put(self, prompts: Prompts, kv) -> None:
        self.emb, self.version, self.kv = prompts.emb, prompts.emb._version, kv

    def __deepcopy__(self, memo):
        return PromptKV()


class HarmonMAR(FrozenPartsMixin, nn.Module):
    """Harmon's modules driven through :class:`MARModel`.

    The official ``HarmonModel`` (transformers remote code shipped in the HF repo; the same code as github
    wusize/Harmon ``src/models``) supplies the modules; this class maps them onto the protocol (facts from
    wusize/Harmon at 4eb6087 and AMAP-ML/mar-grpo at fcb7969):

    * prompts: ``"Generate an image: {p}"`` inside the Qwen chat template
      ``<|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n``, tokenized with special
      tokens, embedded by the (frozen) LLM input embeddings -> ``Prompts.emb [B, L, 1536]``
      right-padded, ``pad`` = not attended. Negative: ``"Generate an image."`` in the same template.
    * one AR step (``HarmonModel.forward_mae_encoder`` + ``mar.forward_mae_decoder``):
      ``mar.forward_mae_encoder(tokens, mask, fake_latent, image_shape)`` (only known tokens and
      the 64 buffer slots), ``proj_in``, buffers moved to the end, the Qwen2 LLM over
      ``[prompt ; image]`` (attention mask from ``pad``, positions = cumsum - 1), buffers moved
      back, residual ``+ proj_out``, then ``mar.forward_mae_decoder(x, mask, image_shape)`` ->
      ``z [B, 1024, 1280]``. The prompt's keys and values are computed once per prompt batch (the
      LLM is frozen and the prompt is the same at every step) and each step runs the LLM on the image
      tokens only, over those keys, as ``HarmonModel.sample`` does with its ``DynamicCache``
      (``prompt_cache = False``: the prompt through the LLM at every step, a test mode).
    * head: ``mar.diffloss.net(x, t, z)`` -> ``[eps ; v]`` (learned-range variance), ``t`` the
      original timestep of a 25-step respacing (ADM ``space_timesteps``: 999, 957, ..., 0) of the
      1000-step cosine schedule.
    * mask schedule (``mask_counts``): ``HarmonModel.sample``'s MaskGIT cosine, floored: after step
      ``k`` ``max(1, min(masked - 1, floor(N cos(pi/2 (k+1)/K))))`` tokens stay masked, the last step
      makes the rest known (:func:`marpipe.grpo.harmon_mask_counts`).
    * decode: ``HarmonModel.decode`` (``tokens / vae_scale (0.2325)``, ``'b m n (c p q) -> b c (m p) (n q)'``,
      ``vae.decode``), then the official scripts' 8-bit conversion ``clamp(127.5 x + 128, 0, 255).to(uint8)``
      (wusize/Harmon ``scripts/batch_text2image.py``, mar-grpo ``generate_image_with_logp``), computed in
      the VAE's dtype as there; returned as ``uint8 / 255`` floats in ``[0, 1]``.
    * trainable (paper): the MAR encoder/decoder (``ar_parameters``: every ``mar`` parameter outside
      ``diffloss``) and the diffusion MLP (``head_parameters``: ``mar.diffloss``). The LLM,
      ``proj_in``/``proj_out`` and the VAE are frozen and are not parameters of this module.

    Sampling defaults: CFG 3 (constant), 64 AR steps, 25 head steps, 512x512 (32x32 tokens). The
    generation size can be set with ``sampling["image_size"]`` (the official scripts' ``--image_size``;
    a multiple of 16).
    """
    TRAINED, HEAD = "mar", "diffloss"

    learned_variance = True
    prompt_cache = True      # the prompt's K/V once per prompt batch; False: the prompt in every step

    def __init__(self, harmon: nn.Module, tokenizer, sampling: dict | None = None, image_size: int = 512,
                 gradient_checkpointing: bool = False, source: str = ""):
        super().__init__()
        self.mar = harmon.mar
        self._init_frozen(llm=harmon.llm, proj_in=harmon.proj_in, proj_out=harmon.proj_out, vae=harmon.vae)
        self.vae_scale = float(harmon.vae_scale)
        self.tokenizer, self.source = tokenizer, source
        spec = dict(sampling or HARMON_SAMPLING)
        image_size = int(spec.pop("image_size", image_size))   # generation size (official --image_size)
        self.sampling = SamplingSpec(**spec)
        p = int(self.mar.patch_size)
        stride = 16 * p                                   # KL-16 VAE x MAR patch
        if image_size % stride:
            raise ValueError(f"image_size {image_size} is not a multiple of {stride}")
        self.image_size, self.patch = image_size, p
        self.grid = (image_size // stride, image_size // stride)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.latent_channels = int(harmon.vae.embed_dim)
        self.token_dim = self.latent_channels * p * p
        diff = self.mar.diffloss
        abar = getattr(getattr(diff, "train_diffusion", None), "alphas_cumprod", None)
        if abar is None:
            abar = torch.cumprod(1 - betas_for("cosine", 1000), 0)
        abar = torch.as_tensor(abar, dtype=torch.float64)
        ts = space_timesteps(len(abar), self.sampling.diffusion_steps)[::-1]
        self.schedule = schedule_from_alphas_cumprod(abar, ts)
        self._kv_holder = PromptKV()
        disable_dropout(self.mar)
        disable_dropout(harmon.llm)
        self.set_gradient_checkpointing(gradient_checkpointing)

    def _apply(self, fn, *args, **kwargs):
        self._kv_holder = PromptKV()          # keys and values of another device or dtype
        return super()._apply(fn, *args, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        return self.mar.fake_latent.dtype

    @property
    def device(self) -> torch.device:
        return self.mar.fake_latent.device

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        self.mar.grad_checkpointing = on
        self.mar.diffloss.net.grad_checkpointing = on

    # --- prompts -------------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> Prompts:
        llm = self._frozen["llm"]
        ids = [self.tokenizer.encode(CHAT_TEMPLATE.format(input=t), add_special_tokens=True,
                                     return_tensors="pt")[0] for t in texts]
        width = max(len(i) for i in ids)
        eos = self.tokenizer.eos_token_id
        batch = torch.full((len(ids), width), eos, dtype=torch.long)
        pad = torch.ones(len(ids), width, dtype=torch.bool)
        for r, i in enumerate(ids):
            batch[r, : len(i)], pad[r, : len(i)] = i, False
        with torch.no_grad():
            emb = llm.get_input_embeddings()(batch.to(self.device))
        return Prompts(emb, pad.to(self.device))

    def encode_prompts(self, prompts: Sequence[str]) -> Prompts:
        return self._encode([GENERATION_TEMPLATE.format(text=p) for p in prompts])

    def encode_negative(self, n: int) -> Prompts:
        return self._encode([NEGATIVE_PROMPT] * n)

    # --- mask schedule ---------------------------------------------------------------------------
    def mask_counts(self, ar_steps: int) -> list[int]:
        """Tokens made known at each of the ``ar_steps`` steps of ``HarmonModel.sample`` (floored
        MaskGIT cosine; ``ar_steps`` AR forwards, each making at least one token known for
        ``ar_steps <= num_tokens``). Checked against the official loop in tests/official."""
        from marpipe.grpo import harmon_mask_counts
        return harmon_mask_counts(self.num_tokens, ar_steps)

    # --- AR step ---------------------------------------------------------------------------------
    def _prompt_kv(self, prompts: Prompts) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each LLM layer's ``(keys, values)`` of ``prompts`` (no gradient: the LLM and the prompt
        embeddings are frozen), computed once and kept while the same ``Prompts.emb`` tensor comes back
        (a rollout's CFG batch at every step, a loss's prompts at every trained step)."""
        from transformers.cache_utils import DynamicCache
        held = self._kv_holder.get(prompts)
        if held is not None:
            return held
        valid = (~prompts.pad).long()
        with torch.no_grad():
            out = self._frozen["llm"].model(inputs_embeds=prompts.emb.to(self.dtype), attention_mask=valid,
                                            position_ids=(valid.cumsum(1) - 1).clamp_min(0),
                                            past_key_values=DynamicCache(), use_cache=True, return_dict=True)
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self._kv_holder.put(prompts, kv)
        return kv

    def _forward_rows(self, tokens, mask, prompts: Prompts, kv=None):
        """One AR step of the rows ``tokens``; ``kv``: their prompt's per-layer keys and values
        (:meth:`_prompt_kv`), else the prompt goes through the LLM with the image tokens."""
        from transformers.cache_utils import DynamicCache
        mar, f = self.mar, self._frozen
        b, shape, buf = tokens.shape[0], self.grid, mar.buffer_size
        x_enc = mar.forward_mae_encoder(tokens, mask, mar.fake_latent.expand(b, -1), image_shape=shape)
        z_enc = f["proj_in"](x_enc)
        z_enc = torch.cat([z_enc[:, buf:], z_enc[:, :buf]], 1)            # buffers to the end
        attn = torch.cat([~prompts.pad, prompts.pad.new_ones(b, z_enc.shape[1])], 1)
        pos = (attn.long().cumsum(1) - 1).clamp_min(0)
        if kv is None:
            out = f["llm"].model(inputs_embeds=torch.cat([prompts.emb.to(z_enc.dtype), z_enc], 1),
                                 attention_mask=attn.long(), position_ids=pos, return_dict=True)
        else:                   # the image tokens only, over the prompt's cached keys and values
            out = f["llm"].model(inputs_embeds=z_enc, attention_mask=attn.long(),
                                 position_ids=pos[:, -z_enc.shape[1]:], past_key_values=DynamicCache(kv),
                                 use_cache=True, return_dict=True)
        z_llm = out.last_hidden_state[:, -z_enc.shape[1]:]
        z_llm = torch.cat([z_llm[:, -buf:], z_llm[:, :-buf]], 1)           # buffers back to the start
        x_enc = x_enc + f["proj_out"](z_llm)
        return mar.forward_mae_decoder(x_enc, mask, image_shape=shape)

    def ar_forward(self, canvas: torch.Tensor, known: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        parts = []
        kv = self._prompt_kv(prompts) if self.prompt_cache else None
        for rows in rows_by_known_count(known):
            mask = (~known[rows]).to(self.dtype)                            # 1 = still unknown (official)
            kv_rows = None if kv is None else [(k[rows], v[rows]) for k, v in kv]
            parts.append((rows, self._forward_rows(canvas[rows].to(self.dtype), mask, prompts.index(rows), kv_rows)))
        return to_float(merge_rows(parts, canvas.shape[0]))

    # --- head --------------------------------------------------------------------------------
    def head(self, x_t: torch.Tensor, step: torch.Tensor, z: torch.Tensor):
        tt = self.schedule.table("timesteps", step.device)[step]
        out = self.mar.diffloss.net(x_t.to(self.dtype), tt, z.to(self.dtype))
        eps, v = out.float().split(self.token_dim, dim=-1)
        return eps, v

    # --- decode ---------------------------------------------------------------------------------
    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, m*n, c*p*p]`` ('b m n (c p q)') -> ``[B, c, m*p, n*p]``."""
        b, p, c, (h, w) = tokens.shape[0], self.patch, self.latent_channels, self.grid
        x = tokens.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, h * p, w * p)

    def latents_to_tokens(self, lat: torch.Tensor) -> torch.Tensor:
        b, p, c, (h, w) = lat.shape[0], self.patch, self.latent_channels, self.grid
        return lat.reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """The official image: ``HarmonModel.decode`` (``z / vae_scale``, ``'b m n (c p q) -> b c (m p) (n q)'``,
        ``vae.decode``, all in the VAE's dtype) and the official scripts' 8-bit conversion
        ``torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)`` (truncation, i.e. floor, in that dtype),
        returned as float ``uint8 / 255``. marpipe's own 8-bit step (``round(255 v)``) then gives back
        exactly the official pixels."""
        vae = self._frozen["vae"]
        vdtype = next(vae.parameters()).dtype
        out = []
        for part in latents.split(chunk):
            x = vae.decode(self.tokens_to_latents(part.to(vdtype) / self.vae_scale))
            out.append(torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8))
        return torch.cat(out).float() / 255

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path, device="cuda", dtype=torch.bfloat16, verify: bool = True,
                        gradient_checkpointing: bool = False, sampling: dict | None = None,
                        image_size: int | None = None) -> HarmonMAR:
        """Load a downloaded ``wusize/Harmon-1_5B`` folder: manifest check, the modules of the
        architecture ``config.json`` declares (:func:`~marpipe.models.registry.build_architecture`),
        strict safetensors loading. ``image_size``: the generation size (default: the folder's, else 512)."""
        from marpipe.models.download import load_strict, load_weights, verify_manifest
        from marpipe.models.registry import build_architecture
        folder = Path(folder)
        if verify:
            verify_manifest(folder)
        built = build_architecture("harmon", folder, dtype)
        harmon, tokenizer = built.modules["harmon"], built.modules["tokenizer"]
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        if not files:
            raise FileNotFoundError(f"{folder}: no weight files (safetensors or .bin)")
        load_strict(harmon, load_weights(files), f"Harmon ({folder})")
        model = cls(harmon, tokenizer, sampling=sampling or built.sampling,
                    image_size=image_size or built.image_size or 512, gradient_checkpointing=gradient_checkpointing,
                    source=f"{folder} ({built.note})" if built.note else str(folder))
        return model.to(device=device, dtype=dtype)


def _build_official_harmon(folder: Path, dtype) -> Built:
    """``HarmonModel`` from the folder's own remote code (pinned by the manifest), random init;
    the caller loads the weights strictly."""
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
        model = AutoModel.from_config(config, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    except ImportError as exc:
        raise ImportError("loading real Harmon weights needs Harmon's remote-code dependencies (einops, timm, "
                          "scipy); run in .venv-harmon (make official-venvs), the deployment of Harmon's jobs") from exc
    return Built({"harmon": model, "tokenizer": tokenizer})


# wusize/Harmon-1_5B's config.json: architectures ["HarmonModel"], model_type "harmon"
register_architecture("harmon", "HarmonModel", _build_official_harmon)
register_architecture("harmon", "harmon", _build_official_harmon)
