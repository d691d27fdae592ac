"""Tiny sizes shared by the RL-core tests (a rollout takes milliseconds)."""
import torch

from marpipe.config import GRPOConfig
from marpipe.models.tiny import TinyMAR, TinyMARConfig

PROMPTS = ["a red circle", "a blue square", "two green dots", "a striped cat"]


def tiny(kind: str = "tiny-nova", seed: int = 0, **over) -> TinyMAR:
    torch.manual_seed(seed)
    cfg = TinyMARConfig.preset(kind, image_size=16, patch=4, width=32, depth=2, heads=2,
                               head_width=16, head_blocks=2, zero_init=False,
                               sampling={"ar_steps": 4, "diffusion_steps": 5,
                                         "cfg_scale": 3.0}, **over)
    return TinyMAR(cfg)


def grpo(**over) -> GRPOConfig:
    base = dict(group_size=4, prompts_per_step=2, train_ar_steps=3, train_diffusion_steps=3,
                lr=1e-3, steps=4, save_every=2, beta=0.01)
    return GRPOConfig(**{**base, **over})
