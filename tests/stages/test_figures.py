"""Figures: training dynamics and sample grids are valid PNGs of the expected size, byte-identical on rerun."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from marpipe import experiment
from marpipe.io.files import save_images
from marpipe.stages import figures as F

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["grpo", "fix_decoder", "mte", "sim"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def write_metrics(path: Path, seed: int, steps: int = 12, gap_at: int | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(1, steps + 1):
        row = {"step": s, "reward_mean": 0.1 * s + rng.normal(0, 0.05), "reward_std": 0.1, "loss": 0.0,
               "kl": 1e-3 * s * (seed + 1), "grad_norm": float(rng.uniform(0.1, 1.0)), "ratio_mean": 1.0,
               "clip_frac": 0.0, "time_step_s": 0.5}
        if s == gap_at:
            del row["kl"]
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_bundle(path: Path, seed: int, n_prompts: int = 10, per_prompt: int = 2, size: int = 32) -> Path:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n_prompts * per_prompt, 3, size, size, generator=g)
    prompts = [f"a red cube left of a blue sphere number {i}" for i in range(n_prompts)]
    return save_images(path, images, prompts, [{"column": "Color"}] * n_prompts,
                       [i // per_prompt for i in range(n_prompts * per_prompt)], {"seed": seed})


def test_plot_dynamics(tmp_path):
    metrics = {v: write_metrics(tmp_path / "runs" / v / "metrics.jsonl", i, gap_at=3 if v == "mte" else None)
               for i, v in enumerate(VARIANTS)}
    a = F.plot_dynamics(metrics, "NOVA, HPS reward", tmp_path / "a.png")
    b = F.plot_dynamics(metrics, "NOVA, HPS reward", tmp_path / "b" / "b.png")
    assert png_size(a) == (int(F.DYNAMICS_SIZE[0] * F.DPI), int(F.DYNAMICS_SIZE[1] * F.DPI))
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(FileNotFoundError, match="no training metrics for 'sim'"):
        F.plot_dynamics({"sim": tmp_path / "missing.jsonl"}, "x", tmp_path / "c.png")


def test_sample_grid(tmp_path):
    rows = ["base", "hps-grpo", "hps-fix_decoder", "hps-mte", "hps-sim"]
    bundles = {r: write_bundle(tmp_path / "images" / r / "preference.npz", i) for i, r in enumerate(rows)}
    out = F.sample_grid(bundles, tmp_path / "grid.png", n_prompts=8)
    assert png_size(out) == F.grid_size(5, 8, 32)
    w, h = F.grid_size(5, 8, 32)
    assert (w, h) == (F.GRID_LABEL_W + 8 * 128 + 9 * F.GRID_PAD, F.GRID_TITLE_H + 5 * 128 + 6 * F.GRID_PAD)
    again = F.sample_grid(bundles, tmp_path / "again.png", n_prompts=8)
    assert out.read_bytes() == again.read_bytes()
    # fewer prompts than asked: as many columns as prompts
    few = {"base": write_bundle(tmp_path / "few.npz", 9, n_prompts=3)}
    assert png_size(F.sample_grid(few, tmp_path / "few.png", n_prompts=8)) == F.grid_size(1, 3, 32)


def test_sample_grid_pixels_are_upscaled_images(tmp_path):
    """The cell of row r, prompt c is that prompt's first image, upscaled 4x with nearest."""
    from PIL import Image

    from marpipe.io.files import load_images, to_uint8
    p = write_bundle(tmp_path / "b.npz", 3, n_prompts=2)
    out = F.sample_grid({"base": p}, tmp_path / "g.png", n_prompts=2)
    png = np.asarray(Image.open(out).convert("RGB"))
    img = to_uint8(load_images(p)["images"])[2]          # prompt 1's first image (2 images per prompt)
    x0 = F.GRID_LABEL_W + F.GRID_PAD + 128 + F.GRID_PAD
    y0 = F.GRID_TITLE_H + F.GRID_PAD
    cell = png[y0:y0 + 128, x0:x0 + 128]
    assert np.array_equal(cell[::4, ::4], img)
    assert np.array_equal(cell[3::4, 3::4], img)


def test_input_paths_follow_config():
    exp = experiment.load(ROOT / "config" / "small.yaml")
    m = F.metrics_paths(exp, "tiny-nova", "hps", "results")
    assert list(m) == VARIANTS and m["sim"] == Path("results/runs/tiny-nova/hps/sim/seed0/metrics.jsonl")
    g = F.grid_bundles(exp, "tiny-nova", "compbench", "results")
    assert list(g) == ["base", "mixed-grpo", "mixed-fix_decoder", "mixed-mte", "mixed-sim"]
    assert g["base"] == Path("results/images/tiny-nova/base/compbench.npz")
    assert g["mixed-mte"] == Path("results/images/tiny-nova/mixed-mte/seed0/compbench.npz")
    # the second model trains only Table 1's variants: its figures show those
    assert list(F.metrics_paths(exp, "tiny-harmon", "hps")) == ["grpo", "sim"]
    assert list(F.grid_bundles(exp, "tiny-harmon", "compbench")) == ["base", "mixed-grpo", "mixed-sim"]
    two = experiment.load({**experiment.read_config(ROOT / "config" / "small.yaml"), "seeds": [3, 1]})
    assert F.metrics_paths(two, "tiny-nova", "hps")["grpo"] == Path("results/runs/tiny-nova/hps/grpo/seed3/metrics.jsonl")
    assert [F.display_label(k) for k in g] == ["Base", "GRPO", "+Fix Decoder", "+MTE", "+Sim (Ours)"]
