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
