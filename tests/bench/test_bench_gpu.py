"""``marpipe bench gpu``: the tiny CPU run end to end (the command a GPU session starts from), and the
real-size path where it can be checked without a GPU: the real configs' parameter counts (meta device)
and the whole bench on the official classes at small configs on the CPU. The last two need the official
code and run in the side venvs (.venv-nova, .venv-harmon); elsewhere they skip, saying why."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from marpipe.bench.gpu import PHASES, VARIANTS

REPO = Path(__file__).resolve().parents[2]


def _check_report(model: dict, variants) -> None:
    assert list(model["variants"]) == list(variants)
    assert model["official_sampler"]["seconds"] > 0 and model["official_sampler"]["images"] == model["batch"]["images"]
    for v in variants:
        row = model["variants"][v]
        assert "error" not in row, row.get("error")
        assert list(row["phases"]) == list(PHASES)
        for name, ph in row["phases"].items():
            assert ph["seconds"] >= 0, (v, name)
            assert ph["calls"] == 0 or ph["peak_memory_mib"] >= 0, (v, name)
        for name in ("prompt_encoding", "rollout_ar", "rollout_head", "decode", "reward", "loss_forward",
                     "kl_reference", "backward", "optimizer"):
            assert row["phases"][name]["calls"] > 0, (v, name)
        assert (row["phases"]["mte_extras"]["calls"] > 0) == row["settings"]["mte"], v
        assert row["finite"] and row["images"] == model["batch"]["images"]
        assert row["nonzero_grad"] > 0
        assert row["weights_changed_fraction"] >= 0.99, (v, row["weights_changed_fraction"])


def test_tiny_cpu_bf16_json():
    """The command as documented: every variant of both tiny models, one JSON object, within a minute."""
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "marpipe", "bench", "gpu", "--size", "tiny", "--device", "cpu",
                          "--dtype", "bfloat16", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert (report["size"], report["device"], report["dtype"]) == ("tiny", "cpu", "bfloat16")
    assert list(report["models"]) == ["tiny-nova", "tiny-harmon"]
    for name, model in report["models"].items():
        assert model["batch"] == {"prompts": 1, "group_size": 4, "images": 4}, name
        assert "tiny" in model["official_sampler"]["sampler"]
        _check_report(model, VARIANTS)
    print(f"[bench gpu] tiny CPU bf16: {elapsed:.1f} s")
    assert elapsed < 60


def test_phase_clock_charges_the_innermost_phase():
    from marpipe.bench.gpu import PhaseClock
    clock = PhaseClock(torch.device("cpu"))
    with clock.region("loss_forward"):
        time.sleep(0.02)
        with clock.region("kl_reference"):
            time.sleep(0.05)
    rep = clock.report()
    assert 0.05 <= rep["kl_reference"]["seconds"] < rep["kl_reference"]["seconds"] + rep["loss_forward"]["seconds"]
    assert 0.02 <= rep["loss_forward"]["seconds"] < 0.05
    assert rep["backward"] == {"seconds": 0.0, "peak_memory_mib": None, "calls": 0}


# ------------------------------------------------------------------ the real-size path (side venvs)
def _official_or_skip(family: str):
    from marpipe.models import real_size
    root = real_size.official_root()
    try:
        if family == "nova":
            real_size.import_diffnext()
        else:
            pytest.importorskip("einops", reason="Harmon's remote code imports einops: run in .venv-harmon")
            real_size.import_harmon_code(root)
    except (ImportError, RuntimeError, FileNotFoundError) as e:
        pytest.skip(f"official {family} code does not build here: {e}")
    return root


def test_real_nova_configs_have_the_published_sizes():
    """The real configs (built on the meta device): transformer d48w1024 0.65B, Phi-2 2.78B, SD VAE."""
    from marpipe.models.real_size import parameter_counts
    counts = parameter_counts("nova", _official_or_skip("nova"))
    assert counts == {"transformer": 645_693_456, "text_encoder": 2_779_683_840, "vae": 83_653_863}


def test_real_harmon_configs_have_the_published_sizes():
    """Qwen2.5-1.5B: 1.54B parameters, 1.31B of them outside the (tied) embedding; MAR-Huge 20 + 20 blocks
    of width 1280 with its 12 x 1536 diffusion MLP; the KL-16 VAE."""
    from marpipe.models.real_size import QWEN25_1_5B, parameter_counts
    counts = parameter_counts("harmon", _official_or_skip("harmon"))
    assert counts["llm"] == 1_543_714_304
    assert round((counts["llm"] - QWEN25_1_5B["vocab_size"] * QWEN25_1_5B["hidden_size"]) / 1e9, 2) == 1.31
    assert counts["mar"] == 942_403_104 and counts["mar.diffloss"] == 151_206_944
    assert counts["vae"] == 66_456_019


SMALL_SAMPLING = {"ar_steps": 3, "diffusion_steps": 4}


def test_real_nova_path_at_small_size(tmp_path):
    """The real-size code path (official classes, adapter, ``NOVAPipeline`` as the sampler) with small
    configs on the CPU: every phase runs and the step moves the trained weights."""
    root = _official_or_skip("nova")
    from testbed.official import nova_tiny
    nova_tiny.import_diffnext(root)               # registers the tiny architectures in diffnext's registries

    from marpipe.bench.gpu import bench_model, variant_configs
    from marpipe.models.real_size import nova_subject
    dev = torch.device("cpu")
    subject = nova_subject(dev, torch.float32, root, sampling={**SMALL_SAMPLING, "cfg_scale": 5.0},
                           gradient_checkpointing=False,
                           transformer=dict(image_dim=4, image_size=64, image_stride=8, text_token_dim=32,
                                            text_token_len=8, image_base_size=[4, 4], video_base_size=[1, 2, 2],
                                            arch=nova_tiny.TINY_ARCH),
                           phi=dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=64),
                           vae=dict(latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                                    sample_size=64))
    cfgs = variant_configs("nova", ["grpo", "sim"], REPO / "config.yaml")
    _check_report(bench_model(subject, cfgs, dev, torch.float32), ["grpo", "sim"])


def test_real_harmon_path_at_small_size(tmp_path):
    """As above for Harmon: ``HarmonModel`` from the remote code (tiny Qwen2, ``mar_base``, the fixed VAE),
    ``HarmonModel.sample`` as the sampler (with the declared shims)."""
    root = _official_or_skip("harmon")
    from marpipe.bench.gpu import bench_model, variant_configs
    from marpipe.models.real_size import HARMON_MAR, QWEN25_1_5B, harmon_subject
    llm = {**QWEN25_1_5B, "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2}
    mar = {**HARMON_MAR, "type": "mar_base", "img_size": 32, "buffer_size": 4, "diffloss_d": 2, "diffloss_w": 32,
           "grad_checkpointing": False}
    dev = torch.device("cpu")
    subject = harmon_subject(dev, torch.float32, root, sampling={**SMALL_SAMPLING, "cfg_scale": 3.0},
                             gradient_checkpointing=False, image_size=64, llm=llm, mar=mar)
    cfgs = variant_configs("harmon", ["sim"], REPO / "config.yaml")
    _check_report(bench_model(subject, cfgs, dev, torch.float32), ["sim"])
