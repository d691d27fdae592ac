"""The samplers' arithmetic against values derived by hand (not by the code under test).

``diffusion.py`` is shared by the rollout and the loss, so an error there stays consistent
between them and no invariant test sees it; these pin it on numbers. The same formulas are
compared with diffusers' ``DDPMScheduler`` in ``tests/official`` (where diffusers is installed).
"""
import math

import pytest
import torch

from marpipe import diffusion as D
from marpipe import grpo

# A 3-step DDPM with training betas 0.1, 0.2, 0.3, sampled at every step (timesteps 2, 1, 0):
#   abar = 0.9, 0.9 * 0.8 = 0.72, 0.72 * 0.7 = 0.504
#   step 0 (t=2): abar 0.504, abar_prev 0.72, beta = 1 - 0.504/0.72 = 0.3
#       post_var = 0.3 (1 - 0.72) / (1 - 0.504) = 0.084 / 0.496 = 0.16935483870967742
#       coef_x0  = 0.3 sqrt(0.72) / 0.496 = 0.51322266376442...
#       coef_xt  = (1 - 0.72) sqrt(0.7) / 0.496 = 0.47230807949504...
#   step 1 (t=1): abar 0.72, abar_prev 0.9, beta = 0.2
#       post_var = 0.2 * 0.1 / 0.28 = 0.07142857142857142
#       coef_x0  = 0.2 sqrt(0.9) / 0.28 = 0.67763092717893...,  coef_xt = 0.1 sqrt(0.8) / 0.28 = 0.31943828249996...
#   step 2 (t=0): abar 0.9, abar_prev 1, beta = 0.1: post_var 0 (floored), coef_x0 = 1, coef_xt = 0
HAND = {
    "abar": [0.504, 0.72, 0.9],
    "abar_prev": [0.72, 0.9, 1.0],
    "beta": [0.3, 0.2, 0.1],
    "post_var": [0.16935483870967742, 0.07142857142857142, D.VARIANCE_FLOOR],
    "coef_x0": [0.5132226637644296, 0.6776309271789385, 1.0],
    "coef_xt": [0.47230807949504267, 0.3194382824999699, 0.0],
}


@pytest.fixture
def three_step():
    abar_all = torch.cumprod(1 - torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), 0)
    return D.Schedule.from_abar(abar_all, [2, 1, 0])


@pytest.mark.parametrize("name", list(HAND))
def test_three_step_ddpm_constants_by_hand(three_step, name):
    got = getattr(three_step, name).tolist()
    assert got == pytest.approx(HAND[name], rel=1e-12, abs=1e-15), name


def test_posterior_mean_and_x0_by_hand(three_step):
    """x_t = 1, eps = 0.5 at step 0: x0_hat = (1 - sqrt(0.496) 0.5) / sqrt(0.504);
    mean = coef_x0 x0_hat + coef_xt x_t."""
    x_t, eps, step = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[0.5]], dtype=torch.float64), \
        torch.tensor([0])
    x0 = (1 - math.sqrt(0.496) * 0.5) / math.sqrt(0.504)
    assert float(D.predict_x0(three_step, step, x_t, eps)) == pytest.approx(x0, rel=1e-12)
    mean = HAND["coef_x0"][0] * x0 + HAND["coef_xt"][0] * 1.0
    assert float(D.posterior_mean(three_step, step, x_t, eps)) == pytest.approx(mean, rel=1e-12)
    # the last step returns x0_hat itself (coef_x0 = 1, coef_xt = 0)
    last = torch.tensor([2])
    x0_last = (1 - math.sqrt(0.1) * 0.5) / math.sqrt(0.9)
    assert float(D.posterior_mean(three_step, last, x_t, eps)) == pytest.approx(x0_last, rel=1e-12)


def test_clip_x0_clamps_before_the_mean(three_step):
    """diffusers' clip_sample: x0_hat = 3 is clamped to 1 before the mean (x_t = sqrt(abar) 3, eps = 0)."""
    import dataclasses
    clipped = dataclasses.replace(three_step, clip_x0=1.0)
    step = torch.tensor([0])
    x_t = torch.tensor([[3 * math.sqrt(0.504)]], dtype=torch.float64)
    eps = torch.zeros_like(x_t)
    want = HAND["coef_x0"][0] * 1.0 + HAND["coef_xt"][0] * float(x_t)
    assert float(D.posterior_mean(clipped, step, x_t, eps)) == pytest.approx(want, rel=1e-12)
    assert float(D.posterior_mean(three_step, step, x_t, eps)) == pytest.approx(
        HAND["coef_x0"][0] * 3.0 + HAND["coef_xt"][0] * float(x_t), rel=1e-12)


def test_learned_range_log_variance_at_its_ends(three_step):
    """v = +1 gives log(beta), v = -1 log(posterior variance); at the last step the posterior
    variance is the previous step's (ADM's clipped log variance); v = 0 halfway in log space."""
    like = torch.zeros(3, 1, dtype=torch.float64)
    step = torch.tensor([0, 1, 2])
    hi = D.posterior_log_var(three_step, step, like, torch.ones_like(like))
    lo = D.posterior_log_var(three_step, step, like, -torch.ones_like(like))
    mid = D.posterior_log_var(three_step, step, like, torch.zeros_like(like))
    assert hi[:, 0].tolist() == pytest.approx([math.log(b) for b in HAND["beta"]], rel=1e-12)
    post_clipped = [HAND["post_var"][0], HAND["post_var"][1], HAND["post_var"][1]]
    assert lo[:, 0].tolist() == pytest.approx([math.log(p) for p in post_clipped], rel=1e-12)
    assert mid[:, 0].tolist() == pytest.approx(
        [(math.log(b) + math.log(p)) / 2 for b, p in zip(HAND["beta"], post_clipped)], rel=1e-12)
    fixed = D.posterior_log_var(three_step, step, like)
    assert fixed[:, 0].tolist() == pytest.approx([math.log(p) for p in HAND["post_var"]], rel=1e-12)


def test_betas_by_hand():
    """linear at 1000 steps: 1e-4 .. 0.02; scaled_linear: sqrt-linear from 0.00085 to 0.012;
    cosine (improved DDPM): beta_0 = 1 - f(1)/f(0), f(t) = cos((t/T + 0.008)/1.008 pi/2)^2."""
    lin = D.betas_for("linear", 1000)
    assert (float(lin[0]), float(lin[-1])) == pytest.approx((1e-4, 0.02), rel=1e-12)
    sl = D.betas_for("scaled_linear", 3)
    mid = ((0.00085 ** 0.5 + 0.012 ** 0.5) / 2) ** 2
    assert sl.tolist() == pytest.approx([0.00085, mid, 0.012], rel=1e-12)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    cos = D.betas_for("cosine", 1000)
    assert float(cos[0]) == pytest.approx(1 - f(1) / f(0), rel=1e-12)
    assert float(cos[-1]) == pytest.approx(0.999)         # capped


# Mask schedules derived by hand (cos(pi/8) = 0.92388, cos(pi/4) = 0.70711, cos(3pi/8) = 0.38268,
# cos(pi/10) = 0.95106, cos(pi/5) = 0.80902, cos(3pi/10) = 0.58779, cos(2pi/5) = 0.30902):
# * marpipe's (tiny models), N=8, K=3: masked after 7 (6.93), 4, 0 -> [1, 3, 4];
#   N=6, K=5: round 5.71, 4.85, 3.53, 1.85 -> 6, 5, 4, 2 each clamped to leave >= 1 a step
#   (5, 4, 3, 2), then 0 -> [1, 1, 1, 1, 2]
# * NOVA's, N=10, K=4: masked round(10 cos(pi k/8)) = 10, 9, 7, 4, 0 -> [1, 2, 3, 4];
#   N=4, K=8: round(4 cos(pi k/16)) = 4, 4, 4, 3, 3, 2, 2, 1, 0 -> [0, 0, 1, 0, 1, 0, 1, 1], empty
#   steps dropped -> [1, 1, 1, 1]
# * Harmon's, N=10, K=4: floor(9.24, 7.07, 3.83) = 9, 7, 3 stay masked, the last step takes the
#   rest -> [1, 2, 4, 3]; N=6, K=5: floor(5.71, 4.85, 3.53, 1.85) = 5, 4, 3, 1 -> [1, 1, 1, 2, 1];
#   N=8, K=8: floor(8 cos(pi k/16)) = 7, 7, 6, 5, 4, 3, 1 for k = 1..7, each clamped to leave one
#   token known a step (7, 6, 5, 4, 3, 2, 1), then 0 -> [1] * 8
@pytest.mark.parametrize("fn,n,k,counts", [
    (grpo.cosine_mask_counts, 8, 3, [1, 3, 4]),
    (grpo.cosine_mask_counts, 6, 5, [1, 1, 1, 1, 2]),
    (grpo.nova_mask_counts, 10, 4, [1, 2, 3, 4]),
    (grpo.nova_mask_counts, 4, 8, [1, 1, 1, 1]),
    (grpo.harmon_mask_counts, 10, 4, [1, 2, 4, 3]),
    (grpo.harmon_mask_counts, 6, 5, [1, 1, 1, 2, 1]),
    (grpo.harmon_mask_counts, 8, 8, [1] * 8),
])
def test_mask_schedules_by_hand(fn, n, k, counts):
    assert fn(n, k) == counts


# --- pinned by mutation testing (`make mutation`): each test kills mutants that survived ----------
def test_from_abar_takes_plain_lists_in_float64_and_long():
    """Python floats / int32 timesteps in: float64 constants (to 1e-12 of the hand values) and long
    timesteps out."""
    s = D.Schedule.from_abar([0.9, 0.72, 0.504], torch.tensor([2, 1, 0], dtype=torch.int32))
    assert s.abar.dtype == torch.float64 and s.timesteps.dtype == torch.long
    assert s.coef_x0.tolist() == pytest.approx(HAND["coef_x0"], rel=1e-12)
    assert s.post_var.tolist() == pytest.approx(HAND["post_var"], rel=1e-12)


@pytest.mark.parametrize("ts", [[1, 2], [1, 1], [2, 2, 0], [3, 1, 2]])
def test_from_abar_rejects_timesteps_that_do_not_strictly_decrease(ts):
    with pytest.raises(ValueError, match="^sampling timesteps must be strictly decreasing$"):
        D.Schedule.from_abar([0.9, 0.72, 0.504, 0.4], ts)


def test_respaced_timesteps_are_multiples_of_the_integer_stride():
    """1000 -> 25: stride 40 (960, ..., 0); 10 -> 4: stride 10 // 4 = 2 (6, 4, 2, 0), not 2.5 (7, 5, 2, 0)."""
    assert D.Schedule.respaced("linear", 1000, 25).timesteps.tolist() == list(range(960, -1, -40))
    assert D.Schedule.respaced("linear", 10, 4).timesteps.tolist() == [6, 4, 2, 0]


def test_unknown_beta_schedule_is_named():
    with pytest.raises(ValueError, match="^unknown beta schedule 'sigmoid' \\(use 'scaled_linear', 'linear' or 'cosine'\\)$"):
        D.betas_for("sigmoid", 10)


@pytest.mark.parametrize("x0,want", [(-3.0, -1.0), (0.5, 0.5), (3.0, 1.0)])
def test_clip_x0_clamps_both_sides(three_step, x0, want):
    """x0_hat below -clip, inside, above: clamped to [-1, 1] (x_t = sqrt(abar) x0_hat, eps = 0)."""
    import dataclasses
    clipped = dataclasses.replace(three_step, clip_x0=1.0)
    x_t = torch.tensor([[x0 * math.sqrt(0.504)]], dtype=torch.float64)
    got = float(D.posterior_mean(clipped, torch.tensor([0]), x_t, torch.zeros_like(x_t)))
    assert got == pytest.approx(HAND["coef_x0"][0] * want + HAND["coef_xt"][0] * float(x_t), rel=1e-12)


def test_learned_range_on_one_and_two_step_schedules():
    """The last step's posterior variance (0, floored) is replaced by the previous step's, when
    there is one: 2 steps (abar 0.9, 0.72): v = -1 at the last step gives the first step's
    post_var = 0.2 * 0.1 / 0.28; 1 step: nothing to borrow, the floor stays."""
    two = D.Schedule.from_abar([0.9, 0.72], [1, 0])
    like = torch.zeros(2, 1, dtype=torch.float64)
    lo = D.posterior_log_var(two, torch.tensor([0, 1]), like, -torch.ones_like(like))
    assert lo[:, 0].tolist() == pytest.approx([math.log(0.2 * 0.1 / 0.28)] * 2, rel=1e-12)
    one = D.Schedule.from_abar([0.9], [0])
    like1 = torch.zeros(1, 1, dtype=torch.float64)
    lo1 = D.posterior_log_var(one, torch.tensor([0]), like1, -torch.ones_like(like1))
    hi1 = D.posterior_log_var(one, torch.tensor([0]), like1, torch.ones_like(like1))
    assert float(lo1) == pytest.approx(math.log(D.VARIANCE_FLOOR), rel=1e-12)
    assert float(hi1) == pytest.approx(math.log(0.1), rel=1e-12)


def test_sched_true_mean_by_hand(three_step):
    """q(x_{t-1} | x_t, x0) at step 1: coef_x0 x0 + coef_xt x_t with the hand constants."""
    x_t = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    x0 = torch.tensor([[0.5, 3.0]], dtype=torch.float64)
    got = D.sched_true_mean(three_step, torch.tensor([1]), x_t, x0)
    want = [HAND["coef_x0"][1] * a + HAND["coef_xt"][1] * b for a, b in zip([0.5, 3.0], [2.0, -1.0])]
    assert got[0].tolist() == pytest.approx(want, rel=1e-12)


def test_schedule_lookups_follow_the_callers_device(three_step):
    """Per-step constants are gathered onto the input's device (the meta device stands in for a GPU)."""
    like = torch.zeros(3, 1, dtype=torch.float64, device="meta")
    step = torch.tensor([0, 1, 2], device="meta")
    assert three_step.at("abar", step, like).device.type == "meta"
    assert D.posterior_log_var(three_step, step, like, torch.zeros_like(like)).device.type == "meta"
