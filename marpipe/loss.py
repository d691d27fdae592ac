"""The MAR-GRPO loss of one rollout batch: Eq. 7 with the variants of Sec. 3.3-3.4.

The model is only touched here through the protocol (``ar_forward``, ``head``);
all the arithmetic is :mod:`marpipe.grpo`. One AR forward covers all trained AR
steps of all images, and one head call covers every needed transition: the
rollout's own trajectory on all predicted tokens plus, for MTE, the extra
trajectories on the ``top_k`` most uncertain tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from marpipe import diffusion as D
from marpipe import grpo
from marpipe.config import GRPOConfig
from marpipe.models.protocol import MARModel, Prompts
from marpipe.rollout import Rollout


@dataclass
class LossOutput:
    loss: torch.Tensor
    stats: dict[str, float]


def _posterior_means(model: MARModel, ro: Rollout, z: torch.Tensor, rows: tuple, guided: bool,
                     z_uncond: torch.Tensor | None, cfg_scale: float) -> torch.Tensor:
    """Posterior means for the transitions at ``rows`` (indices into ``[J,S,T',B,N]``)."""
    j, s, t, b, n = rows
    x_t = ro.x_t[rows]
    step = ro.plan.diffusion_steps.to(x_t.device)[j, t]
    eps, _ = model.head(x_t, step, z[j, b, n])
    if guided:
        eps_u, _ = model.head(x_t, step, z_uncond[j, b, n])
        eps = eps_u + cfg_scale * (eps - eps_u)
    return D.posterior_mean(model.schedule, step, x_t, eps)


def _ar_conditions(model: MARModel, ro: Rollout, prompts: Prompts, grad: bool) -> torch.Tensor:
    """``z [J,B,N,Dz]`` recomputed from the recorded canvases (one batched AR forward)."""
    J, B, N, C = ro.canvas.shape
    with torch.set_grad_enabled(grad):
        z = model.ar_forward(ro.canvas.reshape(J * B, N, C), ro.known.reshape(J * B, N),
                             Prompts(prompts.emb.repeat(J, 1, 1), prompts.pad.repeat(J, 1)))
    return z.reshape(J, B, N, -1)


def mar_grpo_loss(model: MARModel, ro: Rollout, advantages: torch.Tensor, cfg: GRPOConfig,
                  ref_model: MARModel | None = None) -> LossOutput:
    """Loss (to minimise) of Eq. 7/10 for one rollout batch.

    Per token of each trained (AR step m, head step t): the clipped policy term on
    each trajectory (Eq. 3, 12, 13), aggregated over trajectories by the MTE mask
    (Eq. 10), plus ``beta`` times the KL surrogate (Eq. 14) on the rollout's own
    trajectory; averaged over the step's tokens (all predicted tokens, or the
    ``sim`` selection of Eq. 11), then over (m, t) and images.
    """
    J, S, Tp, B, N = ro.old_log_prob.shape
    dev = ro.x_t.device
    cfg_scale = model.sampling.cfg_scale if cfg.cfg_scale is None else cfg.cfg_scale
    predicted = ro.predicted                                              # [J,B,N]

    # which tokens enter the loss at each step
    if cfg.sim:
        # x0_before is zero at the first step, where cosine similarity gives sim(-1) = 0
        kappa = grpo.consistency_mask(ro.x0, ro.x0_before, ro.latents[None], cfg.tau)
        token_mask = grpo.sim_token_mask(kappa, predicted, ro.accepted, cfg.sim_keep_step_tokens)
    else:
        token_mask = predicted
    # MTE: the top_k most uncertain tokens of each image (reference code: ranked over the whole
    # image, once) get the multi-trajectory average wherever a step predicts them
    if S > 1:
        u = grpo.token_uncertainty(ro.x0_final)                                    # [B,N]
        uncertain = grpo.top_k_mask(u, torch.ones_like(u, dtype=torch.bool), cfg.top_k) & predicted
    else:
        uncertain = torch.zeros_like(predicted)

    # transitions to evaluate: trajectory 0 on predicted tokens, others on uncertain ones
    need = torch.zeros(J, S, Tp, B, N, dtype=torch.bool, device=dev)
    need[:, 0] = predicted[:, None]
    if S > 1:
        need[:, 1:] = uncertain[:, None, None]
    rows = need.nonzero(as_tuple=True)

    prompts = model.encode_prompts(ro.prompts)
    ar_grad = cfg.trained_parts in ("all", "ar")
    z = _ar_conditions(model, ro, prompts, grad=ar_grad)
    z_u = _ar_conditions(model, ro, model.encode_negative(B), grad=ar_grad) if cfg.guided_logp else None
    mean = _posterior_means(model, ro, z, rows, cfg.guided_logp, z_u, cfg_scale)
    logp = grpo.gaussian_log_prob(ro.x_prev[rows], mean, ro.log_var[rows])

    # transitions not evaluated keep their recorded log-prob: ratio exactly 1, no overflow
    log_prob = ro.old_log_prob.to(logp.dtype).index_put(rows, logp)
    # the extra trajectories were sampled under each token's acceptance-step condition, not this
    # step's, so no log-prob was recorded for them; one update per rollout (the paper's inner loop
    # 1) makes theta_old = theta here, and their old log-prob is the current one, detached
    old_log_prob = torch.cat([ro.old_log_prob[:, :1], log_prob[:, 1:].detach()], dim=1)
    ratio = grpo.importance_ratio(log_prob, old_log_prob)
    adv = advantages.to(dev)[None, None, None, :, None]
    policy, clipped = grpo.clipped_policy_loss(ratio, adv, cfg.clip_range)  # [J,S,T',B,N]
    per_token = grpo.mte_aggregate(policy.movedim(1, 0), uncertain[:, None])          # [J,T',B,N]

    kl = torch.zeros_like(per_token)
    if cfg.beta > 0 and ref_model is not None:
        r0 = tuple(r[rows[1] == 0] for r in rows)
        with torch.no_grad():
            z_ref = _ar_conditions(ref_model, ro, ref_model.encode_prompts(ro.prompts), grad=False)
            z_ref_u = (_ar_conditions(ref_model, ro, ref_model.encode_negative(B), grad=False)
                       if cfg.guided_logp else None)
            mean_ref = _posterior_means(ref_model, ro, z_ref, r0, cfg.guided_logp, z_ref_u, cfg_scale)
        kl_tok = grpo.kl_surrogate(mean[rows[1] == 0], mean_ref)
        j, _, t, b, n = r0
        kl = kl.index_put((j, t, b, n), kl_tok)
        per_token = per_token + cfg.beta * kl

    mask = token_mask[:, None].expand_as(per_token)
    loss = grpo.masked_mean(per_token, mask).mean()
    with torch.no_grad():
        own = need[:, 0]
        stats = {
            "loss": float(loss),
            "kl": float(grpo.masked_mean(kl, mask).mean()),
            "ratio_mean": float(ratio[:, 0][own].mean()),
            "clip_frac": float(clipped[:, 0][own].mean()),
            "tokens_in_loss": float(mask.float().mean()),
            "mte_tokens": float(uncertain.float().sum() / predicted.float().sum().clamp_min(1)),
        }
    return LossOutput(loss, stats)
