"""torchrun with 2 gloo ranks gives the same training as 1 process with the same global batch."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from marpipe.io.checkpoint import latest_valid, load_model_weights
from marpipe.io.files import write_prompt_set
from marpipe.io.tracking import read_jsonl
from marpipe.models.download import write_manifest
from tests.helpers import PROMPTS, tiny
from tests.pipeline_config import shrunk_config


@pytest.fixture
def workdir(tmp_path):
    cfg = shrunk_config()
    cfg["scorers"]["redness"] = {}
    cfg["rewards"]["hps"] = {"redness": 1.0}
    cfg["train"].update(steps=2, save_every=2, prompts_per_step=2, group_size=2, lr=1e-4)
    cfg["selection"]["fixed_step"] = {"hps": 2, "mixed": 2}
    cfg["models"]["tiny-nova"]["sampling"] = {"ar_steps": 4, "diffusion_steps": 5, "cfg_scale": 3.0}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    model_dir = tmp_path / "resources" / "models" / "tiny-nova"
    model_dir.mkdir(parents=True)
    tiny().save(model_dir / "model.safetensors")
    write_manifest(model_dir)
    write_prompt_set(tmp_path / "train.jsonl", [{"prompt": p} for p in PROMPTS])
    return tmp_path


def run(workdir, out, nproc):
    args = ["train", "--config", str(workdir / "cfg.yaml"), "--model", "tiny-nova", "--reward", "hps",
            "--variant", "fix_decoder", "--prompts", str(workdir / "train.jsonl"), "--out", str(workdir / out),
            "--resources", str(workdir / "resources"), "--no-progress"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "marpipe", *args]
    else:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "marpipe", *args]
    env = {"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent), "MLFLOW_TRACKING_URI": ""}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return load_model_weights(latest_valid(workdir / out / "checkpoints")), read_jsonl(workdir / out / "metrics.jsonl")


def test_two_gloo_ranks_equal_one_process(workdir):
    one, rows_one = run(workdir, "one", 1)
    two, rows_two = run(workdir, "two", 2)
    # the same prompts, groups and noise: identical rollouts and rewards
    for a, b in zip(rows_one, rows_two):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], rel=1e-6)
        assert a["tokens_in_loss"] == b["tokens_in_loss"]
        # well-conditioned quantities only. The on-policy loss is NOT compared: it is a
        # cancellation of O(1) terms (~1e-7, either sign, depending on the CPU's summation order).
        # The gradient after the all-reduce is O(10) and its norm agrees to float32 reduction noise;
        # the ratio is ~1; the KL is a sum of non-negative per-token terms.
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
        assert a["ratio_mean"] == pytest.approx(b["ratio_mean"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-2, abs=1e-8)
    assert one.keys() == two.keys()
    base = tiny().state_dict()
    moved = [k for k in one if not torch.equal(one[k], base[k])]
    assert moved, "training changed nothing"
    for k in one:
        a, b = one[k], two[k]
        if k.endswith("self_attn.in_proj_bias"):
            # the key bias cancels in the softmax: its true gradient is exactly 0, so what it
            # gets is summation-order noise, which Adam turns into a +-lr step; compare q and v
            d = a.shape[0] // 3
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        # otherwise only the float summation order differs (all-reduce)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
