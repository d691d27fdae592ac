"""GRPO settings: one dataclass, the names of the paper (``fix_decoder``, ``mte``, ``S``,
``top_k``, ``sim``, ``tau``, ``beta``)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the fix."""


@dataclass
class GRPOConfig:
    # variants (Table 2): each an independent switch
    fix_decoder: bool = False         # freeze the diffusion head (train the AR part only)
    mte: bool = False                 # multi-trajectory expectation (Eq. 8-10)
    S: int = 3                        # trajectories for MTE (reference: 3 NOVA, 5 Harmon)
    top_k: float = 0.3                # fraction of most uncertain tokens that get MTE
    sim: bool = False                 # consistency-aware token selection (Eq. 11)
    tau: float = 0.0                  # threshold of Eq. 11
    sim_keep_step_tokens: bool = True # also keep the tokens accepted at the step (reference code)
    trainable: str = "all"            # all | ar | head (the Harmon warm-up trains the head only)
    # GRPO
    beta: float = 0.01                # KL weight
    clip_range: float | None = 0.2    # Eq. 3 clip; None = unclipped (reference code)
    guided_logp: bool = False         # log-probs with the CFG-guided mean (False: conditional branch, reference)
    group_size: int = 4               # G
    prompts_per_step: int = 3         # prompts per optimisation step (global batch)
    train_ar_steps: int = 12          # |M|: AR steps trained per rollout
    train_diffusion_steps: int = 10   # |T|: head steps trained per AR step
    train_final_step: bool = False    # may |T| include the last head step? Its posterior variance is
                                      # floored at 1e-12 (a deterministic step), which makes its log-prob
                                      # gradient ~1e6x the others; the reference code includes it
    cfg_scale: float | None = None    # None: the model's default
    # optimisation
    lr: float = 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    steps: int = 500
    seed: int = 0
    save_every: int = 50
    skip_nonfinite: bool = False      # skip a step with NaN/Inf loss or grads instead of stopping
    reward: str = "hps"
    reward_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    @property
    def trained_parts(self) -> str:
        """What trains: ``fix_decoder`` implies the AR part only."""
        return "ar" if self.fix_decoder else self.trainable

    @property
    def trajectories(self) -> int:
        return self.S if self.mte else 1

    def validate(self) -> None:
        def bad(key, msg):
            raise ConfigError(f"train.{key} = {getattr(self, key)!r}: {msg}")
        if self.trainable not in ("all", "ar", "head"):
            bad("trainable", "must be one of 'all', 'ar', 'head'")
        if self.fix_decoder and self.trainable == "head":
            bad("trainable", "'head' contradicts fix_decoder: true (which freezes the head)")
        if not 0.0 <= self.top_k <= 1.0:
            bad("top_k", "must be in [0, 1]")
        if self.S < 1:
            bad("S", "must be >= 1")
        if (self.mte or self.sim) and not self.fix_decoder:
            bad("fix_decoder", "+MTE and +Sim build on +Fix Decoder: set fix_decoder: true")
        if self.group_size < 2:
            bad("group_size", "must be >= 2 (advantages are relative within a group)")
        if self.clip_range is not None and not self.clip_range > 0:
            bad("clip_range", "must be > 0, or null for the unclipped objective")
        for key in ("lr", "max_grad_norm"):
            if not getattr(self, key) > 0:
                bad(key, "must be > 0")
        if self.beta < 0:
            bad("beta", "must be >= 0")
        if math.isnan(self.tau):
            bad("tau", "must be a number")
        for key in ("prompts_per_step", "train_ar_steps", "train_diffusion_steps", "steps", "save_every"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "GRPOConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"train.{unknown[0]}: unknown key; known keys: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)
