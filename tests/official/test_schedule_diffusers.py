"""``marpipe.diffusion`` against diffusers' ``DDPMScheduler`` itself, on the same betas.

Runs where diffusers is installed (``.venv-nova``, pinned in ``envs/nova-requirements.txt``),
skips with one line elsewhere. Compared: the training betas of each schedule kind, and for a
25-step respacing the posterior mean (``DDPMScheduler.step`` with noise removed: its
``prev_sample`` minus ``std * noise``) and variance (``_get_variance``), with and without
``clip_sample``.
"""
import pytest
import torch

from marpipe import diffusion as D

diffusers = pytest.importorskip("diffusers", reason="diffusers not installed (runs in .venv-nova)")

KINDS = {"scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
         "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
         "cosine": dict(beta_schedule="squaredcos_cap_v2")}


@pytest.mark.parametrize("kind", list(KINDS))
def test_training_betas_equal_diffusers(kind):
    s = diffusers.DDPMScheduler(num_train_timesteps=1000, **KINDS[kind])
    torch.testing.assert_close(D.betas_for(kind, 1000).float(), s.betas.float(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_posterior_equals_ddpm_scheduler_step(kind, clip):
    s = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=clip, **KINDS[kind])
    s.set_timesteps(25)
    sched = D.Schedule.from_abar(s.alphas_cumprod, [int(t) for t in s.timesteps])
    if clip:
        import dataclasses
        sched = dataclasses.replace(sched, clip_x0=1.0)
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(s.timesteps):
        x_t, eps = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
        # step() draws its noise with randn_tensor(generator): the same seed gives the same noise here
        out = s.step(eps, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample
        noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(i))
        var = float(s._get_variance(t)) if i < len(s.timesteps) - 1 else 0.0
        mean = D.posterior_mean(sched, torch.full((64,), i), x_t.double(), eps.double()).float()
        torch.testing.assert_close(mean + var ** 0.5 * noise, out, rtol=1e-5, atol=1e-5)
        assert float(sched.post_var[i]) == pytest.approx(max(var, D.VARIANCE_FLOOR), rel=1e-5, abs=1e-12)
