"""The benchmark commands print figures; here only their plumbing is checked, at tiny sizes."""
import math

from marpipe.bench import VARIANTS, bench_reward_rise
from marpipe.cli import main

from .helpers import tiny


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
