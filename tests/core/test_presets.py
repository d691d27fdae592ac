"""The loss-assembly switches (`train.preset: paper | reference` and the keys it sets).

Facts from the paper (``mar-grpo-paper.txt``: Eq. 3, 6-14, Alg. 2) and the reference trainers
(AMAP-ML/mar-grpo@fcb7969: ``src/grpo/src/open_r1/trainer/grpo_trainer_nova_v1_2.py`` and
``grpo_trainer_harmon_v1_2.py``, ``compute_loss``). The three ``test_*_preset_matches_*`` tests
write each preset's loss out from those facts, on the rollout's recorded tensors, and compare
value and gradient with :func:`marpipe.loss.mar_grpo_loss`.
"""
import copy
import math
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from marpipe import diffusion as D
from marpipe import grpo
from marpipe.config import PRESETS, SWITCHES, ConfigError, GRPOConfig
from marpipe.loss import mar_grpo_loss, token_sets
from marpipe.models.protocol import Prompts
from marpipe.rollout import Rollout, RolloutPlan, rollout
from marpipe.trainer import set_trainable
from tests.helpers import PROMPTS, tiny

ROOT = Path(__file__).resolve().parents[2]
REWARDS = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.35, 0.8, 0.0])
ADV = grpo.group_advantages(REWARDS, 4)


def make(kind="tiny-nova", S=1, final_step=False, shared=False, scope="image", guided=False, seed=0):
    m = tiny(kind)
    K, T = len(m.mask_counts(m.sampling.ar_steps)), m.sampling.diffusion_steps
    plan = RolloutPlan.sample(K, T, K, 3, S, seed=1, final_step=final_step, shared=shared, mte_scope=scope)
    return m, rollout(m, PROMPTS[:2], 4, plan, seed=seed, mte_guided=guided)


def perturbed(model, scale=0.05, seed=1):
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return ref


def as_float64(ro: Rollout) -> Rollout:
    """``ro`` with its floating tensors in float64 (to compare with a transcription where rounding
    cannot decide)."""
    return replace(ro, **{f.name: getattr(ro, f.name).double() for f in fields(ro)
                          if isinstance(getattr(ro, f.name), torch.Tensor) and getattr(ro, f.name).is_floating_point()})


def loss_and_grads(model, ro, cfg, ref=None, adv=ADV):
    params = set_trainable(model, cfg.trained_parts)
    model.zero_grad(set_to_none=True)
    out = mar_grpo_loss(model, ro, adv, cfg, ref)
    out.loss.backward()
    return out, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


def grads_of(model, loss, parts):
    params = set_trainable(model, parts)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


# --- config ------------------------------------------------------------------------------------
def test_presets_set_every_switch_and_explicit_keys_override():
    assert GRPOConfig().preset == "paper"
    for family in ("nova", "harmon"):
        for preset in ("paper", "reference"):
            cfg = GRPOConfig(preset=preset, model_family=family)
            assert {k: getattr(cfg, k) for k in SWITCHES} == PRESETS[preset][family]
    ref = GRPOConfig(preset="reference", model_family="nova", clip_range=0.1, granularity="token")
    assert (ref.clip_range, ref.granularity, ref.ratio) == (0.1, "token", "on_policy")
    assert GRPOConfig(preset="reference", model_family="harmon").S == 5
    assert GRPOConfig(preset="reference", model_family="nova", mte=True, fix_decoder=True).trajectories == 4
    assert GRPOConfig(mte=True, fix_decoder=True).trajectories == 3          # paper: the rollout is one of S
    with pytest.raises(ConfigError, match="train.preset = 'reference'.*model_family"):
        GRPOConfig(preset="reference")
    with pytest.raises(ConfigError, match="train.preset = 'papre'"):
        GRPOConfig(preset="papre")
    with pytest.raises(ConfigError, match="train.kl_reduction = 'max': must be one of 'sum', 'mean'"):
        GRPOConfig(kl_reduction="max")
    # resolved values travel: replace() and to_dict() (summary.json, MLflow params, checkpoints)
    cfg = replace(GRPOConfig(preset="reference", model_family="harmon"), steps=3)
    assert cfg.loss_tokens == "after_step" and cfg.to_dict()["loss_tokens"] == "after_step"


def test_schema_documents_every_switch_in_one_file():
    schema = ROOT / "marpipe/data/config.schema.yaml"
    assert (ROOT / "workflow/schemas/config.schema.yaml").resolve() == schema.resolve()    # a symlink, one file
    train = yaml.safe_load(schema.read_text())["properties"]["train"]["properties"]
    for key in ["preset", *SWITCHES]:
        assert train[key].get("description"), key
        if SWITCHES.get(key) and not isinstance(SWITCHES[key][0], bool):
            assert train[key]["enum"] == list(SWITCHES[key]), key
    assert train["preset"]["enum"] == list(PRESETS)


def test_experiment_picks_the_reference_trainer_of_each_model_and_logs_the_switches():
    from marpipe import experiment as E
    from marpipe.io.tracking import _flatten
    exp = E.load(ROOT / "config.yaml")
    nova, harmon = exp.train_config("nova", "hps", "sim"), exp.train_config("harmon", "hps", "sim")
    assert (nova.preset, nova.model_family, nova.granularity, nova.S) == ("reference", "nova", "pixel", 3)
    assert (harmon.model_family, harmon.loss_tokens, harmon.S, harmon.clip_range) == ("harmon", "after_step", 5, None)
    assert exp.warmup_config("harmon").model_family == "harmon"
    small = E.load(ROOT / "config" / "small.yaml")
    assert small.train_config("tiny-nova", "hps", "mte").model_family == "nova"
    assert small.train_config("tiny-harmon", "hps", "mte").model_family == "harmon"
    params = _flatten({"train": nova.to_dict()})
    assert {f"train.{k}" for k in ["preset", "model_family", *SWITCHES]} <= set(params)


# --- switches on tensors -----------------------------------------------------------------------
@pytest.mark.parametrize("logp_red,kl_red,expected", [
    ("sum", "sum", 1.0), ("mean", "mean", 1.0), ("sum", "mean", 1 / 16), ("mean", "sum", 16.0)])
def test_kl_weight_relative_to_the_policy_term_follows_the_reductions(logp_red, kl_red, expected):
    """Point 1: the same beta weighs the KL term 1/C as much when the log-prob is summed and the KL
    averaged over the channels (marpipe before) as when both are reduced alike (the reference)."""
    g = torch.Generator().manual_seed(0)
    C = 16
    x, log_var = torch.randn(5, C, generator=g), torch.randn(5, C, generator=g) * 0.1 - 2
    mu0, ref = torch.randn(5, C, generator=g), torch.randn(5, C, generator=g)

    def grad(term):
        mu = mu0.clone().requires_grad_(True)
        term(mu).sum().backward()
        return mu.grad

    policy = grad(lambda mu: grpo.score_ratio(
        grpo.reduce_channels(grpo.gaussian_log_prob_elements(x, mu, log_var), logp_red))[..., 0])
    kl = grad(lambda mu: grpo.kl_surrogate(mu, ref, kl_red))
    both_sum = (grad(lambda mu: grpo.kl_surrogate(mu, ref, "sum"))
                / grad(lambda mu: grpo.gaussian_log_prob(x, mu, log_var)))
    torch.testing.assert_close(kl / policy, expected * both_sum)


def test_score_ratio_has_the_value_of_eq13_and_the_gradient_of_the_score():
    lp = torch.tensor([-1.0, 2.0, 0.5], requires_grad=True)
    old = torch.tensor([-1.2, 2.0, 0.1])
    r = grpo.score_ratio(lp, (lp - old).detach())
    torch.testing.assert_close(r, torch.exp(lp - old))
    (r * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(lp.grad, torch.exp(lp - old).detach() * torch.tensor([1.0, 2.0, 3.0]))
    on = grpo.score_ratio(torch.tensor([-3e9, 5.0]))                  # a floored variance's log-prob
    assert on.tolist() == [1.0, 1.0]


def test_top_k_count_and_random_extra_and_mte_without_the_rollout():
    u = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.2, 0.95, 0.05]])
    every = torch.ones_like(u, dtype=torch.bool)
    assert grpo.top_k_mask(u, every, 0.3, "round").sum() == 2           # round(2.1)
    assert grpo.top_k_mask(u, every, 0.3, "floor").sum() == 2           # int(2.1)
    assert grpo.top_k_mask(u, every, 0.05, "round").sum() == 0
    assert grpo.top_k_mask(u, every, 0.05, "floor").sum() == 1          # max(1, int(0.35))
    g = torch.Generator().manual_seed(3)
    with_rand = grpo.top_k_mask(u, every, 0.3, "floor", extra_random=1, generator=g)
    pick = int(torch.rand(1, 7, generator=torch.Generator().manual_seed(3)).argmax())
    expected = grpo.top_k_mask(u, every, 0.3, "floor")
    expected[0, pick] = True
    assert torch.equal(with_rand, expected)
    loss = torch.tensor([[1.0, 1.0], [3.0, 5.0], [5.0, 9.0]])          # rollout, 2 extras; 2 tokens
    m = torch.tensor([True, False])
    torch.testing.assert_close(grpo.mte_aggregate(loss, m), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(grpo.mte_aggregate(loss, m, include_rollout=False), torch.tensor([4.0, 1.0]))


def test_shared_diffusion_steps_and_the_final_step_in_the_plan():
    per = RolloutPlan.sample(8, 10, 4, 4, 1, seed=0, final_step=True)
    shared = RolloutPlan.sample(8, 10, 4, 4, 1, seed=0, final_step=True, shared=True)
    assert not all(torch.equal(per.diffusion_steps[0], r) for r in per.diffusion_steps)
    assert all(torch.equal(shared.diffusion_steps[0], r) for r in shared.diffusion_steps)
    plans = [RolloutPlan.sample(8, 10, 4, 4, 1, seed=s, final_step=True) for s in range(10)]
    assert any(int(p.diffusion_steps.max()) == 9 for p in plans)
    assert all(int(RolloutPlan.sample(8, 10, 4, 4, 1, seed=s).diffusion_steps.max()) < 9 for s in range(10))


def test_mte_scope_step_samples_extras_from_each_steps_condition_and_records_their_log_prob():
    m, ro = make(S=3, scope="step", guided=True)
    J, S, Tp, B, N = ro.old_log_prob.shape
    pred = ro.predicted
    assert ro.x0_step.shape == (J, 3, B, N, 16) and ro.x0_final.shape == (1, B, N, 16)
    assert torch.equal(ro.x0_step[:, 0], ro.x0)
    recorded = ro.old_log_prob[:, 1:] != 0
    assert (recorded == pred[:, None, None].expand_as(recorded)).all()
    assert not torch.allclose(ro.x0_step[:, 1][pred], ro.x0_step[:, 2][pred])
    # the extras are drawn from the policy being trained: their ratio is ~1 like the rollout's
    out = mar_grpo_loss(m, ro, ADV, GRPOConfig(preset="paper", fix_decoder=True, mte=True, S=3, top_k=1.0,
                                               group_size=4, prompts_per_step=2))
    assert out.stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and out.stats["mte_tokens"] == 1.0
    # unguided extras (NOVA reference) differ from guided ones (Harmon reference)
    _, plain = make(S=3, scope="step", guided=False)
    assert torch.equal(plain.images, ro.images) and not torch.allclose(plain.x0_step[:, 1:], ro.x0_step[:, 1:])
    _, img_g = make(S=3, guided=True)
    _, img_c = make(S=3, guided=False)
    assert not torch.allclose(img_g.x0_final[1:], img_c.x0_final[1:])


def test_sim_skips_the_first_steps_and_leaves_the_kl_on_every_loss_token():
    _, ro = make(S=1)
    assert ro.plan.ar_steps == (0, 1, 2, 3)
    never = dict(fix_decoder=True, sim=True, tau=10.0, sim_keep_step_tokens=False)   # kappa never holds
    sets = token_sets(ro, GRPOConfig(sim_skip_steps=2, **never))
    assert torch.equal(sets.policy[:2], sets.candidates[:2])              # steps 0, 1: no Sim
    assert not sets.policy[2:].any()
    assert torch.equal(sets.kl, sets.candidates)
    assert not token_sets(ro, GRPOConfig(sim_skip_steps=0, **never)).policy.any()
    keep = token_sets(ro, GRPOConfig(sim_skip_steps=0, **{**never, "sim_keep_step_tokens": True}))
    assert torch.equal(keep.policy, ro.accepted)
    assert torch.equal(token_sets(ro, GRPOConfig(sim_mask_kl=True, sim_skip_steps=2, **never)).kl, sets.policy)


def test_harmon_after_step_token_set_leaves_the_accepted_tokens_out_and_feeds_them_as_known_zeros():
    m, ro = make("tiny-harmon", S=1)
    after = token_sets(ro, GRPOConfig(loss_tokens="after_step", ratio="on_policy"))
    assert torch.equal(after.candidates, ro.predicted & ~ro.accepted)
    assert torch.equal(after.ar_known, ro.known | ro.accepted)
    assert (ro.canvas[ro.accepted] == 0).all()                 # the pre-step canvas: value 0 there
    seen = []
    forward = m.ar_forward
    m.ar_forward = lambda canvas, known, prompts: seen.append(known.clone()) or forward(canvas, known, prompts)
    with pytest.raises(ConfigError, match="train.loss_tokens = 'after_step': needs ratio: on_policy"):
        GRPOConfig(loss_tokens="after_step")
    cfg = GRPOConfig(loss_tokens="after_step", ratio="on_policy", beta=0.0, group_size=4, prompts_per_step=2)
    a, ga = loss_and_grads(m, ro, cfg)
    assert torch.equal(seen[0], (ro.known | ro.accepted).reshape(seen[0].shape))
    # what the accepted tokens recorded at their step does not reach that step's loss ...
    shaken = copy.copy(ro)
    shaken.x_prev = ro.x_prev.clone()
    shaken.x_prev[:, 0].masked_fill_(ro.accepted[:, None, :, :, None], 3.0)
    b, gb = loss_and_grads(m, shaken, cfg)
    torch.testing.assert_close(a.loss, b.loss)
    assert all(torch.allclose(x, y) for x, y in zip(ga, gb))
    # ... while with the paper's token set it does
    c, gc = loss_and_grads(m, ro, replace(cfg, loss_tokens="unknown"))
    d, gd = loss_and_grads(m, shaken, replace(cfg, loss_tokens="unknown"))
    assert any(not torch.allclose(x, y) for x, y in zip(gc, gd))


def nova_layout(tokens, p=2, c=4, grid=(4, 4)):
    """NOVA's PatchEmbed.unpatchify: token (h, w) row-major, vector (py, px, c) -> [B, c, h p, w p]."""
    from marpipe.models.nova import NovaMAR
    return NovaMAR.tokens_to_latents(SimpleNamespace(patch=p, latent_channels=c, grid=grid), tokens)


def test_pixel_granularity_ranks_and_compares_latent_pixels_as_the_nova_reference():
    """Point 6: uncertainty (std over the extra seeds, mean over the 4 latent channels), top
    max(1, int(0.3 * 4096)) of all pixels plus one random one, Sim's cosine over the channels:
    computed on the latent grid [B, 4, H, W] and compared with marpipe's token tensors."""
    g = torch.Generator().manual_seed(0)
    J, S, B, N, C, P = 2, 4, 3, 16, 16, 4
    known = torch.zeros(J, B, N, dtype=torch.bool)
    known[1, :, :5] = True
    accepted = torch.zeros(J, B, N, dtype=torch.bool)
    accepted[0, :, :5], accepted[1, :, 5:9] = True, True
    rnd = lambda *s: torch.randn(*s, generator=g)                               # noqa: E731
    plan = RolloutPlan((2, 3), torch.zeros(J, 1, dtype=torch.long), S, "image", seed=7)
    z = torch.zeros(J, S, 1, B, N, C)
    ro = Rollout(prompts=[""] * B, images=torch.zeros(B, 3, 1, 1), latents=rnd(B, N, C), plan=plan,
                 canvas=torch.zeros(J, B, N, C), known=known, accepted=accepted, x_t=z, x_prev=z, log_var=z,
                 old_log_prob=z[..., 0], x0=rnd(J, B, N, C), x0_before=rnd(J, B, N, C),
                 has_before=torch.ones(J, dtype=torch.bool), x0_final=rnd(S, B, N, C))
    cfg = GRPOConfig(preset="reference", model_family="nova", fix_decoder=True, mte=True, sim=True, tau=0.0)
    sets = token_sets(ro, cfg, units=P)

    to_grid = nova_layout                                                        # [B,N,16] -> [B,4,8,8]

    def pix_of_units(mask):                                                      # [B,N*P] -> [B,8,8]
        return nova_layout(mask.reshape(B, N, P, 1).expand(B, N, P, 4).reshape(B, N, C).float())[:, 0] > 0
    # MTE critic mask on the grid (the extra seeds only)
    std = torch.stack([to_grid(ro.x0_final[s]) for s in range(1, S)]).std(0, unbiased=False).mean(1)   # [B,8,8]
    k = max(1, int(64 * 0.3))
    critic = torch.zeros(B, 64, dtype=torch.bool).scatter_(1, std.reshape(B, 64).topk(k).indices, True)
    r = torch.rand(B, N * P, generator=torch.Generator().manual_seed(7))       # one random pixel, marpipe's draw
    r_grid = nova_layout(r.reshape(B, N, P, 1).expand(B, N, P, 4).reshape(B, N, C))[:, 0].reshape(B, 64)
    critic |= torch.zeros_like(critic).scatter_(1, r_grid.topk(1).indices, True)
    for j in range(J):
        completion = nova_layout((~known[j])[..., None].expand(B, N, C).float())[:, 0] > 0              # [B,8,8]
        assert torch.equal(pix_of_units(sets.uncertain[j]), critic.reshape(B, 8, 8) & completion)
        # Sim (steps 2, 3 > 1: applied), per pixel, with this step's accepted tokens kept
        d = (F.cosine_similarity(to_grid(ro.x0[j]), to_grid(ro.latents), dim=1)
             - F.cosine_similarity(to_grid(ro.x0_before[j]), to_grid(ro.latents), dim=1))
        nxt = nova_layout(accepted[j][..., None].expand(B, N, C).float())[:, 0] > 0
        assert torch.equal(pix_of_units(sets.policy[j]), completion & ((d > 0) | nxt))
    # a token whose pixels disagree is split: the granularity changes the selection
    assert not torch.equal(sets.policy, grpo.mask_units(token_sets(ro, replace(cfg, granularity="token")).policy, P))


# --- the last head step ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
@pytest.mark.parametrize("preset", ["paper", "reference"])
@pytest.mark.parametrize("bf16", [False, True])
def test_the_last_head_step_trains_without_nan_or_inf(kind, preset, bf16):
    """Point 2: NOVA's last DDPM step is deterministic (variance floored at 1e-12): there the
    recorded log-prob is ~-1e8 and new - old, amplified 1e12 times, overflows. The ratio is taken
    on-policy there (value 1, gradient the score: the reference's)."""
    m = tiny(kind)
    K, T = len(m.mask_counts(m.sampling.ar_steps)), m.sampling.diffusion_steps
    plan = RolloutPlan.sample(K, T, K, T, 3, seed=1, final_step=True)
    assert int(plan.diffusion_steps.max()) == T - 1
    ro = rollout(m, PROMPTS[:2], 4, plan, seed=0)                   # recorded in float32
    if kind == "tiny-nova":
        last = ro.log_var[:, 0, -1][ro.predicted]
        assert (last <= math.log(1.1e-12)).all()                    # the floored variance is exercised
    base = dict(model_family=kind[5:], train_final_step=True, group_size=4, prompts_per_step=2, beta=0.05)
    ref = perturbed(m)
    for variant in (dict(), dict(fix_decoder=True), dict(fix_decoder=True, mte=True, S=2),
                    dict(fix_decoder=True, mte=True, S=2, sim=True)):
        cfg = GRPOConfig(preset=preset, **base, **variant)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # the loss in bf16, the rollout not
            out, grads = loss_and_grads(m, ro, cfg, ref)
        assert math.isfinite(out.stats["loss"]) and math.isfinite(out.stats["ratio_mean"]), (variant, out.stats)
        assert all(torch.isfinite(g).all() for g in grads), variant
        assert any(g.abs().sum() > 0 for g in grads)
    if bf16:   # rollout and loss both in bf16, as the trainer runs on a GPU
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ro16 = rollout(m, PROMPTS[:2], 4, plan, seed=0)
            out, grads = loss_and_grads(m, ro16, GRPOConfig(preset=preset, **base), ref)
        assert math.isfinite(out.stats["loss"]) and all(torch.isfinite(g).all() for g in grads)


def test_the_last_step_ratio_would_overflow_as_new_over_old():
    """The defect the on-policy ratio removes: exp(new - old) at the floored step, with the loss in
    bf16 and the rollout in float32, is not finite (before: a NaN loss in every variant)."""
    m = tiny()
    K, T = len(m.mask_counts(m.sampling.ar_steps)), m.sampling.diffusion_steps
    ro = rollout(m, PROMPTS[:2], 4, RolloutPlan.sample(K, T, K, T, 1, seed=1, final_step=True), seed=0)
    j, b, n = ro.predicted.nonzero(as_tuple=True)
    x_t, x_prev, lv = ro.x_t[j, 0, T - 1, b, n], ro.x_prev[j, 0, T - 1, b, n], ro.log_var[j, 0, T - 1, b, n]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        p = m.encode_prompts(ro.prompts)
        J = ro.known.shape[0]
        z = m.ar_forward(ro.canvas.flatten(0, 1), ro.known.flatten(0, 1),
                         Prompts(p.emb.repeat(J, 1, 1), p.pad.repeat(J, 1))).reshape(*ro.known.shape, -1)
        step = torch.full((len(j),), T - 1)
        mean = D.posterior_mean(m.schedule, step, x_t, m.head(x_t, step, z[j, b, n])[0])
    new = grpo.gaussian_log_prob(x_prev, mean.float(), lv)
    assert not torch.isfinite(torch.exp(new - ro.old_log_prob[j, 0, T - 1, b, n])).all()


# --- MTE reduces to Fix Decoder ------------------------------------------------------------------
@pytest.mark.parametrize("preset,scope", [("paper", "step"), ("reference", "image")])
def test_mte_with_extras_equal_to_the_rollout_is_fix_decoder(preset, scope):
    cfg = GRPOConfig(preset=preset, model_family="nova", fix_decoder=True, mte=True, S=3, group_size=4,
                     prompts_per_step=2, beta=0.05)
    m, ro = make(S=cfg.trajectories, scope=scope, final_step=cfg.train_final_step,
                 shared=cfg.shared_diffusion_steps, guided=cfg.mte_guided)
    for name in ("x_t", "x_prev", "log_var", "old_log_prob"):
        t = getattr(ro, name)
        t[:, 1:] = t[:, :1]
    if scope == "step":
        ro.x0_step[:, 1:] = ro.x0_step[:, :1]
    else:
        ro.x0_final[1:] = ro.x0_final[:1]
    ref = perturbed(m)
    a, ga = loss_and_grads(m, ro, replace(cfg, mte=False), ref)
    b, gb = loss_and_grads(m, ro, cfg, ref)
    assert b.stats["mte_tokens"] > 0
    torch.testing.assert_close(a.loss, b.loss)
    for x, y in zip(ga, gb):     # (reference: the last head step's gradients are ~1e12 x (x - mu), sums that cancel)
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4 * max(1.0, float(y.abs().max())))
    # and the extras do count once they differ from the rollout
    _, ro2 = make(S=cfg.trajectories, scope=scope, final_step=cfg.train_final_step,
                  shared=cfg.shared_diffusion_steps, guided=cfg.mte_guided)
    _, gc = loss_and_grads(m, ro2, cfg, ref)
    _, gd = loss_and_grads(m, ro2, replace(cfg, mte=False), ref)
    assert any(not torch.allclose(x, y) for x, y in zip(gc, gd))


# --- each preset written out from the equations / the reference facts ---------------------------
def posterior(model, x_t, t, z):
    step = torch.full(x_t.shape[:-1], t, dtype=torch.long)
    eps, _ = model.head(x_t.reshape(-1, x_t.shape[-1]), step.reshape(-1), z.reshape(-1, z.shape[-1]))
    return D.posterior_mean(model.schedule, step.reshape(-1), x_t.reshape(-1, x_t.shape[-1]), eps).reshape(x_t.shape)


def conditions(model, ro, j, known):
    p = model.encode_prompts(ro.prompts)
    return model.ar_forward(ro.canvas[j], known, p)


@pytest.mark.parametrize("final_step", [False, True])
def test_paper_preset_matches_the_equations(final_step):
    """Eq. 3 (clipped, eps 0.2), 7 (mean over m, t), 9-11 (S trajectories incl. the rollout's, drawn
    at each selected step: Alg. 2), 12-13 (token log-prob, pi / pi_old), 14 (KL, summed over
    channels, all tokens of the step)."""
    cfg = GRPOConfig(preset="paper", fix_decoder=True, mte=True, S=3, sim=True, top_k=0.5, beta=0.05, tau=0.3,
                     group_size=4, prompts_per_step=2, train_final_step=final_step)
    m, ro = make(S=3, scope="step", shared=True, guided=True, final_step=final_step)
    m.latent_channels = 4                     # 2x2 pixels per token, which the paper's preset ignores
    assert all(torch.equal(ro.plan.diffusion_steps[0], r) for r in ro.plan.diffusion_steps)
    ref = perturbed(m).double()
    # both sides in float64 on the float32 rollout's tensors: a float32 comparison of gradient entries
    # small beside the largest was decided by the summation order of the CPU's kernels
    m, ro = m.double(), as_float64(ro)
    out, g_marpipe = loss_and_grads(m, ro, cfg, ref)

    set_trainable(m, "ar")
    J, S, Tp, B, N = ro.old_log_prob.shape
    A = ADV[:, None]
    total = 0.0
    for j in range(J):
        cand = ~ro.known[j]                                                   # all tokens the step predicts
        z, z_ref = conditions(m, ro, j, ro.known[j]), conditions(ref, ro, j, ro.known[j]).detach()
        def cos(a):
            return (a * ro.latents).sum(-1) / (a.norm(dim=-1) * ro.latents.norm(dim=-1)).clamp_min(1e-8)
        prev = cos(ro.x0_before[j]) if ro.has_before[j] else torch.zeros(B, N)
        kappa = (cos(ro.x0[j]) - prev) > cfg.tau                               # Eq. 11
        pol_tokens = cand & kappa
        u = ro.x0_step[j].std(0, correction=0).mean(-1)                        # Eq. 9, the S trajectories at m
        M = torch.zeros(B, N, dtype=torch.bool)
        for b in range(B):
            idx = cand[b].nonzero()[:, 0]
            k = round(cfg.top_k * len(idx))
            M[b, idx[u[b, idx].argsort(descending=True)[:k]]] = True
        for i in range(Tp):
            t = int(ro.plan.diffusion_steps[j, i])
            ell = []
            for s in range(S):
                mu = posterior(m, ro.x_t[j, s, i], t, z)
                var = ro.log_var[j, s, i].exp()
                logp = -0.5 * ((ro.x_prev[j, s, i] - mu) ** 2 / var + torch.log(2 * math.pi * var)).sum(-1)  # Eq. 12
                old = ro.old_log_prob[j, s, i]
                det = (ro.log_var[j, s, i] < math.log(2e-12)).any(-1)       # no density: on-policy
                r = torch.exp(logp - torch.where(det, logp.detach(), old))
                ell.append(torch.minimum(r * A, r.clamp(0.8, 1.2) * A))     # Eq. 3
                if s == 0:
                    mu0 = mu
            ell = torch.stack(ell)
            l_tok = torch.where(M, ell.mean(0), ell[0])                        # Eq. 10
            d = posterior(ref, ro.x_t[j, 0, i], t, z_ref).detach() - mu0
            kl = (torch.exp(d) - d - 1).sum(-1)                                # Eq. 14
            for b in range(B):
                term = l_tok[b][pol_tokens[b]].sum() / max(int(pol_tokens[b].sum()), 1)
                term = term - cfg.beta * kl[b][cand[b]].mean()
                total = total + term / (J * Tp * B)                            # Eq. 7
    loss = -total
    torch.testing.assert_close(out.loss, loss, rtol=1e-12, atol=1e-14)
    g_eq = grads_of(m, loss, "ar")
    for x, y in zip(g_marpipe, g_eq):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12 * max(1.0, float(y.abs().max())))


def reference_step_losses(m, ref, ro, cfg, A, grid=None):
    """The reference trainers' compute_loss, per selected AR step i (facts: AMAP-ML/mar-grpo@fcb7969:
    src/grpo/src/open_r1/trainer/grpo_trainer_{nova,harmon}_v1_2.py, per-element formulas): logp elementwise; policy exp(logp - logp.detach()) * A;
    critic mask = top max(1, int(k N)) of the seeds' std (mean over channels) (+ NOVA's one random
    pixel), the seeds' mean policy there; Sim only at i > 1, clamp(hard * completion + next, 0, 1);
    policy = sum(loss * mask) / sum(mask); KL over `completion`; step loss -(policy - beta KL);
    returned per step (the trainer backwards each: the sum)."""
    nova = grid is not None
    J, S, Tp, B, N = ro.old_log_prob.shape
    lay = grid if nova else (lambda t: t)                     # NOVA: everything on the latent grid

    def expand(mask):                                         # a token mask on the loss's elements
        return grid(mask[..., None].expand(B, N, 16).float()) > 0 if nova else mask[..., None]
    seeds = torch.stack([lay(ro.x0_final[s]) for s in range(1, S)])
    std = seeds.std(0, unbiased=False).mean(1 if nova else -1)                 # [B,H,W] | [B,L]
    flat = std.reshape(B, -1)
    k = max(1, int(flat.shape[1] * cfg.top_k))
    critic = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k).indices, True)
    if nova:
        r = torch.rand(B, flat.shape[1], generator=torch.Generator().manual_seed(ro.plan.seed))
        r = grid(r.reshape(B, N, 4, 1).expand(B, N, 4, 4).reshape(B, N, 16))[:, 0].reshape(B, -1)
        critic |= torch.zeros_like(critic).scatter_(1, r.topk(1).indices, True)
        critic = critic.reshape(B, 1, *std.shape[1:])
    else:
        critic = critic[..., None]
    critic = critic.float()
    losses = []
    for j, i_step in enumerate(ro.plan.ar_steps):
        if nova:
            known, completion_tok = ro.known[j], ~ro.known[j]
        else:                                                  # Harmon: the mask after the step
            known, completion_tok = ro.known[j] | ro.accepted[j], ~ro.known[j] & ~ro.accepted[j]
        completion, nxt = expand(completion_tok).float(), expand(ro.accepted[j]).float()
        z, z_ref = conditions(m, ro, j, known), conditions(ref, ro, j, known).detach()
        mask_ = completion
        if cfg.sim and i_step > 1:
            cos = lambda a: F.cosine_similarity(lay(a), lay(ro.latents), dim=1 if nova else -1)  # noqa: E731
            d = cos(ro.x0[j]) - cos(ro.x0_before[j])
            hard = (d > cfg.tau).float().unsqueeze(1 if nova else -1)
            mask_ = completion * (hard * completion + nxt).clamp(0, 1)
        pol_num, kl_num, pol_den, kl_den = 0.0, 0.0, 0.0, 0.0
        for i in range(Tp):
            t = int(ro.plan.diffusion_steps[j, i])
            var = lay(ro.log_var[j, 0, i].exp())                # the rollout's variance, also for the seeds
            pols = []
            for s in range(S):
                mu = lay(posterior(m, ro.x_t[j, s, i], t, z))
                logp = -0.5 * ((lay(ro.x_prev[j, s, i]) - mu) ** 2 / var + torch.log(2 * math.pi * var))
                a = A.reshape(B, *([1] * (logp.dim() - 1)))
                pols.append(torch.exp(logp - logp.detach()) * a)
                if s == 0:
                    mu0 = mu
            critic_pol = torch.stack(pols[1:]).mean(0)
            pol = pols[0] * mask_ * (1 - critic) + critic_pol * mask_ * critic
            d = lay(posterior(ref, ro.x_t[j, 0, i], t, z_ref)).detach() - mu0
            kl = (torch.exp(d) - d - 1) * completion
            pol_num, kl_num = pol_num + pol.sum(), kl_num + kl.sum()
            pol_den, kl_den = pol_den + mask_.sum(), kl_den + completion.sum()   # NOVA: elements, Harmon: tokens
        # an empty token set adds nothing (marpipe; the reference's after-step mask keeps one token
        # at the last AR step, where Harmon's schedule has made every token known)
        losses.append(-(pol_num / pol_den - cfg.beta * kl_num / kl_den) if pol_den > 0 else torch.zeros(()))
    return losses


@pytest.mark.parametrize("final_step", [False, True])
def test_reference_preset_matches_the_nova_trainer(final_step):
    """NOVA reference: on the latent grid (4 channels, 2x2 pixels per token), per element, means
    over elements, 3 unguided extra seeds, per-AR-step head steps, AR-step losses summed."""
    cfg = GRPOConfig(preset="reference", model_family="nova", fix_decoder=True, mte=True, sim=True, beta=0.05,
                     top_k=0.34, tau=0.3, group_size=4, prompts_per_step=2, train_final_step=final_step)
    m, ro = make(S=cfg.trajectories, final_step=final_step, guided=False)
    m.latent_channels = 4                                     # the tiny token as NOVA's 2x2 x 4 patch
    ref = perturbed(m)
    out, g_marpipe = loss_and_grads(m, ro, cfg, ref)
    set_trainable(m, "ar")
    loss = sum(reference_step_losses(m, ref, ro, cfg, ADV, grid=nova_layout))
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
    g_ref = grads_of(m, loss, "ar")
    for x, y in zip(g_marpipe, g_ref):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-5 * max(1.0, float(y.abs().max())))


@pytest.mark.parametrize("final_step", [False, True])
def test_reference_preset_matches_the_harmon_trainer(final_step):
    """Harmon reference: per token, channels summed (sum over elements / token count), the
    after-step token set, 5 guided extra seeds scored with the rollout's variance, one set of
    head steps for all AR steps, AR-step losses summed."""
    cfg = GRPOConfig(preset="reference", model_family="harmon", fix_decoder=True, mte=True, sim=True, beta=0.05,
                     tau=0.3, group_size=4, prompts_per_step=2, train_final_step=final_step)
    m, ro = make("tiny-harmon", S=cfg.trajectories, final_step=final_step, shared=True, guided=True)
    ref = perturbed(m)
    out, g_marpipe = loss_and_grads(m, ro, cfg, ref)
    set_trainable(m, "ar")
    loss = sum(reference_step_losses(m, ref, ro, cfg, ADV))
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
    g_ref = grads_of(m, loss, "ar")
    for x, y in zip(g_marpipe, g_ref):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-5 * max(1.0, float(y.abs().max())))


def test_reward_rise_bench_takes_the_preset_and_reports_kl_and_gradient_curves(tmp_path):
    from marpipe.bench.reward import bench_reward_rise
    from marpipe.bench.train import VARIANTS
    from marpipe.cli import build_parser
    weights = tmp_path / "model.safetensors"
    tiny().save(weights)
    report = bench_reward_rise(str(weights), steps=2, seeds=(0,), held_out=2, preset="reference", as_json=True)
    assert (report["preset"], report["model_family"]) == ("reference", "nova")
    assert set(report["curves"]) == {f"{v}/seed0" for v in VARIANTS}
    for c in report["curves"].values():
        assert set(c) == {"reward_mean", "kl", "grad_norm"} and all(len(v) == 2 for v in c.values())
        assert all(math.isfinite(x) for v in c.values() for x in v)
    args = build_parser().parse_args(["bench", "reward-rise", "--preset", "reference"])
    assert args.preset == "reference"


# --- off-policy: the ratio path of `ratio: rollout` with the clip active --------------------------
@pytest.mark.parametrize("ratio,logp_reduction", [(1.5, "sum"), (0.5, "sum"), (1.5, "mean")])
def test_off_policy_loss_is_the_ppo_clip_formula_by_hand(ratio, logp_reduction):
    """pi_old recorded lower (higher) than pi_theta by a known factor: the rollout's old log-probs
    shifted by -log r make every token's ratio r (Eq. 13) with theta unchanged. Per image the token
    term is then -min(r A, clip(r, 0.8, 1.2) A) (Eq. 3): r = 1.5 clips the images with A > 0
    (-1.2 A), r = 0.5 those with A < 0 (-0.8 A); the others get -r A. Paper preset, beta = 0: the
    loss is the mean of these over the images (every (step, head step, image) has loss tokens).
    The clipped images add no gradient: zeroing their advantage leaves the gradient as it is."""
    m, ro = make(S=1)
    C = ro.x_t.shape[-1]             # logp_reduction mean: log r = mean_c new - old / C (old: the sum)
    shift = math.log(ratio) * (C if logp_reduction == "mean" else 1)
    ro.old_log_prob = ro.old_log_prob - shift * ro.predicted[:, None, None]
    cfg = GRPOConfig(preset="paper", beta=0.0, group_size=4, prompts_per_step=2, logp_reduction=logp_reduction)
    out, grads = loss_and_grads(m, ro, cfg)
    by_hand, clipped = [], []
    for a in ADV.tolist():
        unclipped, clip = ratio * a, min(max(ratio, 0.8), 1.2) * a
        by_hand.append(-min(unclipped, clip))
        clipped.append(clip < unclipped)
    assert any(clipped) and not all(clipped)
    assert out.stats["loss"] == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-4)
    assert out.stats["ratio_mean"] == pytest.approx(ratio, rel=1e-4)
    assert out.stats["clip_frac"] == pytest.approx(sum(clipped) / len(clipped))
    kept = torch.where(torch.tensor(clipped), torch.zeros_like(ADV), ADV)
    _, grads_kept = loss_and_grads(m, ro, cfg, adv=kept)
    for x, y in zip(grads, grads_kept):
        torch.testing.assert_close(x, y)
    assert any(g.abs().sum() > 0 for g in grads)



@pytest.mark.parametrize("variance,expected", [("own", "all"), ("rollout", "rollout_only")])
def test_off_policy_extras_of_scope_step_use_their_recorded_log_prob(variance, expected):
    """MTE of scope "step" (S = 2, every token averaged: top_k 1): the extras' old log-probs are
    recorded, so shifting every trajectory's by -log 1.5 gives each the ratio 1.5 and the token term
    -min(1.5 A, 1.2 A) (mte_variance own); with the rollout's variance (mte_variance rollout) the
    extras have no recorded density and count on-policy: (-min(1.5 A, 1.2 A) - A) / 2."""
    m, ro = make(S=2, scope="step", guided=True)
    ro.old_log_prob = ro.old_log_prob - math.log(1.5) * ro.predicted[:, None, None]
    cfg = GRPOConfig(preset="paper", beta=0.0, group_size=4, prompts_per_step=2, fix_decoder=True, mte=True,
                     S=2, top_k=1.0, mte_variance=variance)
    out = mar_grpo_loss(m, ro, ADV, cfg)
    own = [-min(1.5 * a, 1.2 * a) for a in ADV.tolist()]
    per_image = own if expected == "all" else [(o - a) / 2 for o, a in zip(own, ADV.tolist())]
    assert out.stats["mte_tokens"] == 1.0
    assert out.stats["loss"] == pytest.approx(sum(per_image) / len(per_image), rel=1e-4)


def test_guided_log_probs_in_the_loss_match_a_guided_rollout():
    """guided_logp: the loss's log-prob uses the CFG mean (eps_u + s (eps_c - eps_u), s the model's
    cfg_scale unless the config sets one), as the rollout recorded it: ratio 1 and, against a copy of
    the model as reference, KL 0; the conditional mean, or another scale, is off-policy. The
    reference model is evaluated without gradient."""
    m = tiny("tiny-harmon")
    plan = RolloutPlan.sample(4, 5, 3, 3, 1, seed=1)
    ro = rollout(m, PROMPTS[:2], 4, plan, seed=0, guided_logp=True)
    base = dict(group_size=4, prompts_per_step=2, beta=0.05)
    ref = copy.deepcopy(m)
    for cfg in (GRPOConfig(guided_logp=True, **base), GRPOConfig(guided_logp=True, cfg_scale=3.0, **base)):
        out, grads = loss_and_grads(m, ro, cfg, ref)
        assert out.stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        assert out.stats["kl"] == pytest.approx(0.0, abs=1e-9)
        assert all(p.grad is None for p in ref.parameters())
    for cfg in (GRPOConfig(**base), GRPOConfig(guided_logp=True, cfg_scale=5.0, **base)):
        assert abs(mar_grpo_loss(m, ro, ADV, cfg, ref).stats["ratio_mean"] - 1.0) > 1e-3
    # a reference that differs: its KL is taken with its own guided mean (KL > 0, finite)
    kl = mar_grpo_loss(m, ro, ADV, GRPOConfig(guided_logp=True, **base), perturbed(m)).stats["kl"]
    assert 0 < kl < float("inf")


def test_trainable_all_trains_the_ar_part_through_the_loss():
    m, ro = make(S=1)
    set_trainable(m, "all")
    m.zero_grad(set_to_none=True)
    mar_grpo_loss(m, ro, ADV, GRPOConfig(group_size=4, prompts_per_step=2, beta=0.0)).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.ar_parameters())


def test_pixel_granularity_splits_the_ratio_gradient_and_the_kl_over_the_pixels():
    """ratio: rollout with 4 pixels a token (plain GRPO: the same tokens either way): the loss value
    is the token's, its gradient and the KL's (summed over the channels) 1/4 of the token's, as each
    pixel carries its own channels' share (Eq. 13's value, the gradient split)."""
    m, ro = make(S=1)
    m.latent_channels = 4                                                  # token_dim 16: 4 pixels
    ref = perturbed(m)
    cfg = GRPOConfig(preset="paper", beta=0.0, group_size=4, prompts_per_step=2)
    tok, g_tok = loss_and_grads(m, ro, cfg, ref)
    pix, g_pix = loss_and_grads(m, ro, replace(cfg, granularity="pixel"), ref)
    assert pix.stats["loss"] == pytest.approx(tok.stats["loss"], rel=1e-5, abs=1e-7)
    for x, y in zip(g_pix, g_tok):
        torch.testing.assert_close(4 * x, y, rtol=1e-4, atol=1e-6)
    kl_tok = mar_grpo_loss(m, ro, ADV, replace(cfg, beta=0.05), ref).stats["kl"]
    kl_pix = mar_grpo_loss(m, ro, ADV, replace(cfg, beta=0.05, granularity="pixel"), ref).stats["kl"]
    assert kl_tok > 0 and kl_pix == pytest.approx(kl_tok / 4, rel=1e-4)
    m.latent_channels = 3
    with pytest.raises(ValueError, match="^latent_channels = 3 does not divide token_dim = 16$"):
        mar_grpo_loss(m, ro, ADV, replace(cfg, granularity="pixel"))


def test_ar_step_sum_with_image_token_means_is_j_times_the_mean():
    m, ro = make(S=1)
    cfg = GRPOConfig(preset="paper", beta=0.0, group_size=4, prompts_per_step=2)
    J = len(ro.plan.ar_steps)
    mean = mar_grpo_loss(m, ro, ADV, cfg).stats["loss"]
    assert J > 1 and mar_grpo_loss(m, ro, ADV, replace(cfg, ar_step_reduction="sum")).stats["loss"] == \
        pytest.approx(J * mean, rel=1e-5)


def test_a_step_without_loss_tokens_reports_neutral_stats():
    """Harmon's after-step token set at its last AR step (every remaining token accepted): no loss
    token, no row; the loss is 0, the ratio reported 1, nothing clipped, no MTE token."""
    m = tiny("tiny-harmon")
    K = len(m.mask_counts(m.sampling.ar_steps))
    plan = RolloutPlan((K - 1,), torch.zeros(1, 1, dtype=torch.long), 1)
    ro = rollout(m, PROMPTS[:2], 4, plan, seed=0)
    cfg = GRPOConfig(loss_tokens="after_step", ratio="on_policy", group_size=4, prompts_per_step=2)
    out = mar_grpo_loss(m, ro, ADV, cfg)
    assert not token_sets(ro, cfg).candidates.any()
    assert (out.stats["loss"], out.stats["ratio_mean"], out.stats["clip_frac"], out.stats["mte_tokens"]) == \
        (0.0, 1.0, 0.0, 0.0)


def test_token_sets_units_and_the_random_extra_are_reproducible():
    """token_sets keeps its units; MTE of scope "step" draws top_k_random from the plan's seed, not
    from the global RNG; one trajectory has no MTE tokens."""
    _, ro = make(S=3, scope="step")
    cfg = GRPOConfig(fix_decoder=True, mte=True, S=3, top_k=0.0, top_k_random=1)
    torch.manual_seed(0)
    a = token_sets(ro, cfg, units=2)
    torch.manual_seed(1)
    b = token_sets(ro, cfg, units=2)
    assert a.units == 2 and a.uncertain.any() and torch.equal(a.uncertain, b.uncertain)
    m1, ro1 = make(S=1)
    out = mar_grpo_loss(m1, ro1, ADV, GRPOConfig(fix_decoder=True, mte=True, S=1, top_k=0.5, group_size=4,
                                                  prompts_per_step=2))
    assert out.stats["mte_tokens"] == 0.0


@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_trainer_loss_takes_pi_old_as_its_own_log_prob(preset):
    """One optimizer step per rollout: the trainer's loss (``theta_is_old``) gives the ratio 1 exactly and
    the same loss and gradient whatever rounding the recorded log-probs carry (the rollout computed them
    in other batch shapes: on another CPU's kernels, or in bf16, ``exp`` of their difference is not 1)."""
    cfg = GRPOConfig(preset=preset, model_family="nova", group_size=4, prompts_per_step=2, beta=0.05)
    m, ro = make(S=cfg.trajectories)
    ref = perturbed(m)
    g = torch.Generator().manual_seed(5)
    rounded = replace(ro, old_log_prob=ro.old_log_prob + 1e-2 * torch.randn(ro.old_log_prob.shape, generator=g))
    outs = []
    for r in (ro, rounded):
        params = set_trainable(m, cfg.trained_parts)
        m.zero_grad(set_to_none=True)
        out = mar_grpo_loss(m, r, ADV, cfg, ref, theta_is_old=True)
        out.loss.backward()
        outs.append((out, [p.grad.clone() for p in params if p.grad is not None]))
    (a, ga), (b, gb) = outs
    assert a.stats["ratio_mean"] == 1.0 == b.stats["ratio_mean"] and a.stats["clip_frac"] == 0.0
    assert torch.equal(a.loss, b.loss) and all(torch.equal(x, y) for x, y in zip(ga, gb))
    # against the recorded log-probs the same rounding moves the ratio
    if cfg.ratio == "rollout":
        assert mar_grpo_loss(m, rounded, ADV, cfg, ref).stats["ratio_mean"] != 1.0
