"""``marpipe bench grad-noise``: the statistics, the replay that holds the AR decisions, the 1/S law
of MTE's averaging, and the command (tiny sizes: each test takes seconds on one core)."""
import json
import math

import pytest
import torch

from marpipe.bench import grad_noise as gn
from marpipe.cli import main
from marpipe.grpo import mte_aggregate
from marpipe.rewards import build_reward
from tests.helpers import PROMPTS, grpo, tiny


# --- (c) the statistics, by hand on a 3 x 2 matrix -------------------------------------------------
def test_statistics_of_a_three_by_two_matrix_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # mean (2/3, 2/3); deviations (1/3, -2/3), (-2/3, 1/3), (1/3, 1/3): squares sum to 12/9, / (R-1) = 2/3
    assert gn.trace_covariance(g) == pytest.approx(2 / 3)
    assert gn.signal_power(g, debiased=False) == pytest.approx(8 / 9)               # ||mean||^2
    # unbiased ||mean||^2: the mean inner product of different rows, (0 + 1 + 1) / 3 = 8/9 - (2/3)/3
    assert gn.signal_power(g) == pytest.approx(2 / 3)
    assert gn.noise_to_signal(g) == pytest.approx(1.0)
    assert gn.noise_to_signal(g, debiased=False) == pytest.approx(0.75)
    # cosines: rows 1-2: 0, rows 1-3 and 2-3: 1/sqrt(2)
    assert gn.mean_pairwise_cosine(g) == pytest.approx(math.sqrt(2) / 3)


def test_streamed_statistics_equal_the_matrix_ones_and_edge_cases():
    g = torch.randn(5, 40, generator=torch.Generator().manual_seed(0)) + 0.5
    g[2] = 0.0                                                   # a zero row: cosine 0 with the others
    acc = gn.GradStats()
    for row in g:
        acc.add(row.float())
    r = acc.result()
    assert r["trace_cov"] == pytest.approx(gn.trace_covariance(g), rel=1e-6)
    assert r["signal"] == pytest.approx(gn.signal_power(g), rel=1e-6)
    assert r["noise_to_signal"] == pytest.approx(gn.noise_to_signal(g), rel=1e-6)
    assert r["noise_to_signal_plain"] == pytest.approx(gn.noise_to_signal(g, debiased=False), rel=1e-6)
    assert r["mean_cosine"] == pytest.approx(gn.mean_pairwise_cosine(g), rel=1e-6)
    assert r["parameters"] == 40
    # identical rows: no noise, cosine 1; pure noise around 0: the unbiased signal <= 0 gives inf
    same = torch.tensor([[3.0, -1.0]] * 4)
    assert gn.trace_covariance(same) == 0.0 and gn.noise_to_signal(same) == 0.0
    assert gn.mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert gn.noise_to_signal(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == math.inf
    with pytest.raises(ValueError):
        gn.trace_covariance(torch.ones(1, 3))


# --- (b) the noise falls as 1/S ------------------------------------------------------------------
def test_mte_averaging_of_independent_trajectories_divides_the_noise_by_S():
    """Synthetic per-trajectory gradients (signal + i.i.d. noise) through the MTE aggregation
    (Eq. 10, linear, so it aggregates gradients as it aggregates losses): with every token in M and
    the S extra trajectories averaged, tr(Cov) and the noise-to-signal ratio fall by S."""
    R, P = 16, 4000
    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(P, generator=gen)

    def grads(S: int) -> torch.Tensor:
        per_traj = signal + torch.randn(R, S + 1, P, generator=gen)       # [R, rollout + S extra, P]
        every = torch.ones(P, dtype=torch.bool)
        return torch.stack([mte_aggregate(t, every, include_rollout=False) for t in per_traj])

    g1, g8 = grads(1), grads(8)
    # tr(Cov) estimates have relative sd sqrt(2 / ((R-1) P)) < 1%, the signal ~1%: bands of > 8 sd
    assert 7.0 < gn.trace_covariance(g1) / gn.trace_covariance(g8) < 9.2
    assert 7.0 < gn.noise_to_signal(g1) / gn.noise_to_signal(g8) < 9.2
    assert gn.noise_to_signal(g1) == pytest.approx(1.0, rel=0.1)
    # the plain ||g_bar||^2 holds tr(Cov)/R of noise: it understates the ratio
    assert gn.noise_to_signal(g1, debiased=False) < gn.noise_to_signal(g1)


def test_replayed_mte_gradients_lose_their_head_noise_as_1_over_S():
    """The whole path (replays, the trainer's loss, backward): top_k = 1 puts every loss token in M
    and the reference code's average over the S extra trajectories only (i.i.d. given the held AR
    decisions), so tr(Cov) of the S = 8 row is 1/8 of the S = 1 row's, in expectation. With R = 16
    the head block's ratio spreads ~6-9.5 across seeds, the AR block's (fewer effective dimensions)
    ~4-13: the bands below are a factor 2 and 3.2 around 8."""
    model = tiny()
    cfgs = {S: grpo(fix_decoder=True, mte=True, top_k=1.0, S=S, mte_rollout_in_average=False) for S in (1, 8)}
    rec = gn.record(model, PROMPTS[:2], cfgs[1], build_reward("redness"), seed=0)
    stats = gn.measure(model, rec, cfgs, draws=16)
    head = stats[1]["head"].result()["trace_cov"] / stats[8]["head"].result()["trace_cov"]
    ar = stats[1]["ar"].result()["trace_cov"] / stats[8]["ar"].result()["trace_cov"]
    assert 4.0 < head < 16.0, head
    assert 2.5 < ar < 25.6, ar


# --- (a) a deterministic head gives no noise --------------------------------------------------------
@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_a_deterministic_head_gives_zero_noise_and_a_random_one_does_not(preset):
    model = tiny()
    kw = dict(preset=preset, model_family="nova")
    cfgs = {"grpo": grpo(**kw), "mte": grpo(fix_decoder=True, mte=True, S=3, **kw),
            "sim": grpo(fix_decoder=True, mte=True, sim=True, **kw)}
    rec = gn.record(model, PROMPTS[:2], cfgs["grpo"], build_reward("redness"), seed=0)
    assert rec.advantages.abs().sum() > 0
    fixed = gn.measure(model, rec, cfgs, draws=3, noise_draws=[7, 7, 7])    # the same head noise each draw
    random = gn.measure(model, rec, cfgs, draws=3)
    for key in cfgs:
        for block in gn.BLOCKS:
            f, r = fixed[key][block].result(), random[key][block].result()
            assert f["signal"] > 0
            assert f["trace_cov"] <= 1e-9 * f["signal"], (key, block, f)    # relative: rounding only
            assert f["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
            assert r["trace_cov"] > 1e-3 * r["signal"], (key, block, r)


def test_replay_holds_the_ar_decisions_and_resamples_only_the_head():
    model = tiny()
    cfg = grpo(fix_decoder=True, mte=True, S=3)
    rec = gn.record(model, PROMPTS[:2], cfg, build_reward("redness"), seed=0)
    ro = rec.rollout
    same = gn.replay(model, rec, cfg, 1, noise_draw=None)       # the recorded noise: the recorded rollout
    for name in ("canvas", "known", "accepted", "latents", "images", "x_t", "x_prev", "log_var", "old_log_prob",
                 "x0", "x0_before", "x0_final"):
        assert torch.equal(getattr(same, name), getattr(ro, name)), name
    new = gn.replay(model, rec, cfg, cfg.trajectories, noise_draw=0)
    for name in ("canvas", "known", "accepted", "latents", "images", "x0", "x0_before"):
        assert torch.equal(getattr(new, name), getattr(ro, name)), name
    assert new.x_t.shape[1] == 3 and not torch.equal(new.x_t[:, :1], ro.x_t)
    assert not torch.equal(new.x_t[:, 1], new.x_t[:, 2])        # independent extra trajectories
    sub = gn.with_trajectories(new, 2)
    assert sub.plan.trajectories == 2 and torch.equal(sub.x_prev, new.x_prev[:, :2])
    assert torch.equal(sub.x0_final, new.x0_final[:2])


# --- (d) the command ------------------------------------------------------------------------------
def test_cli_prints_every_row_on_tiny_nova(capsys):
    assert main(["bench", "grad-noise", "--model", "tiny-nova", "--draws", "3", "--prompts", "1"]) == 0
    out = capsys.readouterr().out
    labels = [label for label, _ in gn.row_variants().values()]
    assert len(labels) == 18 and labels[-1] == "+Sim"
    labels[-1] = "+Sim S=3 top_k=0.3"                                   # the reference NOVA trainer's S
    for label in labels:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(label + " ")), None)
        assert line is not None, label
        assert len(line.split()) >= len(label.split()) + 4          # N/S and cos for both blocks
    assert "AR (" in out and "head (" in out


def test_cli_json_on_saved_weights(tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    tiny("tiny-harmon").save(weights)
    assert main(["bench", "grad-noise", "--model", str(weights), "--draws", "2", "--prompts", "1",
                 "--preset", "paper", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_family"] == "harmon" and report["draws"] == 2
    assert [r["key"] for r in report["rows"]][:2] == ["grpo", "fix_decoder"] and len(report["rows"]) == 18
    grpo_row, fix = report["rows"][0], report["rows"][1]
    assert grpo_row["trained"] == {"ar": True, "head": True} and fix["trained"] == {"ar": True, "head": False}
    # Fix Decoder only freezes the head: at one theta its gradient is GRPO's
    assert fix["ar"]["trace_cov"] == pytest.approx(grpo_row["ar"]["trace_cov"], rel=1e-6)
    assert main(["bench", "grad-noise", "--model", str(tmp_path / "none.safetensors")]) == 2
