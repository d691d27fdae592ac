"""The MAR-GRPO loss of one rollout batch: Eq. 7 with the variants of Sec. 3.3-3.4.

The model is only touched here through the protocol (``ar_forward``, ``head``); all the
arithmetic is :mod:`marpipe.grpo`. One AR forward covers all trained AR steps of all images, and
one head call covers every needed transition: the rollout's own trajectory on all loss tokens
plus, for MTE, the extra trajectories on the ``top_k`` most uncertain tokens only. The config's
switches (``preset: paper | reference``) are named where they act; what each means:
``docs/method.md``, "How the loss is assembled"."""
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


@dataclass
class TokenSets:
    """Which units enter the loss at each trained AR step (``[J,B,U]`` bool, ``U = N * units``)."""
    units: int                 # loss units per token (pixels; 1 = the token)
    ar_known: torch.Tensor     # [J,B,N] what the training-time AR forward sees as known
    candidates: torch.Tensor   # [J,B,U] the step's loss tokens (``loss_tokens``)
    policy: torch.Tensor       # [J,B,U] where the policy term counts (Sim, Eq. 11)
    kl: torch.Tensor           # [J,B,U] where the KL term counts
    uncertain: torch.Tensor    # [J,B,U] MTE's M (Eq. 10): the multi-trajectory average


def units_per_token(model: MARModel, cfg: GRPOConfig) -> int:
    """Loss units per token: 1 (``granularity: token``), else the token's latent pixels (``pixel``,
    NOVA reference): a model whose token is a ``p x p`` patch of ``c``-channel latent pixels, channel
    fastest (NOVA's ``(py, px, c)``), says so with a ``latent_channels`` attribute (``c``); one
    without has one pixel per token. Uncertainty, top-k, Sim's cosine, the log-prob and KL
    reductions and the token means are then per unit; with ``ratio: rollout`` the ratio's value
    stays the token's (Eq. 13), its gradient split over the pixels
    (:func:`marpipe.grpo.score_ratio`); with ``on_policy`` it is 1 per channel."""
    if cfg.granularity == "token":
        return 1
    c = getattr(model, "latent_channels", None) or model.token_dim
    if model.token_dim % c:
        raise ValueError(f"latent_channels = {c} does not divide token_dim = {model.token_dim}")
    return model.token_dim // c


def token_sets(ro: Rollout, cfg: GRPOConfig, units: int = 1) -> TokenSets:
    """The loss's token sets for ``ro`` under ``cfg``'s switches (no model needed)."""
    J, S = ro.old_log_prob.shape[:2]
    U = lambda m: grpo.mask_units(m, units)                              # noqa: E731
    # loss_tokens: `unknown` (paper, NOVA reference): every token not known before the step;
    # `after_step` (Harmon reference): the mask after the step, whose accepted tokens the AR
    # forward then sees as known, with the value 0 of the pre-step canvas
    if cfg.loss_tokens == "after_step":
        cand_tok, ar_known = ro.predicted & ~ro.accepted, ro.known | ro.accepted
    else:
        cand_tok, ar_known = ro.predicted, ro.known
    cand, accepted = U(cand_tok), U(ro.accepted)

    policy = cand
    if cfg.sim:
        # x0_before is zero at the first step, where cosine similarity gives sim(-1) = 0
        kappa = grpo.consistency_mask(grpo.as_units(ro.x0, units), grpo.as_units(ro.x0_before, units),
                                      grpo.as_units(ro.latents, units)[None], cfg.tau)
        sim = grpo.sim_token_mask(kappa, cand, accepted, cfg.sim_keep_step_tokens)
        skip = torch.tensor([m < cfg.sim_skip_steps for m in ro.plan.ar_steps], device=cand.device)
        policy = torch.where(skip[:, None, None], cand, sim)
    kl = policy if cfg.sim_mask_kl else cand

    uncertain = torch.zeros_like(cand)
    if S > 1 and cfg.mte:
        # Eq. 9: std over the trajectories' x0 (the extra ones only unless the rollout is l^(1));
        # scope "image": the final tokens, ranked over the whole image (reference code);
        # scope "step": each step's x0, ranked among the step's loss tokens (Alg. 2)
        first = 0 if cfg.mte_rollout_in_average else 1
        g = torch.Generator().manual_seed(ro.plan.seed)
        if ro.x0_step is not None:
            x0s = grpo.as_units(ro.x0_step[:, first:], units).movedim(1, 0)       # [S',J,B,U,c]
            u = grpo.token_uncertainty(x0s)                                         # [J,B,U]
            uncertain = grpo.top_k_mask(u, cand, cfg.top_k, cfg.top_k_count, cfg.top_k_random, g)
        else:
            u = grpo.token_uncertainty(grpo.as_units(ro.x0_final[first:], units))   # [B,U]
            every = torch.ones_like(u, dtype=torch.bool)
            uncertain = grpo.top_k_mask(u, every, cfg.top_k, cfg.top_k_count, cfg.top_k_random, g)[None] & cand
    return TokenSets(units, ar_known, cand, policy, kl, uncertain)


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


def _ar_conditions(model: MARModel, ro: Rollout, known: torch.Tensor, prompts: Prompts, grad: bool) -> torch.Tensor:
    """``z [J,B,N,Dz]`` recomputed from the recorded canvases (one batched AR forward)."""
    J, B, N, C = ro.canvas.shape
    with torch.set_grad_enabled(grad):
        z = model.ar_forward(ro.canvas.reshape(J * B, N, C), known.reshape(J * B, N),
                             Prompts(prompts.emb.repeat(J, 1, 1), prompts.pad.repeat(J, 1)))
    return z.reshape(J, B, N, -1)


def _reduce_tokens(values: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[J,T',B,U] -> [J]``: the token mean per (step, head step, image), then the mean over head
    steps and images (``image``); or one mean pooled over the AR step (``step``, reference code)."""
    if how == "image":
        return grpo.masked_mean(values, mask, dim=-1).mean((1, 2))
    return grpo.masked_mean(values, mask, dim=(1, 2, 3))


def mar_grpo_loss(model: MARModel, ro: Rollout, advantages: torch.Tensor, cfg: GRPOConfig,
                  ref_model: MARModel | None = None, theta_is_old: bool = False) -> LossOutput:
    """Loss (to minimise) of Eq. 7/10 for one rollout batch.

    Per unit of each trained (AR step m, head step t): the clipped policy term on
    each trajectory (Eq. 3, 12, 13), aggregated over trajectories by the MTE mask
    (Eq. 10), and ``beta`` times the KL surrogate (Eq. 14) on the rollout's own
    trajectory; each averaged over its tokens (:func:`token_sets`), then over (m, t)
    and images, and the AR steps averaged (Eq. 7) or summed (reference code).

    ``theta_is_old``: the model holds the parameters that sampled ``ro`` (one optimizer step per
    rollout, as the trainer takes), so ``pi_old`` is the loss's own log-prob, detached: the ratio is
    1 by construction, as in TRL's GRPO with one iteration, instead of ``exp`` of the difference
    between two roundings of one number (the recorded log-prob was computed in other batch shapes).
    """
    J, S, Tp, B, N = ro.old_log_prob.shape
    C = ro.x_t.shape[-1]
    dev = ro.x_t.device
    cfg_scale = model.sampling.cfg_scale if cfg.cfg_scale is None else cfg.cfg_scale
    P = units_per_token(model, cfg)
    sets = token_sets(ro, cfg, P)
    any_unit = lambda m: m.reshape(*m.shape[:-1], N, P).any(-1)               # noqa: E731  [..,U]->[..,N]

    # transitions to evaluate: trajectory 0 on the loss tokens, the others on uncertain ones
    need = torch.zeros(J, S, Tp, B, N, dtype=torch.bool, device=dev)
    need[:, 0] = any_unit(sets.candidates)[:, None]
    if S > 1:
        need[:, 1:] = any_unit(sets.uncertain)[:, None, None]
    rows = need.nonzero(as_tuple=True)
    own = rows[1] == 0

    prompts = model.encode_prompts(ro.prompts)
    ar_grad = cfg.trained_parts in ("all", "ar")
    z = _ar_conditions(model, ro, sets.ar_known, prompts, grad=ar_grad)
    z_u = _ar_conditions(model, ro, sets.ar_known, model.encode_negative(B), grad=ar_grad) if cfg.guided_logp else None
    mean = _posterior_means(model, ro, z, rows, cfg.guided_logp, z_u, cfg_scale)
    log_var = ro.log_var[rows]
    if cfg.mte_variance == "rollout" and S > 1:     # the extras' log-probs with the rollout's variance
        j, s, t, b, n = rows
        log_var = torch.where((s > 0)[:, None], ro.log_var[j, torch.zeros_like(s), t, b, n], log_var)
    logp_el = grpo.gaussian_log_prob_elements(ro.x_prev[rows], mean, log_var)          # [R,C]

    # the importance ratio. `ratio: rollout`: Eq. 13 per token, pi_theta / pi_old with pi_old recorded
    # at the rollout, its gradient split over the token's units (grpo.score_ratio); 1 where no pi_old
    # exists: the extra trajectories of scope "image" (sampled under another condition; one update per
    # rollout makes theta_old = theta) and deterministic transitions (variance at the floor: no density,
    # and exp(new - old) overflows). `on_policy` (reference code): exp(logp - logp.detach()) per
    # channel, the policy term reduced over the channels like the log-prob (sum: C * A per token)
    adv = advantages.to(dev)[rows[3]][:, None]
    if cfg.ratio == "rollout":
        logp = grpo.reduce_channels(logp_el, cfg.logp_reduction, P)                     # [R,P]
        log_ratio = torch.zeros_like(logp[:, 0])
        recorded = own | (ro.plan.mte_scope == "step" and cfg.mte_variance == "own")
        tok = grpo.reduce_channels(logp_el, cfg.logp_reduction)[:, 0]
        old = (tok.detach() if theta_is_old else
               ro.old_log_prob[rows].to(logp.dtype) / (C if cfg.logp_reduction == "mean" else 1))
        ok = recorded & ~grpo.degenerate(log_var, D.VARIANCE_FLOOR)
        log_ratio = torch.where(ok, tok - old, log_ratio)
        ratio_rows = grpo.score_ratio(logp, log_ratio[:, None])                         # [R,P]
        pol_rows, clip_rows = grpo.clipped_policy_loss(ratio_rows, adv, cfg.clip_range)
    else:
        ratio_el = grpo.score_ratio(logp_el)                                            # [R,C], value 1
        pol_el, clip_el = grpo.clipped_policy_loss(ratio_el, adv, cfg.clip_range)
        pol_rows = grpo.reduce_channels(pol_el, cfg.logp_reduction, P)
        ratio_rows, clip_rows = (grpo.reduce_channels(v, "mean", P) for v in (ratio_el, clip_el))
    policy = torch.zeros(J, S, Tp, B, N, P, dtype=pol_rows.dtype, device=dev).index_put(rows, pol_rows)
    per_unit = grpo.mte_aggregate(policy.reshape(J, S, Tp, B, N * P).movedim(1, 0), sets.uncertain[:, None],
                                  include_rollout=cfg.mte_rollout_in_average)            # [J,T',B,U]

    kl = torch.zeros_like(per_unit)
    if cfg.beta > 0 and ref_model is not None:
        r0 = tuple(r[own] for r in rows)
        with torch.no_grad():
            z_ref = _ar_conditions(ref_model, ro, sets.ar_known, ref_model.encode_prompts(ro.prompts), grad=False)
            z_ref_u = (_ar_conditions(ref_model, ro, sets.ar_known, ref_model.encode_negative(B), grad=False)
                       if cfg.guided_logp else None)
            mean_ref = _posterior_means(ref_model, ro, z_ref, r0, cfg.guided_logp, z_ref_u, cfg_scale)
        kl_rows = grpo.reduce_channels(grpo.kl_surrogate_elements(mean[own], mean_ref), cfg.kl_reduction, P)
        j, _, t, b, n = r0
        kl = kl.reshape(J, Tp, B, N, P).index_put((j, t, b, n), kl_rows.to(kl.dtype)).reshape(J, Tp, B, N * P)

    pol_mask = sets.policy[:, None].expand_as(per_unit)
    kl_mask = sets.kl[:, None].expand_as(per_unit)
    pol_j = _reduce_tokens(per_unit, pol_mask, cfg.token_mean)                         # [J]
    kl_j = _reduce_tokens(kl, kl_mask, cfg.token_mean)
    step_loss = pol_j + cfg.beta * kl_j
    loss = step_loss.sum() if cfg.ar_step_reduction == "sum" else step_loss.mean()
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "kl": float(kl_j.mean()),
            "ratio_mean": float(ratio_rows[own].mean()) if own.any() else 1.0,
            "clip_frac": float(clip_rows[own].mean()) if own.any() else 0.0,
            "tokens_in_loss": float(pol_mask.float().mean()),
            "mte_tokens": float(sets.uncertain.float().sum() / sets.candidates.float().sum().clamp_min(1)),
        }
    return LossOutput(loss, stats)
