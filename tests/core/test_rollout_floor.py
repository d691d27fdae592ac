"""The rollout runs the head only where the loss reads it, and gives what the full head gives.

``full_head=True`` runs every still-masked token's chain at every AR step (what the rollout did
before it ran only the loss's tokens); the reduced rollout must give the same tensors, bit for bit
on a CPU in float32, for every plan shape the loss meets, and the same loss and gradients.
"""
from dataclasses import replace

import pytest
import torch

from marpipe.config import GRPOConfig
from marpipe.grpo import group_advantages
from marpipe.loss import mar_grpo_loss
from marpipe.models.cost import RULES, expected_head_rows, head_rows
from marpipe.rollout import CPU_ROW_MULTIPLE, RolloutPlan, head_tokens, mask_schedule, rollout
from marpipe.trainer import set_trainable
from tests.helpers import PROMPTS, tiny

K, T = 4, 5            # the helpers' tiny models: 16 tokens, 4 AR steps, 5 head steps
ADV = group_advantages(torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.3, 0.8, 0.0]), 4)
RECORDED = ("images", "latents", "canvas", "known", "accepted", "x_t", "x_prev", "log_var", "old_log_prob",
            "x0", "x0_final")


def plan(steps, S=1, scope="image", seed=3) -> RolloutPlan:
    """A plan training the AR steps ``steps`` (3 random head steps each)."""
    g = torch.Generator().manual_seed(seed)
    diff = torch.stack([torch.randperm(T, generator=g)[:3].sort().values for _ in steps]) if steps else \
        torch.zeros(0, 0, dtype=torch.long)
    return RolloutPlan(tuple(steps), diff, S, scope, seed)


PLANS = {"none": (), "every": (0, 1, 2, 3), "adjacent": (1, 2), "first": (0,), "last": (3,), "first_last": (0, 3)}
VARIANTS = {"grpo": dict(), "fix_decoder": dict(fix_decoder=True),
            "mte_image": dict(fix_decoder=True, mte=True, S=3, mte_scope="image"),
            "mte_step": dict(fix_decoder=True, mte=True, S=3, mte_scope="step"),
            "sim": dict(fix_decoder=True, mte=True, S=3, sim=True)}


def config(variant: str, kind: str, preset: str = "paper") -> GRPOConfig:
    return GRPOConfig(group_size=4, prompts_per_step=2, train_ar_steps=2, train_diffusion_steps=3, beta=0.01,
                      preset=preset, model_family="nova" if kind == "tiny-nova" else "harmon",
                      **VARIANTS[variant])


def assert_same(full, red, sim: bool):
    for name in RECORDED + (("x0_step",) if full.x0_step is not None else ()):
        assert torch.equal(getattr(full, name), getattr(red, name)), name
    if sim:       # what Sim reads: x0 at m - 1 of every trained step m > 0
        assert torch.equal(full.has_before, red.has_before)
        assert torch.equal(full.x0_before, red.x0_before)
    else:         # recorded only where step m - 1 ran every masked token anyway (adjacent trained steps)
        h = red.has_before
        assert torch.equal(full.x0_before[h], red.x0_before[h])


def loss_and_grads(model, ro, cfg, ref):
    model.zero_grad(set_to_none=True)
    params = set_trainable(model, cfg.trained_parts)
    out = mar_grpo_loss(model, ro, ADV, cfg, ref, theta_is_old=True)
    out.loss.backward()
    return out.loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
@pytest.mark.parametrize("steps", list(PLANS.values()), ids=list(PLANS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reduced_rollout_loss_and_gradients_equal_the_full_head(kind, steps, variant):
    m, ref = tiny(kind), tiny(kind).eval().requires_grad_(False)
    cfg = config(variant, kind)
    p = plan(steps, cfg.trajectories, cfg.mte_scope)
    kw = dict(seed=5, mte_guided=cfg.mte_guided, guided_logp=cfg.guided_logp, sim=cfg.sim)
    m.eval()
    full = rollout(m, PROMPTS[:2], 4, p, full_head=True, **kw)
    red = rollout(m, PROMPTS[:2], 4, p, **kw)
    assert_same(full, red, cfg.sim)
    if steps:
        m.train()
        (l_full, g_full), (l_red, g_red) = loss_and_grads(m, full, cfg, ref), loss_and_grads(m, red, cfg, ref)
        assert torch.equal(l_full, l_red)
        assert all(torch.equal(a, b) for a, b in zip(g_full, g_red))


@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
@pytest.mark.parametrize("steps", [PLANS["adjacent"], PLANS["first_last"], PLANS["none"]], ids=["adjacent", "first_last", "none"])
def test_sim_off_and_on_record_the_same_except_x0_before(kind, steps):
    m = tiny(kind).eval()
    p = plan(steps)
    on, off = rollout(m, PROMPTS[:2], 4, p, seed=2), rollout(m, PROMPTS[:2], 4, p, seed=2, sim=False)
    assert_same(on, off, sim=False)
    assert torch.equal(on.has_before, torch.tensor([s > 0 for s in steps], dtype=torch.bool))


@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
@pytest.mark.parametrize("scope", ["image", "step"])
@pytest.mark.parametrize("noise_draw", [None, 4])
def test_gradient_noise_replay_is_unchanged_by_the_reduced_head(kind, scope, noise_draw):
    """The replay (forced_latents, noise_draw) runs the head at the trained steps only."""
    m = tiny(kind).eval()
    p = plan(PLANS["adjacent"], S=3, scope=scope)
    rec = rollout(m, PROMPTS[:2], 4, replace(p, trajectories=1), seed=7, mte_guided=True)
    kw = dict(seed=7, mte_guided=True, forced_latents=rec.latents, noise_draw=noise_draw, sim=False)
    full = rollout(m, PROMPTS[:2], 4, p, full_head=True, **kw)
    red = rollout(m, PROMPTS[:2], 4, p, **kw)
    assert_same(full, red, sim=False)
    assert torch.equal(red.latents, rec.latents)


@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
def test_reduced_rollout_equals_the_full_head_at_the_demo_sizes(kind):
    """The small world's shapes (64 tokens, 8 AR x 10 head steps, 3 prompts x 4 images)."""
    from marpipe.models.tiny import TinyMAR, TinyMARConfig
    torch.manual_seed(0)
    m = TinyMAR(TinyMARConfig.preset(kind, zero_init=False)).eval()
    p = RolloutPlan.sample(len(mask_schedule(m)), 10, 2, 4, 3, seed=11)
    for sim in (True, False):
        kw = dict(seed=1, step=3, prompt_ids=[4, 9, 2], mte_guided=True, sim=sim)
        full = rollout(m, PROMPTS[:3], 4, p, full_head=True, **kw)
        assert_same(full, rollout(m, PROMPTS[:3], 4, p, **kw), sim)


def count_head_rows(model) -> list[int]:
    rows, head = [], model.head

    def counted(x_t, step, z):
        rows.append(x_t.shape[0])
        return head(x_t, step, z)
    model.head = counted
    return rows


@pytest.mark.parametrize("sim", [True, False])
@pytest.mark.parametrize("steps", [PLANS["none"], PLANS["first_last"], PLANS["adjacent"]], ids=["none", "first_last", "adjacent"])
def test_head_runs_on_the_accepted_tokens_except_where_the_loss_reads_them(sim, steps):
    m = tiny("tiny-nova").eval()
    rows = count_head_rows(m)
    B = 8
    rollout(m, PROMPTS[:2], 4, plan(steps), seed=0, sim=sim)
    counts = mask_schedule(m)
    expect = head_tokens(counts, steps, sim)
    masked = [sum(counts[k:]) for k in range(K)]
    per_step = [2 * (B * n if n == masked[k] else -(-B * n // CPU_ROW_MULTIPLE) * CPU_ROW_MULTIPLE)
                for k, n in enumerate(expect)]
    assert rows == [r for r in per_step for _ in range(T)]
    assert sum(rows) == head_rows(counts, T, steps, "marpipe_sim" if sim else "marpipe", images=B,
                                  row_multiple=CPU_ROW_MULTIPLE)
    # without a trained step the head runs on the accepted tokens only, as the official samplers do
    if not steps:
        assert expect == counts


def test_head_tokens_by_hand():
    counts = [1, 3, 5, 7]           # 16 tokens
    assert head_tokens(counts, ()) == counts
    assert head_tokens(counts, (2,), sim=False) == [1, 3, 12, 7]
    assert head_tokens(counts, (2,)) == [1, 15, 12, 7]
    assert head_tokens(counts, (0, 3)) == [16, 3, 12, 7]


@pytest.mark.parametrize("rule", RULES)
def test_expected_head_rows_average_every_plan(rule):
    from itertools import combinations
    counts, T, J = [1, 2, 3, 4, 6], 3, 2
    plans = list(combinations(range(len(counts)), J))
    mean = sum(head_rows(counts, T, p, rule) for p in plans) / len(plans)
    assert expected_head_rows(counts, T, J, rule) == pytest.approx(mean)
    if rule in ("marpipe", "marpipe_sim"):
        assert all(head_rows(counts, T, p, rule) == 2 * T * sum(head_tokens(counts, p, rule == "marpipe_sim"))
                   for p in plans)


@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
@pytest.mark.parametrize("images", [1, 3, 5, 7])
def test_generation_equals_the_full_head_for_any_batch(kind, images):
    """Plain generation (the evaluation's images), odd batches included: a head batch whose size
    puts a token in the scalar tail of a vectorised CPU kernel would move it by an ulp."""
    from marpipe.models.tiny import TinyMAR, TinyMARConfig
    torch.manual_seed(0)
    m = TinyMAR(TinyMARConfig.preset(kind, zero_init=False)).eval()
    prompts = [f"a red circle number {i}" for i in range(images)]
    p = RolloutPlan((), torch.zeros(0, 0, dtype=torch.long), 1)
    full = rollout(m, prompts, 1, p, seed=4, full_head=True)
    red = rollout(m, prompts, 1, p, seed=4)
    assert torch.equal(full.latents, red.latents) and torch.equal(full.images, red.images)
