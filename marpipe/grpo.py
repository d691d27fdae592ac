"""The GRPO math of MAR-GRPO as pure tensor functions (no I/O, no models).

Equation numbers refer to the paper (``mar-grpo-paper.txt``). Shapes: ``G`` the
group size, ``S`` trajectories, ``N`` tokens, ``C`` channels per token.
"""
from __future__ import annotations

import math

import torch

STD_EPS = 1e-4  # added to the group std (reference code)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = STD_EPS) -> torch.Tensor:
    """Eq. 6: ``A_i = (R_i - mean_group) / (std_group + eps)``.

    ``rewards [P*G]`` ordered group by group. A group whose rewards are all equal
    gets zero advantages (never NaN). Std is the unbiased sample std, as
    ``torch.std`` in the reference; a group of one has zero advantage.
    """
    r = rewards.float().reshape(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, correction=1) if group_size > 1 else torch.zeros_like(mean)
    return ((r - mean) / (std + eps)).reshape(-1)


def gaussian_log_prob_elements(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Eq. 12 per channel: ``-1/2 ((x - mu)^2 / Sigma + log(2 pi Sigma))``, elementwise."""
    return -0.5 * ((x - mean) ** 2 * torch.exp(-log_var) + log_var + math.log(2 * math.pi))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Eq. 12, per token: ``-1/2 sum_c ((x - mu)^2 / Sigma + log(2 pi Sigma))`` over the last dim."""
    return gaussian_log_prob_elements(x, mean, log_var).sum(-1)


def reduce_channels(values: torch.Tensor, how: str, units: int = 1) -> torch.Tensor:
    """``[..., C] -> [..., units]``: each unit's ``C / units`` consecutive channels summed or
    averaged (``how``: ``sum`` | ``mean``). ``units = 1``: the whole token; ``units > 1``: a token
    laid out as ``units`` latent pixels of ``C / units`` channels, channel fastest (NOVA's
    ``(py, px, c)`` patch vector)."""
    v = values.reshape(*values.shape[:-1], units, values.shape[-1] // units)
    if how == "sum":
        return v.sum(-1)
    if how == "mean":
        return v.mean(-1)
    raise ValueError(f"reduction {how!r}: use 'sum' or 'mean'")


def as_units(x: torch.Tensor, units: int) -> torch.Tensor:
    """Tokens ``[..., N, C]`` as ``[..., N * units, C / units]`` loss units (pixels, channel fastest)."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * units, x.shape[-1] // units)


def mask_units(mask: torch.Tensor, units: int) -> torch.Tensor:
    """A per-token ``[..., N]`` mask for each of the token's ``units``: ``[..., N * units]``."""
    return mask.repeat_interleave(units, dim=-1) if units > 1 else mask


def importance_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """Eq. 13 for one transition: ``r = exp(log p_theta - log p_theta_old)``."""
    return torch.exp(log_prob - old_log_prob)


def score_ratio(log_prob: torch.Tensor, log_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """The importance ratio with its value and its gradient given separately:
    ``exp(log_prob - sg(log_prob) + sg(log_ratio))``: value ``exp(log_ratio)``, gradient
    ``ratio * grad log_prob``.

    ``log_ratio = log p_theta - log p_old`` gives Eq. 13 exactly (value and gradient). Without it
    (``None``: zero) it is the reference code's ``exp(logp - logp.detach())``, the on-policy ratio:
    value 1, gradient the score ``grad log p``. Splitting a token's log-ratio over its pixels
    (``log_prob`` per pixel, ``log_ratio`` the token's) keeps the token's gradient, and stays finite
    where ``log p_theta - log p_old`` does not: a deterministic transition (variance at the floor),
    whose density is degenerate.
    """
    shift = log_prob - log_prob.detach()
    return torch.exp(shift if log_ratio is None else shift + log_ratio.detach())


def degenerate(log_var: torch.Tensor, floor: float) -> torch.Tensor:
    """Transitions whose variance sits at the ``floor`` (the deterministic last DDPM step):
    ``[..., C] -> [...]`` bool, true where any channel's variance is below ``1.1 * floor``."""
    return (log_var <= math.log(1.1 * floor)).any(-1)


def clipped_policy_loss(ratio: torch.Tensor, advantage: torch.Tensor,
                        clip_range: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The step-wise term of Eq. 3 as a loss: ``-min(r A, clip(r, 1-eps, 1+eps) A)``.

    ``clip_range=None`` is the reference code's unclipped ``-r A``. Returns the
    loss and a 0/1 tensor marking where clipping was active.
    """
    unclipped = ratio * advantage
    if clip_range is None:
        return -unclipped, torch.zeros_like(ratio)
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range) * advantage
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def kl_surrogate_elements(mean: torch.Tensor, ref_mean: torch.Tensor) -> torch.Tensor:
    """Eq. 14 per channel: ``exp(d) - d - 1`` with ``d = mu_ref - mu_theta``, elementwise."""
    d = ref_mean - mean
    return torch.exp(d) - d - 1


def kl_surrogate(mean: torch.Tensor, ref_mean: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 14, per token: the surrogate summed or averaged (``reduction``) over the channels."""
    return reduce_channels(kl_surrogate_elements(mean, ref_mean), reduction)[..., 0]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=-1) -> torch.Tensor:
    """Mean of ``values`` over ``dim`` where ``mask`` is 1; 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def token_uncertainty(x0_trajectories: torch.Tensor) -> torch.Tensor:
    """Eq. 9: ``u = std over the S trajectories' final x0``, averaged over channels.

    ``x0_trajectories [S, ..., N, C] -> u [..., N]``. Population std (S=1 -> 0).
    """
    return x0_trajectories.std(dim=0, correction=0).mean(-1)


def top_k_mask(uncertainty: torch.Tensor, candidates: torch.Tensor, top_k: float, count: str = "round",
               extra_random: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary mask M of Eq. 10: the ``top_k`` fraction most uncertain candidate tokens.

    ``uncertainty [..., N]``, ``candidates [..., N]`` bool (tokens the step
    predicts). Per row, ``k`` tokens are selected: ``count = "round"``: ``round(top_k * n)``;
    ``"floor"``: ``max(1, int(top_k * n))`` (reference code), ``n`` the row's candidates.
    ``extra_random`` more candidates per row are added, drawn uniformly (NOVA reference:
    one pixel, the top ``extra_random`` of ``torch.rand(*rows, N, generator=generator)``).
    """
    u = uncertainty.masked_fill(~candidates, float("-inf"))
    n = candidates.sum(-1).double()                                         # [...]
    if count == "round":
        k = torch.round(top_k * n).long()
    elif count == "floor":
        k = torch.floor(top_k * n).long().clamp_min(1)
    else:
        raise ValueError(f"top-k count {count!r}: use 'round' or 'floor'")
    order = u.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(u.shape[-1], device=u.device).expand_as(order))
    mask = (rank < k[..., None]) & candidates
    if extra_random > 0:
        r = torch.rand(uncertainty.shape, generator=generator).to(u.device).masked_fill(~candidates, -1.0)
        pick = r.topk(min(extra_random, r.shape[-1]), dim=-1).indices
        mask = mask | (torch.zeros_like(mask).scatter_(-1, pick, True) & candidates)
    return mask


def mte_aggregate(per_traj_loss: torch.Tensor, mask: torch.Tensor, include_rollout: bool = True) -> torch.Tensor:
    """Eq. 10 (policy part): ``M * mean_s l^(s) + (1 - M) * l^(1)``.

    ``per_traj_loss [S, ...]`` (trajectory 0 is the rollout's own), ``mask [...]``. With
    ``include_rollout = False`` (reference code) the mean is over the extra trajectories only.
    """
    m = mask.to(per_traj_loss.dtype)
    pool = per_traj_loss if include_rollout or per_traj_loss.shape[0] == 1 else per_traj_loss[1:]
    return m * pool.mean(0) + (1 - m) * per_traj_loss[0]


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity over the channel (last) dim."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


def consistency_mask(x0_step: torch.Tensor, x0_prev_step: torch.Tensor | None,
                     x_final: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 11: ``kappa(m) = 1[sim(m) - sim(m-1) > tau]`` per token.

    ``sim(m)`` is the cosine between the step-``m`` predicted clean latent and the
    final latent. Before the first step there is no prediction: ``sim(-1) = 0``.
    """
    sim = cosine_similarity(x0_step, x_final)
    prev = torch.zeros_like(sim) if x0_prev_step is None else cosine_similarity(x0_prev_step, x_final)
    return (sim - prev) > tau


def sim_token_mask(kappa: torch.Tensor, predicted: torch.Tensor, step_tokens: torch.Tensor,
                   keep_step_tokens: bool = True) -> torch.Tensor:
    """Tokens that enter the loss at a step under ``sim``.

    ``kappa * predicted``, plus (reference-code behaviour, ``keep_step_tokens``)
    the tokens accepted at the step itself: ``clamp(kappa*mask + step_tokens, 0, 1) * mask``
    (``predicted``: the step's loss tokens, whichever set ``loss_tokens`` names).
    """
    keep = kappa & predicted
    return keep | (step_tokens & predicted) if keep_step_tokens else keep


def _check_steps(num_tokens: int, steps: int) -> None:
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"ar_steps={steps} must be in [1, num_tokens={num_tokens}]")


def cosine_mask_counts(num_tokens: int, steps: int) -> list[int]:
    """Tokens made known at each of ``steps`` mask steps (cosine schedule).

    ``masked_after(k) = round(cos(pi/2 * (k+1)/K) * N)``, at least one token per
    step, summing to ``N``.
    """
    _check_steps(num_tokens, steps)
    masked = num_tokens
    counts = []
    for k in range(steps):
        after = int(round(math.cos(math.pi / 2 * (k + 1) / steps) * num_tokens))
        after = max(min(after, masked - 1), steps - k - 1)  # >= 1 token now and per later step
        counts.append(masked - after)
        masked = after
    assert sum(counts) == num_tokens and min(counts) >= 1
    return counts


def nova_mask_counts(num_tokens: int, steps: int) -> list[int]:
    """NOVA's schedule: ``masked(k) = round(cos(pi/2 * k/K) * N)`` for ``k = 0..K`` (numpy's
    round half to even), ``count_k = masked(k) - masked(k+1)``, and the steps that would make
    no token known are dropped, so fewer than ``K`` AR steps may run (baaivision/NOVA@2cd254a:
    ``diffnext/pipelines/nova/pipeline_nova.py`` ``__call__`` computes ``num_preds``,
    ``diffnext/models/transformers/transformer_3d.py`` ``generate_frame`` keeps those ``> 0``).
    More steps than tokens is allowed, as there: the empty ones are dropped."""
    if steps < 1:
        raise ValueError(f"ar_steps={steps} must be >= 1")
    import numpy as np
    masked = np.round(np.cos(0.5 * np.pi * np.arange(steps + 1) / steps) * num_tokens).astype("int64")
    return [int(c) for c in masked[:-1] - masked[1:] if c > 0]


def harmon_mask_counts(num_tokens: int, steps: int) -> list[int]:
    """Harmon's (MAR's) schedule: after step ``k`` ``floor(N * cos(pi/2 * (k+1)/K))`` tokens stay
    masked, clamped to ``[1, still masked - 1]``; the last step makes every remaining token known
    (wusize/Harmon@4eb6087: ``src/models/harmon.py`` ``HarmonModel.sample``)."""
    _check_steps(num_tokens, steps)
    masked, counts = num_tokens, []
    for k in range(steps):
        if k == steps - 1:
            after = 0
        else:
            after = max(1, min(masked - 1, math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps))))
        counts.append(masked - after)
        masked = after
    return counts
