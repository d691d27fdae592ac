"""The conformance suite on the tiny models and on the NOVA / Harmon adapters over STAND-INS.

The stand-ins (testbed.standins) are NOT the real NOVA / Harmon: they reproduce the
official modules' attribute names, state-dict layout and call signatures at tiny size, so the
adapters' code (and their strict, manifest-checked loading) runs here on CPU.
"""
import pytest
import torch

from marpipe.models.conformance import check_model, format_results, main
from marpipe.models.harmon import HarmonMAR
from marpipe.models.nova import NovaMAR
from marpipe.models.registry import load_model
from marpipe.models.tiny import TinyMAR, TinyMARConfig
from testbed.standins import save_harmon_standin, save_nova_standin

SMALL = dict(image_size=16, patch=4, width=32, depth=2, heads=2, head_width=16, head_blocks=2, zero_init=False,
             sampling={"ar_steps": 4, "diffusion_steps": 5, "cfg_scale": 3.0})


def assert_all_pass(results):
    failed = [r for r in results if not r[1]]
    assert not failed, format_results(results)
    assert len(results) == 11


@pytest.mark.parametrize("kind", ["tiny-nova", "tiny-harmon"])
def test_suite_passes_on_tiny_models(kind):
    torch.manual_seed(0)
    assert_all_pass(check_model(TinyMAR(TinyMARConfig.preset(kind, **SMALL))))


def test_suite_passes_on_nova_adapter_over_standin_loaded_from_a_verified_folder(tmp_path):
    folder = save_nova_standin(tmp_path / "nova")
    model = load_model(f"nova:{folder}")
    assert isinstance(model, NovaMAR) and model.dtype == torch.float32
    assert_all_pass(check_model(model))


def test_suite_passes_on_harmon_adapter_over_standin_loaded_from_a_verified_folder(tmp_path):
    folder = save_harmon_standin(tmp_path / "harmon")
    model = load_model(f"harmon:{folder}")
    assert isinstance(model, HarmonMAR)
    assert_all_pass(check_model(model))


class BatchDependentHead(TinyMAR):
    """A broken model: its head leaks information across the flat token batch, so the
    log-prob recomputed in the loss (a different batch) disagrees with the rollout's."""

    def head(self, x_t, step, z):
        eps, v = super().head(x_t, step, z)
        return eps + 0.05 * x_t.mean(0, keepdim=True), v


class NoisyAR(TinyMAR):
    """A broken model: a stochastic AR forward (like dropout left on)."""

    def ar_forward(self, canvas, known, prompts):
        z = super().ar_forward(canvas, known, prompts)
        return z + 1e-2 * torch.randn_like(z)


def test_suite_fails_on_broken_models():
    torch.manual_seed(0)
    res = dict((n, ok) for n, ok, _ in check_model(BatchDependentHead(TinyMARConfig.preset("tiny-nova", **SMALL))))
    assert not res["logp_recompute"] and not res["head"]
    torch.manual_seed(0)
    res = dict((n, ok) for n, ok, _ in check_model(NoisyAR(TinyMARConfig.preset("tiny-harmon", **SMALL))))
    assert not res["rollout_reproducible"] and not res["logp_recompute"] and not res["ar_forward"]


def test_main_exit_code_and_report(capsys):
    assert main(["nova-standin"]) == 0
    out = capsys.readouterr().out
    assert "11/11 checks passed" in out and "NOT the real NOVA" in out


class HeadIgnoresZ(TinyMAR):
    """A broken model: its head never reads ``z`` (and has no all-zero tensor to blame)."""

    def head(self, x_t, step, z):
        return super().head(x_t, step, torch.zeros_like(z))


def test_zero_initialised_head_is_told_from_a_broken_one():
    torch.manual_seed(0)
    fresh = TinyMAR(TinyMARConfig.preset("tiny-nova", **{**SMALL, "zero_init": True}))
    res = {n: (ok, d) for n, ok, d in check_model(fresh)}
    assert res["head"][0] and res["cfg"][0], res
    assert res["head"][1].startswith("zero-initialised head") and "perturbed" in res["head"][1]
    broken = HeadIgnoresZ(TinyMARConfig.preset("tiny-nova", **SMALL))
    with torch.no_grad():
        for p in broken.head_parameters():   # no all-zero tensor left: nothing to excuse it
            p.add_(0.01)
    res = {n: (ok, d) for n, ok, d in check_model(broken)}
    assert not res["head"][0] and res["head"][1] == "head ignores z"
    assert not res["cfg"][0]


@pytest.mark.parametrize("spec", ["tiny-nova", "tiny-harmon"])
def test_check_model_passes_for_fresh_tiny_models(spec, capsys):
    """Every name ``marpipe check-model --help`` lists passes on a freshly built model."""
    assert main([spec, "--ar-steps", "4"]) == 0
    assert "11/11 checks passed" in capsys.readouterr().out
