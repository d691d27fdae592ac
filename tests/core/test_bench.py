"""The benchmark commands print figures; here only their plumbing is checked, at tiny sizes."""
import math
from pathlib import Path

import torch

from marpipe.bench import VARIANTS, bench_reward_rise, bench_warmup, total_variation
from marpipe.cli import main
from marpipe.rewards import build_reward

from .helpers import grpo, tiny


def test_reward_rise_reports_every_variant_and_seed(tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    tiny().save(weights)
    report = bench_reward_rise(str(weights), steps=5, seeds=(0, 1), held_out=2)
    assert set(report["runs"]) == {f"{v}/seed{s}" for v in VARIANTS for s in (0, 1)}
    values = [x for r in report["runs"].values() for x in r.values()] + [report["held_out_before"]]
    assert all(math.isfinite(x) for x in values)
    # the seed changes the training prompts and noise, so the runs differ
    assert report["runs"]["grpo/seed0"] != report["runs"]["grpo/seed1"]
    assert "held-out after" in capsys.readouterr().out


def test_reward_rise_names_the_missing_weights_and_how_to_make_them(tmp_path, capsys):
    assert main(["bench", "reward-rise", "--weights", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "none.safetensors: no such file" in err and "make demo" in err


def test_total_variation_is_zero_on_a_flat_image_and_one_on_a_checkerboard():
    flat = torch.full((1, 3, 8, 8), 0.3)
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float().expand(1, 3, 8, 8)
    assert total_variation(flat) == 0.0
    assert total_variation(board) == 1.0


def test_warmup_bench_measures_each_model_before_and_after_a_head_only_warmup(capsys):
    models = {kind: tiny(kind) for kind in ("tiny-nova", "tiny-harmon")}
    cfg = grpo(trainable="head", steps=2, lr=1e-2, save_every=10**6)
    report = bench_warmup(models, cfg, build_reward("redness"), {"brightness": build_reward("brightness")},
                          held_out=3)
    assert set(report["models"]) == set(models)
    columns = {"reward", "brightness", "total_variation"}
    assert set(report["renders"]) == columns
    for m in report["models"].values():
        assert set(m["before"]) == set(m["after"]) == columns
        assert all(math.isfinite(v) for v in [*m["before"].values(), *m["after"].values()])
        assert m["before"] != m["after"]          # the head moved, so the same-seed samples changed
    assert report["renders"]["total_variation"] > 0
    out = capsys.readouterr().out
    assert "tiny-harmon before" in out and "renders (clean)" in out


def test_warmup_bench_names_the_unfetched_base_model_and_its_rule(tmp_path, monkeypatch, capsys):
    config = str(Path("config/small.yaml").resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "warmup", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "base model 'tiny-nova' is not fetched" in err and "snakemake" in err
