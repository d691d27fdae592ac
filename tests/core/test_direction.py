"""The direction of an update: a step along the GRPO loss's negative gradient raises the
log-probability of the image with a positive advantage and lowers that of the image with a negative
one, in every variant under both presets. (Invariants at theta = theta_old cannot see a negated
advantage; this can.) Measured as the directional derivative ``-grad(log p_i) . grad(loss)``: exact
to first order, where a finite step would be swamped by the curvature of the deterministic last
head step (variance 1e-12) that the reference preset trains."""
import pytest
import torch

from marpipe import diffusion as D
from marpipe.config import GRPOConfig
from marpipe.grpo import gaussian_log_prob
from marpipe.loss import mar_grpo_loss
from marpipe.rollout import RolloutPlan, mask_schedule, rollout
from marpipe.trainer import set_trainable
from tests.helpers import tiny

VARIANTS = {"grpo": {}, "fix_decoder": dict(fix_decoder=True), "mte": dict(fix_decoder=True, mte=True),
            "sim": dict(fix_decoder=True, mte=True, sim=True),
            "mte_per_step": dict(fix_decoder=True, mte=True, mte_scope="step")}   # Alg. 2 read literally


def _rollout(model, cfg):
    plan = RolloutPlan.sample(len(mask_schedule(model)), model.sampling.diffusion_steps, cfg.train_ar_steps,
                              cfg.train_diffusion_steps, cfg.trajectories, seed=1, final_step=cfg.train_final_step,
                              shared=cfg.shared_diffusion_steps, mte_scope=cfg.mte_scope)
    return rollout(model, ["a red circle"], 2, plan, seed=0, guided_logp=cfg.guided_logp, mte_guided=cfg.mte_guided)


def _image_log_probs(model, ro) -> torch.Tensor:
    """Per image, the sum of the log-probs of the rollout's own recorded transitions (conditional
    branch, recorded variance), recomputed differentiably from the stored canvases."""
    J, S, Tp, B, N = ro.old_log_prob.shape
    cond = model.encode_prompts(ro.prompts)
    total = torch.zeros(B)
    for j in range(J):
        z = model.ar_forward(ro.canvas[j], ro.known[j], cond)
        b, n = (~ro.known[j]).nonzero(as_tuple=True)
        for i in range(Tp):
            step = ro.plan.diffusion_steps[j, i].expand(b.numel())
            x_t = ro.x_t[j, 0, i][b, n]
            eps, _ = model.head(x_t, step, z[b, n])
            lp = gaussian_log_prob(ro.x_prev[j, 0, i][b, n], D.posterior_mean(model.schedule, step, x_t, eps),
                                   ro.log_var[j, 0, i][b, n])
            total = total.index_add(0, b, lp)
    return total


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("preset", ["paper", "reference"])
@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
@pytest.mark.parametrize("final_step", [False, True])
def test_one_step_follows_the_advantages(kind, preset, variant, final_step):
    model = tiny(kind)
    cfg = GRPOConfig(preset=preset, model_family=kind.split("-")[1], group_size=2, prompts_per_step=1,
                     train_ar_steps=2, train_diffusion_steps=2, beta=0.0, top_k=0.5, train_final_step=final_step,
                     **VARIANTS[variant])
    ro = _rollout(model, cfg)
    params = set_trainable(model, cfg.trained_parts)
    model.train()
    loss_grad = torch.autograd.grad(mar_grpo_loss(model, ro, torch.tensor([1.0, -1.0]), cfg, None).loss, params,
                                    allow_unused=True)
    logp = _image_log_probs(model, ro)
    slope = []
    for i in range(2):   # d log p_i / d eps along theta - eps * grad(loss)
        g = torch.autograd.grad(logp[i], params, retain_graph=True, allow_unused=True)
        slope.append(-sum((a.double() * b.double()).sum() for a, b in zip(g, loss_grad)
                          if a is not None and b is not None))
    msg = f"log-prob slopes per image {[float(x) for x in slope]} (advantages +1, -1)"
    # the advantage-weighted log-likelihood rises: what a negated advantage would reverse
    assert slope[0] - slope[1] > 0, msg
    if preset == "paper" and not final_step and not (cfg.mte and cfg.mte_scope == "image"):
        # each image on its own, too. Not under the reference trainers' assembly, nor with the
        # deterministic last step: there the two images' gradients are so aligned (both dominated
        # by the same few transitions) that the negative image's push also lowers the positive one;
        # nor with extras drawn once per image, from each token's acceptance z, not the step's
        assert slope[0] > 0 > slope[1], msg
