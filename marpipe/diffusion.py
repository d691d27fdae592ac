"""Noise schedules and Gaussian posteriors of the diffusion head (pure math).

The head denoises one token at a time, conditioned on the AR output ``z``, with a DDPM posterior
on a *respaced* schedule: trained on ``T_train`` steps (1000 for NOVA and Harmon), sampled on
``T_sample`` of them (25 in the paper); each transition is ``p(x_{t-1} | x_t, x0_hat) = N(mu,
sigma^2)`` (paper App. A.1, Eq. 12), its variance fixed or learned (:func:`posterior_log_var`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

VARIANCE_FLOOR = 1e-12


def betas_for(kind: str, num_steps: int) -> torch.Tensor:
    """Training betas: ``scaled_linear`` (Stable Diffusion's, used by NOVA's DDPM scheduler),
    ``linear`` (DDPM) or ``cosine`` (improved DDPM; Harmon's MAR head)."""
    if kind == "scaled_linear":
        return torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_steps, dtype=torch.float64) ** 2
    if kind == "linear":
        scale = 1000.0 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        f = lambda t: math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2
        return torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(num_steps)],
                            dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r} (use 'scaled_linear', 'linear' or 'cosine')")


@dataclass(frozen=True)
class Schedule:
    """A respaced sampling schedule, index 0 = the noisiest sampling step.

    ``timesteps[i]`` is the training timestep of sampling step ``i``; the
    per-step tensors are float64 on CPU and cast where used.
    """
    timesteps: torch.Tensor      # [T] long, decreasing
    abar: torch.Tensor           # [T] alpha-bar at each step
    abar_prev: torch.Tensor      # [T] alpha-bar of the next (less noisy) step; 1 at the end
    beta: torch.Tensor           # [T] effective beta of the respaced transition
    post_var: torch.Tensor       # [T] fixed posterior variance, floored
    coef_x0: torch.Tensor        # [T] posterior mean coefficient on x0_hat
    coef_xt: torch.Tensor        # [T] posterior mean coefficient on x_t
    clip_x0: float | None = None # clamp x0_hat to [-clip_x0, clip_x0] before the posterior mean
                                 # (diffusers' DDPMScheduler ``clip_sample``); None: no clamp
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    @classmethod
    def from_abar(cls, abar_all, timesteps) -> Schedule:
        """Sampling at training ``timesteps`` (strictly decreasing) of a model trained with
        cumulative ``abar_all``; the step after the last has ``abar_prev = 1``."""
        abar_all = torch.as_tensor(abar_all, dtype=torch.float64).cpu()
        ts = torch.as_tensor(timesteps, dtype=torch.long).cpu()
        if ts.numel() > 1 and not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError("sampling timesteps must be strictly decreasing")
        abar = abar_all[ts]
        abar_prev = torch.cat([abar[1:], torch.ones(1, dtype=abar.dtype)])
        beta = 1.0 - abar / abar_prev
        post_var = (beta * (1.0 - abar_prev) / (1.0 - abar)).clamp_min(VARIANCE_FLOOR)
        coef_x0 = beta * abar_prev.sqrt() / (1.0 - abar)
        coef_xt = (1.0 - abar_prev) * (1.0 - beta).sqrt() / (1.0 - abar)
        return cls(ts, abar, abar_prev, beta, post_var, coef_x0, coef_xt)

    @classmethod
    def respaced(cls, kind: str, train_steps: int, sample_steps: int) -> Schedule:
        """``sample_steps`` evenly spaced timesteps (e.g. 1000 -> 25: 960, 920, ..., 0)."""
        abar_all = torch.cumprod(1.0 - betas_for(kind, train_steps), dim=0)
        ts = torch.arange(sample_steps - 1, -1, -1, dtype=torch.long) * (train_steps // sample_steps)
        return cls.from_abar(abar_all, ts)

    @property
    def learned_min_var(self) -> torch.Tensor:
        """The learned range's lower end: the posterior variance, its last step's clipped to the one
        before (ADM's ``posterior_log_variance_clipped``)."""
        post = self.post_var.clone()
        if post.numel() > 1:
            post[-1] = post[-2]
        return post

    def table(self, name: str, device) -> torch.Tensor:
        """Per-step constant ``name`` (a field or ``learned_min_var``) on ``device``, copied there once."""
        key = (name, str(torch.device(device)))
        v = self._on_device.get(key)
        if v is None:
            v = self._on_device[key] = getattr(self, name).to(device)
        return v

    def at(self, name: str, step: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Gather per-step constant ``name`` for integer ``step`` and broadcast to ``like``'s rank."""
        v = self.table(name, like.device)[step].to(like.dtype)
        return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


def predict_x0(sched: Schedule, step: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    abar = sched.at("abar", step, x_t)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def posterior_mean(sched: Schedule, step: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """mu_theta(x_t, x0_hat, t) of the DDPM posterior (App. A.1); ``x0_hat`` clamped to
    ``[-clip_x0, clip_x0]`` first when the schedule says so (diffusers' ``clip_sample``)."""
    x0 = predict_x0(sched, step, x_t, eps)
    if sched.clip_x0 is not None:
        x0 = x0.clamp(-sched.clip_x0, sched.clip_x0)
    return sched.at("coef_x0", step, x_t) * x0 + sched.at("coef_xt", step, x_t) * x_t


def posterior_log_var(sched: Schedule, step: torch.Tensor, like: torch.Tensor,
                      v: torch.Tensor | None = None) -> torch.Tensor:
    """Log variance: fixed (``v is None``, NOVA-style heads that predict ``eps``: the posterior
    variance ``beta_t (1 - abar_prev) / (1 - abar_t)``, floored at 1e-12) or learned range (Harmon:
    ``v`` in [-1, 1] interpolates the log variance between ``beta_t`` and the posterior's)."""
    fixed = sched.at("post_var", step, like).log().expand_as(like)
    if v is None:
        return fixed
    # Harmon/ADM: interpolate between log(posterior variance, clipped at step 1) and log(beta)
    min_log = sched.table("learned_min_var", like.device)[step].to(like.dtype).log()
    max_log = sched.at("beta", step, like).log()
    min_log = min_log.reshape(min_log.shape + (1,) * (like.dim() - min_log.dim()))
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def sched_true_mean(sched: Schedule, step: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Mean of the true posterior ``q(x_{t-1} | x_t, x0)`` (pre-training's variational bound)."""
    return sched.at("coef_x0", step, x_t) * x0 + sched.at("coef_xt", step, x_t) * x_t
