"""GRPO settings: one dataclass, the names of the paper (``fix_decoder``, ``mte``, ``S``, ``top_k``,
``sim``, ``tau``, ``beta``).

Each difference between the paper's equations and the reference trainers is one key
(:data:`SWITCHES`); ``preset`` sets them all at once (:data:`PRESETS`: ``paper``, the equations as
printed; ``reference``, the trainer of the model's family), and a key given explicitly overrides
it. The resolved values are what :meth:`to_dict` returns (MLflow params, ``summary.json``,
checkpoint metadata). The table of switches: ``docs/method.md``, "How the loss is assembled"."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the fix."""


class _FromPreset:
    """Default of a switch: the preset decides (replaced in ``__post_init__``)."""

    def __repr__(self) -> str:
        return "<from preset>"

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


FROM_PRESET = _FromPreset()
FAMILIES = ("nova", "harmon")

# The switches and their values (choices; "bool", "int >= 0" or "number > 0 | null" otherwise).
SWITCHES: dict[str, tuple] = {
    "ratio": ("rollout", "on_policy"),
    "logp_reduction": ("sum", "mean"),
    "kl_reduction": ("sum", "mean"),
    "ar_step_reduction": ("mean", "sum"),
    "token_mean": ("image", "step"),
    "train_final_step": (False, True),
    "shared_diffusion_steps": (False, True),
    "clip_range": None,
    "loss_tokens": ("unknown", "after_step"),
    "granularity": ("token", "pixel"),
    "top_k_count": ("round", "floor"),
    "top_k_random": None,
    "S": None,
    "mte_rollout_in_average": (False, True),
    "mte_scope": ("step", "image"),
    "mte_guided": (False, True),
    "mte_variance": ("own", "rollout"),
    "sim_skip_steps": None,
    "sim_keep_step_tokens": (False, True),
    "sim_mask_kl": (False, True),
}

_PAPER = dict(
    ratio="rollout",              # Eq. 13: pi_theta / pi_theta_old, theta_old recorded at the rollout
    logp_reduction="sum",         # Eq. 12: ||x - mu||^2 / Sigma, the token's channels summed
    kl_reduction="sum",           # Eq. 14 per channel, summed like Eq. 12 (one Gaussian per token)
    ar_step_reduction="mean",     # Eq. 7: 1 / (|M| |T|) sum
    token_mean="image",           # Eq. 3's expectation over images i: a token mean per image
    train_final_step=False,       # Eq. 12 has no density where Sigma_t = 0 (the last DDPM step)
    shared_diffusion_steps=True,  # Eq. 7 / Alg. 2: one set T for every m in M
    clip_range=0.2,               # Eq. 3 clips; epsilon is not given: PPO's 0.2
    loss_tokens="unknown",        # Sec. 3.2: all tokens predicted at the step
    granularity="token",          # Eq. 9-11: u_i, M_i, sim per token i
    top_k_count="round",          # "top-k% tokens"
    top_k_random=0,
    S=3,                          # not given for Table 2 (Fig. 7: gains up to S < 5)
    mte_rollout_in_average=True,  # Eq. 10: l^(1), the rollout's, is one of the S trajectories
    mte_scope="image",            # App. D.1: "after obtaining the full AR latent" (Alg. 2 l. 8: step)
    mte_guided=True,              # the S trajectories are drawn as the rollout's (with its CFG)
    mte_variance="own",           # Eq. 12 with the variance each transition was sampled with
    sim_skip_steps=0,             # Eq. 11 at every step (sim(-1) = 0)
    sim_keep_step_tokens=False,   # Eq. 11 alone
    sim_mask_kl=False,            # Sec. 3.4: kappa weights l_{m,t}; Eq. 10's KL term is separate
)
_REFERENCE_COMMON = dict(
    ratio="on_policy",            # exp(logp - logp.detach()) * A
    ar_step_reduction="sum",      # one backward per AR step, gradients summed
    token_mean="step",            # sum(loss * mask) / sum(mask) over head steps and images
    train_final_step=True,        # randperm over all 25 head steps
    clip_range=None,              # unclipped
    top_k_count="floor",          # max(1, int(k N))
    mte_rollout_in_average=False,  # the extra seeds only, in the uncertainty and in the average
    mte_scope="image",            # seeds drawn once per image from each token's acceptance z
    mte_variance="rollout",       # the seeds' log-probs use the rollout's recorded variance
    sim_skip_steps=2,             # `i > 1`
    sim_keep_step_tokens=True,    # clamp(kappa * completion + this step's tokens, 0, 1)
    sim_mask_kl=False,            # the KL covers all predicted tokens
)
PRESETS: dict[str, dict] = {
    "paper": {f: _PAPER for f in FAMILIES},
    "reference": {
        "nova": {**_REFERENCE_COMMON, "logp_reduction": "mean", "kl_reduction": "mean",
                 "shared_diffusion_steps": False, "loss_tokens": "unknown", "granularity": "pixel",
                 "top_k_random": 1, "S": 3, "mte_guided": False},
        "harmon": {**_REFERENCE_COMMON, "logp_reduction": "sum", "kl_reduction": "sum",
                   "shared_diffusion_steps": True, "loss_tokens": "after_step", "granularity": "token",
                   "top_k_random": 0, "S": 5, "mte_guided": True},
    },
}
assert all(set(v) == set(SWITCHES) for p in PRESETS.values() for v in p.values())


@dataclass
class GRPOConfig:
    # variants (Table 2): each an independent switch
    fix_decoder: bool = False         # freeze the diffusion head (train the AR part only)
    mte: bool = False                 # multi-trajectory expectation (Eq. 8-10)
    top_k: float = 0.3                # fraction of most uncertain tokens that get MTE
    sim: bool = False                 # consistency-aware token selection (Eq. 11)
    tau: float = 0.0                  # threshold of Eq. 11
    trainable: str = "all"            # all | ar | head (the Harmon warm-up trains the head only)
    # GRPO
    beta: float = 0.01                # KL weight
    guided_logp: bool = False         # log-probs with the CFG-guided mean (False: conditional branch, reference)
    group_size: int = 4               # G
    prompts_per_step: int = 3         # prompts per optimisation step (global batch)
    train_ar_steps: int = 12          # |M|: AR steps trained per rollout
    train_diffusion_steps: int = 10   # |T|: head steps trained per AR step
    cfg_scale: float | None = None    # None: the model's default
    # how the loss is assembled: `preset` sets every switch below (PRESETS); a key given overrides it
    preset: str = "paper"             # paper (the equations) | reference (the trainers behind the paper's numbers)
    model_family: str | None = None   # nova | harmon: whose reference trainer (the pipeline sets it from the model)
    ratio: str = FROM_PRESET                   # rollout: Eq. 13's pi/pi_old | on_policy: exp(logp - sg(logp))
    logp_reduction: str = FROM_PRESET          # a token's (pixel's) log-prob over its channels: sum | mean
    kl_reduction: str = FROM_PRESET            # the KL surrogate (Eq. 14) over the channels: sum | mean
    ar_step_reduction: str = FROM_PRESET       # the losses of the |M| AR steps: mean (Eq. 7) | sum
    token_mean: str = FROM_PRESET              # token mean per image (image) or pooled over an AR step (step)
    train_final_step: bool = FROM_PRESET       # may |T| include the deterministic last head step?
    shared_diffusion_steps: bool = FROM_PRESET  # one set of trained head steps for all AR steps
    clip_range: float | None = FROM_PRESET     # Eq. 3 clip; None = unclipped (reference code)
    loss_tokens: str = FROM_PRESET             # unknown (before the step) | after_step (Harmon reference)
    granularity: str = FROM_PRESET             # token | pixel (NOVA reference: latent pixels, 4 channels)
    top_k_count: str = FROM_PRESET             # round(k N) | floor: max(1, int(k N))
    top_k_random: int = FROM_PRESET            # random tokens (pixels) per image added to M
    S: int = FROM_PRESET                       # MTE trajectories averaged (Eq. 8-10)
    mte_rollout_in_average: bool = FROM_PRESET  # the rollout is l^(1), one of the S trajectories
    mte_scope: str = FROM_PRESET               # step: S trajectories per trained AR step | image: once per image
    mte_guided: bool = FROM_PRESET             # extra trajectories sampled with the rollout's CFG
    mte_variance: str = FROM_PRESET            # the extras' log-prob variance: their own | the rollout's
    sim_skip_steps: int = FROM_PRESET          # AR steps 0..n-1 are never Sim-masked
    sim_keep_step_tokens: bool = FROM_PRESET   # Sim also keeps the tokens accepted at the step
    sim_mask_kl: bool = FROM_PRESET            # the Sim mask also applies to the KL term
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
        self._resolve_preset()
        self.validate()

    def _resolve_preset(self) -> None:
        unset = [k for k in SWITCHES if getattr(self, k) is FROM_PRESET]
        if self.preset not in PRESETS:
            raise ConfigError(f"train.preset = {self.preset!r}: must be one of {', '.join(map(repr, PRESETS))}")
        if self.model_family is not None and self.model_family not in FAMILIES:
            raise ConfigError(f"train.model_family = {self.model_family!r}: must be one of 'nova', 'harmon'")
        if not unset:
            return
        family = self.model_family
        if family is None:
            if self.preset == "reference":
                raise ConfigError(
                    "train.preset = 'reference': the NOVA and Harmon reference trainers differ; set "
                    "train.model_family (nova | harmon), as the pipeline does from models.<name>.adapter")
            family = FAMILIES[0]           # the paper preset is the same for both
        for k in unset:
            setattr(self, k, PRESETS[self.preset][family][k])

    @property
    def trained_parts(self) -> str:
        """What trains: ``fix_decoder`` implies the AR part only."""
        return "ar" if self.fix_decoder else self.trainable

    @property
    def trajectories(self) -> int:
        """Head trajectories per token that a rollout records: the rollout's own, and ``S - 1``
        extra ones, or ``S`` when the rollout is not one of the averaged trajectories."""
        if not self.mte:
            return 1
        return self.S if self.mte_rollout_in_average else self.S + 1

    def switches(self) -> dict:
        """The resolved loss-assembly switches, with the preset and family they came from."""
        return {"preset": self.preset, "model_family": self.model_family,
                **{k: getattr(self, k) for k in SWITCHES}}

    def validate(self) -> None:
        def bad(key, msg):
            raise ConfigError(f"train.{key} = {getattr(self, key)!r}: {msg}")
        if self.trainable not in ("all", "ar", "head"):
            bad("trainable", "must be one of 'all', 'ar', 'head'")
        if self.fix_decoder and self.trainable == "head":
            bad("trainable", "'head' contradicts fix_decoder: true (which freezes the head)")
        if not 0.0 <= self.top_k <= 1.0:
            bad("top_k", "must be in [0, 1]")
        if not isinstance(self.S, int) or self.S < 1:
            bad("S", "must be an integer >= 1")
        if (self.mte or self.sim) and not self.fix_decoder:
            bad("fix_decoder", "+MTE and +Sim build on +Fix Decoder: set fix_decoder: true")
        if self.group_size < 2:
            bad("group_size", "must be >= 2 (advantages are relative within a group)")
        if self.clip_range is not None and not self.clip_range > 0:
            bad("clip_range", "must be > 0, or null for the unclipped objective")
        for key, choices in SWITCHES.items():
            if choices is not None and getattr(self, key) not in choices:
                bad(key, f"must be one of {', '.join(map(repr, choices))}")
        if self.loss_tokens == "after_step" and self.ratio == "rollout":
            bad("loss_tokens", "needs ratio: on_policy: the after-step AR forward (accepted tokens known, as "
                               "zeros) is not the rollout's, so no pi_old was recorded under it")
        for key in ("top_k_random", "sim_skip_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                bad(key, "must be an integer >= 0")
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
    def from_dict(cls, d: dict) -> GRPOConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"train.{unknown[0]}: unknown key; known keys: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)
