"""The RL core on tiny models: rollouts, the variants' losses, the trainer."""
import copy

import pytest
import torch

from marpipe.grpo import group_advantages
from marpipe.io import checkpoint as ckpt
from marpipe.io.tracking import read_jsonl
from marpipe.loss import mar_grpo_loss
from marpipe.rewards import build_reward
from marpipe.rollout import RolloutPlan, rollout
from marpipe.trainer import NonFiniteError, PromptItem, Trainer
from tests.helpers import PROMPTS, grpo, tiny

ADV = group_advantages(torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.3, 0.8, 0.0]), 4)


def make_rollout(model, S=1, seed=0):
    plan = RolloutPlan.sample(4, 5, 3, 3, S, seed=1)
    return rollout(model, PROMPTS[:2], 4, plan, seed=seed)


def loss_and_grads(model, ro, cfg, ref=None):
    model.zero_grad(set_to_none=True)
    from marpipe.trainer import set_trainable
    params = set_trainable(model, cfg.trained_parts)
    out = mar_grpo_loss(model, ro, ADV, cfg, ref)
    out.loss.backward()
    return out, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
def test_rollout_is_bit_identical_for_a_seed_and_differs_across_seeds(kind):
    m = tiny(kind)
    a, b, c = make_rollout(m), make_rollout(m), make_rollout(m, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.old_log_prob, b.old_log_prob)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (8, 3, 16, 16) and 0 <= a.images.min() and a.images.max() <= 1


def test_rollout_records_the_masked_tokens_of_each_trained_step():
    ro = make_rollout(tiny(), S=3)
    J, S, Tp, B, N = ro.old_log_prob.shape
    assert (J, S, Tp, B, N) == (3, 3, 3, 8, 16)
    pred = ro.predicted
    # the rollout's transitions are recorded exactly on the predicted tokens
    assert ((ro.old_log_prob[:, 0] != 0) == pred[:, None].expand_as(ro.old_log_prob[:, 0])).all()
    # the extra trajectories too, but with no recorded log-prob (they are evaluated on-policy)
    assert ((ro.x_prev[:, 1:].abs().sum(-1) != 0) == pred[:, None, None].expand_as(ro.old_log_prob[:, 1:])).all()
    assert (ro.old_log_prob[:, 1:] == 0).all()
    # they are sampled once per image: two AR steps training the same head step see the same chain
    steps = ro.plan.diffusion_steps
    pairs = [(j1, i1, j2, i2) for j1 in range(J) for j2 in range(j1 + 1, J)
             for i1 in range(Tp) for i2 in range(Tp) if steps[j1, i1] == steps[j2, i2]]
    assert pairs
    for j1, i1, j2, i2 in pairs:
        both = pred[j1] & pred[j2]
        assert torch.equal(ro.x_t[j1, 1:, i1][:, both], ro.x_t[j2, 1:, i2][:, both])
    # each trajectory's final tokens: the rollout's own, then S-1 different ones
    assert torch.equal(ro.x0_final[0], ro.latents)
    assert all(not torch.allclose(ro.x0_final[s], ro.latents) for s in (1, 2))
    assert (ro.accepted & ro.known).sum() == 0 and (ro.accepted <= pred).all()
    # the canvas of a step holds exactly the final values of the tokens already known
    final = ro.latents[None].expand_as(ro.canvas)
    assert torch.equal(ro.canvas[ro.known], final[ro.known])
    # the head's last step is never trained by default
    assert int(ro.plan.diffusion_steps.max()) < 4


@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
def test_ratio_is_one_and_kl_zero_at_theta_old_equals_ref(kind):
    m = tiny(kind)
    ro = make_rollout(m, S=3)
    for cfg in (grpo(), grpo(fix_decoder=True, mte=True, S=3, sim=True)):
        out = mar_grpo_loss(m, ro, ADV, cfg, ref_model=copy.deepcopy(m))
        assert out.stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        assert out.stats["kl"] == pytest.approx(0.0, abs=1e-9)
        assert out.stats["clip_frac"] == 0.0


def test_mte_with_one_trajectory_is_exactly_fix_decoder():
    m = tiny()
    ro = make_rollout(m, S=1)
    a, ga = loss_and_grads(m, ro, grpo(fix_decoder=True))
    b, gb = loss_and_grads(m, ro, grpo(fix_decoder=True, mte=True, S=1, top_k=0.3))
    assert torch.equal(a.loss, b.loss)
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))


def test_top_k_zero_reduces_to_the_single_trajectory():
    m = tiny()
    single, multi = make_rollout(m, S=1), make_rollout(m, S=3)
    # trajectory 0 of the S=3 rollout is the S=1 rollout
    torch.testing.assert_close(multi.images, single.images)
    a, ga = loss_and_grads(m, single, grpo(fix_decoder=True))
    b, gb = loss_and_grads(m, multi, grpo(fix_decoder=True, mte=True, S=3, top_k=0.0))
    torch.testing.assert_close(a.loss, b.loss)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)
    c, gc = loss_and_grads(m, multi, grpo(fix_decoder=True, mte=True, S=3, top_k=0.5))
    assert 0.3 < c.stats["mte_tokens"] < 0.7   # half of each image, ranked over all its tokens
    # on-policy the loss value is ~0 either way; the extra trajectories show in the gradient
    assert any(not torch.allclose(x, y) for x, y in zip(gc, gb))


def test_sim_with_tau_minus_infinity_equals_mte():
    m = tiny()
    ro = make_rollout(m, S=3)
    a, ga = loss_and_grads(m, ro, grpo(fix_decoder=True, mte=True))
    b, gb = loss_and_grads(m, ro, grpo(fix_decoder=True, mte=True, sim=True, tau=float("-inf")))
    assert torch.equal(a.loss, b.loss)
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))
    c, _ = loss_and_grads(m, ro, grpo(fix_decoder=True, mte=True, sim=True, tau=0.0))
    assert c.stats["tokens_in_loss"] < a.stats["tokens_in_loss"]


def test_equal_rewards_give_zero_advantage_zero_gradient_and_no_nan():
    m = tiny()
    ro = make_rollout(m)
    adv = group_advantages(torch.full((8,), 0.7), 4)
    out = mar_grpo_loss(m, ro, adv, grpo(beta=0.0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss == 0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.parameters())


def trainer(tmp_path, cfg, reward="redness", model=None, name="run"):
    items = [PromptItem(p, {}) for p in PROMPTS]
    return Trainer(model or tiny(), cfg, items, build_reward(reward), tmp_path / name, progress=False)


def test_fix_decoder_leaves_head_bit_identical_and_trains_ar(tmp_path):
    m = tiny()
    head0 = [p.detach().clone() for p in m.head_parameters()]
    ar0 = [p.detach().clone() for p in m.ar_parameters()]
    trainer(tmp_path, grpo(fix_decoder=True, steps=2), model=m).train()
    assert all(torch.equal(a, b) for a, b in zip(head0, m.head_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(ar0, m.ar_parameters()))


def test_head_warmup_leaves_ar_bit_identical(tmp_path):
    m = tiny("tiny-harmon")
    ar0 = [p.detach().clone() for p in m.ar_parameters()]
    head0 = [p.detach().clone() for p in m.head_parameters()]
    trainer(tmp_path, grpo(trainable="head", steps=2), model=m).train()
    assert all(torch.equal(a, b) for a, b in zip(ar0, m.ar_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(head0, m.head_parameters()))


def test_kill_and_resume_ends_bit_identical(tmp_path):
    cfg = grpo(fix_decoder=True, mte=True, sim=True, steps=4, save_every=2)
    full = trainer(tmp_path, cfg, name="full")
    full.train()
    part = trainer(tmp_path, cfg, name="part")
    reward, calls = part.reward, []

    def killed_in_step_3(images, prompts, metadata):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the job is killed in the middle of step 3
        return reward(images, prompts, metadata)
    part.reward = killed_in_step_3
    with pytest.raises(KeyboardInterrupt):
        part.train()
    # a kill during a later save leaves a torn file behind: it must be skipped
    torn = ckpt.checkpoint_path(tmp_path / "part" / "checkpoints", 4)
    torn.write_bytes(ckpt.checkpoint_path(tmp_path / "part" / "checkpoints", 2).read_bytes()[:1000])
    assert ckpt.latest_valid(tmp_path / "part" / "checkpoints").name == "step-000002.safetensors"
    torn.unlink()
    resumed = trainer(tmp_path, cfg, name="part")
    resumed.train(resume=True)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    rows_full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    rows_part = read_jsonl(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in rows_part] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows_full] == [r["loss"] for r in rows_part]


def test_non_finite_loss_stops_with_the_step_named(tmp_path, monkeypatch):
    from marpipe import rewards
    from marpipe.rewards import register_reward
    # a private copy of the registry: the test registers its reward again when run twice in one
    # process (mutmut's stats and clean runs)
    monkeypatch.setattr(rewards, "_REGISTRY", dict(rewards._REGISTRY))

    @register_reward("nan_after_first")
    def _nan():
        calls = {"n": 0}

        def score(images, prompts, metadata):
            calls["n"] += 1
            r = torch.rand(len(prompts))
            return r * float("nan") if calls["n"] >= 2 else r
        return score

    with pytest.raises(NonFiniteError, match="step 2: non-finite loss"):
        trainer(tmp_path, grpo(steps=3), reward="nan_after_first").train()
    t = trainer(tmp_path, grpo(steps=3, skip_nonfinite=True), reward="nan_after_first", name="skip")
    rows = t.train()
    assert [r["skipped"] for r in rows] == [0, 1, 1]


# --- pinned by mutation testing (`make mutation`): each test kills mutants that survived ----------
@pytest.mark.parametrize("guided_logp", [False, True])
def test_rollout_records_cfg_transitions_from_the_head_with_its_learned_variance(guided_logp):
    """Re-derived from the head at each recorded transition (tiny-harmon: learned-range v), for the
    rollout's trajectory and MTE's extras of scope "step" (drawn with the rollout's CFG):
    eps = eps_u + 3 (eps_c - eps_u) (cfg_scale 3), log_var from the conditional branch's v,
    x_prev = the guided posterior mean at the last head step (no noise), and the log-prob under the
    guided mean (``guided_logp``) or the conditional one (reference)."""
    from marpipe import diffusion as D
    from marpipe.grpo import gaussian_log_prob
    from marpipe.models.protocol import Prompts
    m = tiny("tiny-harmon")
    T = m.sampling.diffusion_steps
    plan = RolloutPlan.sample(4, T, 2, T, 2, seed=1, final_step=True, shared=True, mte_scope="step")
    ro = rollout(m, PROMPTS[:2], 4, plan, seed=0, guided_logp=guided_logp, mte_guided=True)
    B = ro.known.shape[1]
    with torch.no_grad():
        both = Prompts.cat([m.encode_prompts(PROMPTS[:2]).repeat_interleave(4), m.encode_negative(B)])
        for j in range(len(plan.ar_steps)):
            z = m.ar_forward(torch.cat([ro.canvas[j]] * 2), torch.cat([ro.known[j]] * 2), both)
            b, n = ro.predicted[j].nonzero(as_tuple=True)
            for s in range(2):
                for i, t in enumerate(plan.diffusion_steps[j].tolist()):
                    x_t, x_prev = ro.x_t[j, s, i, b, n], ro.x_prev[j, s, i, b, n]
                    st = torch.full((len(b),), t)
                    eps_c, v_c = m.head(x_t, st, z[:B][b, n])
                    eps_u, v_u = m.head(x_t, st, z[B:][b, n])
                    assert not torch.allclose(v_c, v_u)
                    mean_c = D.posterior_mean(m.schedule, st, x_t, eps_c)
                    mean_g = D.posterior_mean(m.schedule, st, x_t, eps_u + 3.0 * (eps_c - eps_u))
                    log_var = D.posterior_log_var(m.schedule, st, x_t, v_c)
                    torch.testing.assert_close(ro.log_var[j, s, i, b, n], log_var, rtol=1e-4, atol=1e-5)
                    if t == T - 1:
                        torch.testing.assert_close(x_prev, mean_g, rtol=1e-4, atol=1e-5)
                    logp = gaussian_log_prob(x_prev, mean_g if guided_logp else mean_c, log_var)
                    torch.testing.assert_close(ro.old_log_prob[j, s, i, b, n], logp, rtol=1e-4, atol=1e-3)
                    other = gaussian_log_prob(x_prev, mean_c if guided_logp else mean_g, log_var)
                    assert not torch.allclose(ro.old_log_prob[j, s, i, b, n], other, rtol=1e-4, atol=1e-3)


def test_plan_head_step_pools_and_seed():
    """Head steps drawn from 0..T-2 (the last one only with final_step; T = 1: the only one);
    the plan keeps its seed; a bad scope is named."""
    p = RolloutPlan.sample(4, 3, 2, 2, 1, seed=11)
    assert p.diffusion_steps.tolist() == [[0, 1], [0, 1]] and p.seed == 11
    assert RolloutPlan.sample(4, 1, 2, 3, 1, seed=0).diffusion_steps.tolist() == [[0], [0]]
    assert RolloutPlan.sample(4, 2, 2, 3, 1, seed=0).diffusion_steps.tolist() == [[0], [0]]
    assert RolloutPlan.sample(4, 2, 2, 3, 1, seed=0, final_step=True).diffusion_steps.tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="^mte_scope 'token': use 'image' or 'step'$"):
        RolloutPlan.sample(4, 3, 2, 2, 1, seed=0, mte_scope="token")


def test_tiny_ar_forward_takes_the_same_kernels_with_and_without_autograd():
    """Under no_grad PyTorch's encoder layers would take a fused inference kernel (~1e-5 from the
    composite ops the loss recomputes log-probs with); the tiny models keep the composite ops, so a
    rollout's forward and the loss's are bit-identical, and the global switch is left as found."""
    from marpipe.models.tiny import TinyMAR, TinyMARConfig
    torch.manual_seed(0)
    model = TinyMAR(TinyMARConfig.preset("tiny-nova")).eval()
    prompts = model.encode_prompts(["a red circle on the left of a blue square", "a green star"] * 4)
    canvas = torch.randn(8, model.num_tokens, model.cfg.token_dim)
    known = torch.rand(8, model.num_tokens) < 0.5
    with torch.no_grad():
        rollout = model.ar_forward(canvas, known, prompts)
    assert torch.backends.mha.get_fastpath_enabled()
    loss_side = model.ar_forward(canvas, known, prompts)
    assert torch.equal(rollout, loss_side.detach())
