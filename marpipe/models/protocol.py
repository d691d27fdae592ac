"""The MAR model protocol: the few primitives that rollouts and losses need.

A masked-autoregressive (MAR) image model (paper Sec. 3.1) has an AR transformer that reads the
prompt and the known tokens and produces one condition ``z`` per token position, and a diffusion
head that denoises each token's latent conditioned on its ``z``. :mod:`marpipe.rollout` and
:mod:`marpipe.loss` reach models only through this protocol, so the tiny models and the NOVA and
Harmon adapters are interchangeable. Shapes: ``B`` images, ``N`` tokens per image, ``C`` channels
per token, ``M`` a flat batch of tokens."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from marpipe.diffusion import Schedule


@dataclass(frozen=True)
class SamplingSpec:
    """How a model samples by default (the paper's settings for the real models)."""
    ar_steps: int            # K mask steps (NOVA, Harmon: 64)
    diffusion_steps: int     # T sampling steps of the head (paper: 25)
    cfg_scale: float         # classifier-free guidance (NOVA 5, Harmon 3)


@dataclass
class Prompts:
    """Encoded prompts: ``emb [B, L, D]`` and ``pad [B, L]`` (True = padding)."""
    emb: torch.Tensor
    pad: torch.Tensor

    def __len__(self) -> int:
        return self.emb.shape[0]

    @staticmethod
    def cat(parts: Sequence[Prompts]) -> Prompts:
        width = max(p.emb.shape[1] for p in parts)
        embs, pads = [], []
        for p in parts:
            extra = width - p.emb.shape[1]
            embs.append(nn.functional.pad(p.emb, (0, 0, 0, extra)))
            pads.append(nn.functional.pad(p.pad, (0, extra), value=True))
        return Prompts(torch.cat(embs), torch.cat(pads))

    def repeat_interleave(self, n: int) -> Prompts:
        return Prompts(self.emb.repeat_interleave(n, 0), self.pad.repeat_interleave(n, 0))

    def index(self, idx) -> Prompts:
        return Prompts(self.emb[idx], self.pad[idx])


@runtime_checkable
class MARModel(Protocol):
    """What a MAR model must provide (all methods are pure tensor functions)."""

    num_tokens: int            # N
    token_dim: int             # C
    image_size: int            # decoded images are [B, 3, image_size, image_size]
    learned_variance: bool     # head predicts a variance (Harmon) or not (NOVA)
    sampling: SamplingSpec
    schedule: Schedule         # the respaced head schedule used for sampling

    def encode_prompts(self, prompts: Sequence[str]) -> Prompts:
        """Conditional prompt encodings (chat template etc. applied inside)."""

    def encode_negative(self, n: int) -> Prompts:
        """The unconditional / negative prompt encoding used for CFG, repeated ``n`` times."""

    def mask_counts(self, ar_steps: int) -> list[int]:
        """Tokens made known at each AR step of a ``ar_steps``-step sampling run, as the model's
        official sampler schedules them (its length is the number of AR forward passes; NOVA's
        sampler drops steps that would make no token known)."""

    def ar_forward(self, canvas: torch.Tensor, known: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """One mask step of the AR part: ``canvas [B,N,C]`` (values of known tokens;
        others ignored), ``known [B,N]`` bool -> ``z [B,N,Dz]`` for every position."""

    def head(self, x_t: torch.Tensor, step: torch.Tensor, z: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Diffusion head on a flat batch: ``x_t [M,C]``, sampling-step index ``step [M]``
        (0 = noisiest), ``z [M,Dz]`` -> ``(eps [M,C], v [M,C] or None)`` where ``v`` in
        ``[-1, 1]`` sets the learned-range variance."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Token latents ``[B,N,C]`` -> images ``[B,3,H,W]`` in ``[0, 1]``."""

    def ar_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the AR part (what ``fix_decoder`` trains)."""

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the diffusion head (frozen by ``fix_decoder``)."""
