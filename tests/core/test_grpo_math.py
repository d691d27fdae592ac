import math

import pytest
import torch

from marpipe import grpo
from marpipe.config import ConfigError, GRPOConfig


def test_gaussian_log_prob_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    x, mu = torch.randn(5, 7, 16, generator=g), torch.randn(5, 7, 16, generator=g)
    log_var = torch.randn(5, 7, 16, generator=g)
    expected = torch.distributions.Normal(mu, (0.5 * log_var).exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(grpo.gaussian_log_prob(x, mu, log_var), expected)


def test_group_advantages_normalise_within_groups():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0])
    a = grpo.group_advantages(r, 4)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[4:], torch.zeros(4))       # equal rewards: zero, not NaN
    std = r[:4].std()
    torch.testing.assert_close(a[:4], (r[:4] - 2.5) / (std + 1e-4))


def test_importance_ratio_and_clipping():
    ratio = grpo.importance_ratio(torch.tensor([0.0, 0.5, -0.5]), torch.zeros(3))
    torch.testing.assert_close(ratio, torch.tensor([1.0, math.exp(0.5), math.exp(-0.5)]))
    loss, clipped = grpo.clipped_policy_loss(ratio, torch.tensor(1.0), 0.2)
    torch.testing.assert_close(loss, -torch.tensor([1.0, 1.2, math.exp(-0.5)]))
    assert clipped.tolist() == [0.0, 1.0, 0.0]
    loss_neg, clipped_neg = grpo.clipped_policy_loss(ratio, torch.tensor(-1.0), 0.2)
    torch.testing.assert_close(loss_neg, torch.tensor([1.0, math.exp(0.5), 0.8]))
    assert clipped_neg.tolist() == [0.0, 0.0, 1.0]
    unclipped, none = grpo.clipped_policy_loss(ratio, torch.tensor(2.0), None)
    torch.testing.assert_close(unclipped, -2 * ratio)
    assert none.sum() == 0


def test_kl_surrogate_is_zero_at_reference_and_positive_elsewhere():
    mu = torch.randn(3, 8)
    assert grpo.kl_surrogate(mu, mu).abs().max() == 0
    d = torch.tensor([[0.5, -0.5]])
    expected = ((torch.exp(d) - d - 1).mean(-1))
    torch.testing.assert_close(grpo.kl_surrogate(torch.zeros(1, 2), d), expected)
    assert (expected > 0).all()


def test_masked_mean_ignores_masked_and_handles_empty():
    v = torch.tensor([[1.0, 2.0, 100.0], [5.0, 5.0, 5.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(grpo.masked_mean(v, m), torch.tensor([1.5, 0.0]))


def test_top_k_mask_selects_most_uncertain_candidates():
    u = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.2, 0.95]])
    cand = torch.tensor([[True, True, True, True, True, False]])   # last one already known
    m = grpo.top_k_mask(u, cand, 0.4)                              # round(0.4 * 5) = 2
    assert m.tolist() == [[True, False, True, False, False, False]]
    assert grpo.top_k_mask(u, cand, 0.0).sum() == 0
    assert grpo.top_k_mask(u, cand, 1.0).tolist() == cand.tolist()


def test_uncertainty_is_std_over_trajectories_mean_over_channels():
    x = torch.tensor([[[1.0, 3.0]], [[3.0, 7.0]]])                # S=2, N=1, C=2
    torch.testing.assert_close(grpo.token_uncertainty(x), torch.tensor([(1.0 + 2.0) / 2]))
    assert grpo.token_uncertainty(x[:1]).abs().max() == 0      # S=1: no uncertainty


def test_mte_aggregate_eq10():
    l = torch.tensor([[1.0, 1.0], [3.0, 5.0]])                   # S=2, 2 tokens
    out = grpo.mte_aggregate(l, torch.tensor([True, False]))
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(grpo.mte_aggregate(l[:1], torch.tensor([True, True])), l[0])


def test_consistency_mask_eq11():
    final = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    step = torch.tensor([[1.0, 0.0], [1.0, 0.0]])                 # token 0 agrees, token 1 orthogonal
    before = torch.tensor([[0.0, 1.0], [0.0, 1.0]])               # token 0 was orthogonal, token 1 agreed
    assert grpo.consistency_mask(step, before, final, 0.0).tolist() == [True, False]
    assert grpo.consistency_mask(step, before, final, float("-inf")).all()
    assert grpo.consistency_mask(step, None, final, 0.0).tolist() == [True, False]
    kappa = torch.tensor([True, False, False])
    predicted = torch.tensor([True, True, False])
    accepted = torch.tensor([False, True, False])
    assert grpo.sim_token_mask(kappa, predicted, accepted).tolist() == [True, True, False]
    assert grpo.sim_token_mask(kappa, predicted, accepted, keep_step_tokens=False).tolist() == [True, False, False]


@pytest.mark.parametrize("n,k", [(64, 8), (1024, 64), (16, 16), (10, 3)])
def test_cosine_mask_counts(n, k):
    c = grpo.cosine_mask_counts(n, k)
    assert sum(c) == n and len(c) == k and min(c) >= 1
    assert c[0] <= c[-1]        # cosine: few tokens first, many at the end


def test_nova_mask_counts_drop_empty_steps():
    """NOVA at 1,024 tokens x 64 steps: the first step would make round(1024 (1 - cos(pi/128))) = 0
    tokens known and is dropped, leaving 63 AR steps that start 1, 2, 2, 3 (baaivision/NOVA@2cd254a:
    diffnext/models/transformers/transformer_3d.py, generate_frame)."""
    c = grpo.nova_mask_counts(1024, 64)
    assert len(c) == 63 and sum(c) == 1024 and min(c) >= 1 and c[:4] == [1, 2, 2, 3]
    masked = [round(math.cos(math.pi / 2 * k / 64) * 1024) for k in range(65)]   # no .5 ties here
    assert c == [a - b for a, b in zip(masked, masked[1:]) if a != b]


def test_harmon_mask_counts_floor_and_finish():
    """Harmon at 1,024 x 64: floor(N cos) tokens stay masked, every step makes >= 1 known, all 64 run."""
    c = grpo.harmon_mask_counts(1024, 64)
    assert len(c) == 64 and sum(c) == 1024 and min(c) >= 1
    assert c[0] == 1024 - math.floor(1024 * math.cos(math.pi / 2 / 64))
    assert c != grpo.cosine_mask_counts(1024, 64)      # marpipe's tiny-model schedule rounds instead


@pytest.mark.parametrize("key,value,needle", [
    ("top_k", 1.5, "train.top_k = 1.5: must be in [0, 1]"),
    ("trainable", "decoder", "train.trainable = 'decoder'"),
    ("group_size", 1, "train.group_size = 1"),
])
def test_config_errors_name_the_key(key, value, needle):
    with pytest.raises(ConfigError) as e:
        GRPOConfig(**{key: value})
    assert needle in str(e.value)


def test_config_rejects_unknown_key_and_mte_without_fix_decoder():
    with pytest.raises(ConfigError, match="train.topk: unknown key"):
        GRPOConfig.from_dict({"topk": 0.3})
    with pytest.raises(ConfigError, match="fix_decoder"):
        GRPOConfig(mte=True)


# --- pinned by mutation testing (`make mutation`): each test kills mutants that survived ----------
@pytest.mark.parametrize("ratio,adv,loss,clipped", [
    # PPO-clip written out, eps = 0.2: loss = -min(r A, clip(r, 0.8, 1.2) A)
    (1.5, 2.0, -2.4, 1.0),     # r > 1 + eps, A > 0: the clip binds, -(1.2 * 2)
    (1.5, -1.0, 1.5, 0.0),     # r > 1 + eps, A < 0: min picks r A = -1.5, no clip
    (0.5, -1.0, 0.8, 1.0),     # r < 1 - eps, A < 0: the clip binds, -(0.8 * -1)
    (0.5, 2.0, -1.0, 0.0),     # r < 1 - eps, A > 0: min picks r A = 1.0, no clip
    (1.1, 3.0, -3.3, 0.0),     # inside the trust region: r A
    (0.9, -3.0, 2.7, 0.0),
    (1.5, 0.0, 0.0, 0.0),      # zero advantage: nothing, never "clipped"
])
def test_off_policy_clipped_loss_by_hand(ratio, adv, loss, clipped):
    """An off-policy transition (r = pi / pi_old != 1) against the PPO-clip formula, each value
    derived by hand; the ratio comes from log-probs as Eq. 13 gives it."""
    old = torch.tensor([-2.0], dtype=torch.float64)
    r = grpo.importance_ratio(old + math.log(ratio), old)
    assert float(r) == pytest.approx(ratio, rel=1e-12)
    eps = 0.2
    formula = -min(ratio * adv, min(max(ratio, 1 - eps), 1 + eps) * adv)
    assert formula == pytest.approx(loss, abs=1e-12)
    got, flag = grpo.clipped_policy_loss(r, torch.tensor([adv], dtype=torch.float64), eps)
    assert float(got) == pytest.approx(loss, rel=1e-12, abs=1e-12)
    assert float(flag) == clipped
    # the gradient flows only where the clip does not bind (d loss / d r = -A there)
    rg = r.clone().requires_grad_(True)
    grpo.clipped_policy_loss(rg, torch.tensor([adv], dtype=torch.float64), eps)[0].sum().backward()
    assert float(rg.grad) == pytest.approx(0.0 if clipped else -adv, abs=1e-12)


def test_importance_ratio_uses_the_old_log_prob():
    """r = exp(log p - log p_old) with both non-zero (log p_old = 0 hides its sign)."""
    r = grpo.importance_ratio(torch.tensor([-1.0, 0.3]), torch.tensor([-1.5, 0.5]))
    torch.testing.assert_close(r, torch.tensor([math.exp(0.5), math.exp(-0.2)]))


def test_group_advantages_of_pairs_and_singletons():
    """G = 2 by hand: rewards 1, 3: mean 2, sample std sqrt(2): A = -+1 / (sqrt 2 + 1e-4);
    G = 1: no group to compare with, zero advantage (the sample std of one value is NaN)."""
    a = grpo.group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2)
    d = 1 / (math.sqrt(2) + 1e-4)
    torch.testing.assert_close(a, torch.tensor([-d, d, 0.0, 0.0]))
    one = grpo.group_advantages(torch.tensor([0.2, 0.9, -1.0]), 1)
    assert one.tolist() == [0.0, 0.0, 0.0]


def test_reduce_channels_and_units_on_batched_tokens():
    """[J, B, C] values (not only [R, C]) keep their leading dims; as_units with N != C."""
    v = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)          # C = 4
    s = grpo.reduce_channels(v, "sum", 2)
    assert s.shape == (2, 3, 2)
    assert s[1, 2].tolist() == [20.0 + 21.0, 22.0 + 23.0]
    assert grpo.reduce_channels(v, "mean", 1)[0, 1].tolist() == [(4 + 5 + 6 + 7) / 4]
    with pytest.raises(ValueError, match="reduction 'max': use 'sum' or 'mean'"):
        grpo.reduce_channels(v, "max")
    x = torch.arange(3 * 4, dtype=torch.float32).reshape(1, 3, 4)             # N = 3 tokens, C = 4
    u = grpo.as_units(x, 2)
    assert u.shape == (1, 6, 2) and u[0, 1].tolist() == [2.0, 3.0] and u[0, 2].tolist() == [4.0, 5.0]
    m = torch.tensor([[True, False, True]])
    assert grpo.mask_units(m, 2).tolist() == [[True, True, False, False, True, True]]
    assert grpo.mask_units(m, 1).tolist() == m.tolist()


def test_degenerate_marks_a_variance_at_the_floor_per_transition():
    """True where any channel's variance is <= 1.1 floor (boundary included); per transition of a
    [.., T, C] tensor."""
    floor = 1e-12
    at = math.log(1.1 * floor)
    lv = torch.tensor([[[0.0, at], [0.0, math.log(1.5 * floor)]],
                       [[math.log(floor), -1.0], [-20.0, 0.0]]], dtype=torch.float64)
    assert grpo.degenerate(lv, floor).tolist() == [[True, False], [True, False]]


def test_masked_mean_of_a_single_unit():
    v = torch.tensor([[4.0, 100.0, 2.0], [6.0, 1.0, 1.0]])
    m = torch.tensor([[True, False, False], [True, False, True]])
    torch.testing.assert_close(grpo.masked_mean(v, m), torch.tensor([4.0, 3.5]))


def test_top_k_mask_breaks_ties_by_position():
    """Equal uncertainties: the first tokens win, whatever the sort backend (a stable sort; 20
    tokens, above the size where torch's unstable CPU sort reorders ties)."""
    u = torch.full((1, 20), 0.5)
    u[0, 7] = 0.9
    every = torch.ones_like(u, dtype=torch.bool)
    m = grpo.top_k_mask(u, every, 0.25)                                      # round(5)
    assert m[0].nonzero()[:, 0].tolist() == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match="top-k count 'ceil': use 'round' or 'floor'"):
        grpo.top_k_mask(u, every, 0.25, "ceil")


def test_top_k_random_extras_are_candidates_and_draw_nothing_when_off():
    """extra_random draws among the candidates only (2 of the 3 candidates of a 6-token row);
    with extra_random = 0 the generator is left untouched. Rows of a [P, B, N] batch each get theirs."""
    u = torch.zeros(1, 6)
    cand = torch.tensor([[False, True, False, True, True, False]])
    g = torch.Generator().manual_seed(5)
    m = grpo.top_k_mask(u, cand, 0.0, extra_random=2, generator=g)
    assert int(m.sum()) == 2 and not (m & ~cand).any()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    assert not grpo.top_k_mask(u, cand, 0.0, extra_random=0, generator=g).any()
    assert torch.equal(g.get_state(), state)
    u3 = torch.zeros(2, 1, 5)                                                 # [P, B, N]: 1 row per batch
    m3 = grpo.top_k_mask(u3, torch.ones_like(u3, dtype=torch.bool), 0.0, extra_random=2,
                         generator=torch.Generator().manual_seed(0))
    assert m3.sum(-1).tolist() == [[2], [2]]


def test_helpers_keep_the_callers_device():
    """Tensors made inside follow the input's device (the meta device stands in for a GPU)."""
    u = torch.zeros(2, 5, device="meta")
    cand = torch.ones(2, 5, dtype=torch.bool, device="meta")
    m = grpo.top_k_mask(u, cand, 0.4, extra_random=1, generator=torch.Generator().manual_seed(0))
    assert m.device.type == "meta"


@pytest.mark.parametrize("fn", [grpo.cosine_mask_counts, grpo.nova_mask_counts, grpo.harmon_mask_counts])
def test_mask_schedules_of_one_step_and_bad_step_counts(fn):
    assert fn(4, 1) == [4]
    with pytest.raises(ValueError, match=r"ar_steps=0 must be"):
        fn(4, 0)
    if fn is not grpo.nova_mask_counts:                                       # NOVA allows K > N
        with pytest.raises(ValueError, match=r"^ar_steps=5 must be in \[1, num_tokens=4\]$"):
            fn(4, 5)
    else:
        with pytest.raises(ValueError, match=r"^ar_steps=0 must be >= 1$"):
            fn(4, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_top_k_mask_runs_on_cuda():
    """On a GPU (the meta device does not check scatter's source device): ranks made on CUDA."""
    u = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.2, 0.95]], device="cuda")
    cand = torch.tensor([[True, True, True, True, True, False]], device="cuda")
    m = grpo.top_k_mask(u, cand, 0.4, extra_random=1, generator=torch.Generator().manual_seed(0))
    assert m.device.type == "cuda" and bool(m[0, 0] & m[0, 2]) and not m[0, 5] and int(m.sum()) in (2, 3)
