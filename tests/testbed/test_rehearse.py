"""``make rehearse`` (``testbed.hub.rehearse``): its config, its working folder and its fixtures.

Fast: no snakemake run, no hub. The rehearsal itself (the paper DAG on the local hub through
``--profile slurm``) is ``make rehearse``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from marpipe import experiment as E
from testbed.hub import rehearse as R

ROOT = Path(__file__).resolve().parents[2]
REHEARSAL = ROOT / "config" / "rehearsal.yaml"


# --- the snakemake call: --profile slurm fitted onto the one-node CI cluster ---------------
def test_ci_overrides_fit_every_sized_rule_of_the_paper_profile_onto_the_ci_node():
    prof = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    args = R.ci_overrides()
    i = args.index("--set-resources")
    res = {}
    for item in args[i + 1:]:
        rule, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        res.setdefault(rule, {})[k] = v
    assert set(prof["set-resources"]) <= set(res), "a rule the paper profile sizes keeps its paper size"
    for rule, r in res.items():
        assert int(r["mem_mb"]) <= 8000 and int(r.get("gpu", 0)) <= R.CI_RANKS.get(rule, 1) <= 2  # 2 CPUs, ~24 GB
        assert int(r.get("cpus_per_gpu", r.get("cpus_per_task", 1))) == 1
        want = "gpu" if "gpu" in prof["set-resources"][rule] else "cpu"
        assert r["slurm_partition"] == want
    assert args[args.index("--slurm-status-command") + 1] == "squeue"        # no slurmdbd on the CI cluster


def test_the_rehearsal_runs_the_readmes_cluster_commands_as_written():
    """The README's cluster section is CLUSTER_COMMANDS with config.yaml; the rehearsal runs the same
    commands with its config, adding only the working folder and the one-node cluster's overrides."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## On a SLURM cluster")[1].split("```bash\n")[1].split("```")[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert lines == [c.format(config="config.yaml") for c in R.CLUSTER_COMMANDS]
    lock, preflight, run, report = R.steps("slurm", "rehearsal", "config/rehearsal.yaml", extra=["-n"])
    bindir = str(Path(R.sys.executable).parent)
    assert lock == [f"{bindir}/marpipe", "lock", "--config", "config/rehearsal.yaml"]
    assert preflight[:6] == [f"{bindir}/marpipe", "preflight", "--profile", "slurm", "--configfile",
                             "config/rehearsal.yaml"]
    assert preflight[6:10] == ["--directory", "rehearsal", "--accept-no-gpu", "--"] and preflight[10:] == R.ci_overrides()
    assert run[:4] == [f"{bindir}/snakemake", "--profile", "slurm", "all"]
    assert run[-3:] == ["--configfile", "config/rehearsal.yaml", "-n"] and R.ci_overrides()[0] in run
    assert report == [f"{bindir}/snakemake", "--report", "report.html", "--directory", "rehearsal", "--configfile",
                      "config/rehearsal.yaml"]
    local = R.steps("local", "rehearsal")[2]
    assert "--slurm-status-command" not in local and local[local.index("--cores") + 1] == "2"


# --- what a rehearsal needs to run the paper DAG --------------------------------------------------
def test_rehearsal_config_validates_and_sets_harmons_image_size():
    cfg = E.validate(E.read_config(REHEARSAL))
    assert cfg["models"]["harmon"]["sampling"]["image_size"] == 32
    assert cfg["scorers"]["hps"]["weights"]["config_dir"] == "clip_h14_processor"
    assert "open_clip_config.json" in cfg["weights"]["clip_h14_processor"]["files"]
    for key in ("clip_l14", "clip_b32"):
        assert "open_clip_config.json" in cfg["weights"][key]["files"]
    paper = E.validate(E.read_config(ROOT / "config.yaml"))
    for key in ("clip_l14", "clip_b32"):
        assert "open_clip_config.json" in paper["weights"][key]["files"]


def test_image_size_is_refused_for_a_model_whose_config_fixes_it():
    cfg = E.read_config(REHEARSAL)
    cfg["models"]["nova"]["sampling"]["image_size"] = 32
    with pytest.raises(E.ConfigError, match=r"config\.models\.nova\.sampling\.image_size: .*remove the key"):
        E.validate(cfg)


def _tiny_hps(tmp_path: Path) -> tuple[Path, Path]:
    from testbed import metrics as tiny
    src = tiny.make_hps_dir(tmp_path)
    hps = tmp_path / "hps-weights"                # xswu/HPSv2: the checkpoint, no architecture
    hps.mkdir()
    shutil.copyfile(src / "HPS_v2.1_compressed.pt", hps / "HPS_v2.1_compressed.pt")
    proc = tmp_path / "processor"                 # laion/CLIP-ViT-H-14-...: open_clip_config.json
    proc.mkdir()
    (proc / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_OPEN_CLIP}))
    return hps, proc


def test_hps_takes_its_architecture_from_config_dir(tmp_path):
    from marpipe.metrics.clip_metrics import HPSv21
    hps, proc = _tiny_hps(tmp_path)
    m = HPSv21.from_pretrained(hps, config_dir=proc, batch_size=2)
    s = m.score(torch.rand(2, 3, 40, 48), ["a red cat", "a dog"])
    assert s.shape == (2,) and torch.isfinite(s).all()


def test_hps_config_dir_without_the_file_names_the_key_and_the_fix(tmp_path):
    from marpipe.metrics.base import WeightsError
    from marpipe.metrics.clip_metrics import HPSv21
    hps, _ = _tiny_hps(tmp_path)
    empty = tmp_path / "clip_h14_processor"
    empty.mkdir()
    with pytest.raises(WeightsError, match=r"scorers\.hps\.weights\.config_dir.*open_clip_config\.json to that "
                                           r"`weights:` entry's `files:`"):
        HPSv21.from_pretrained(hps, config_dir=empty)


def test_open_clip_config_without_quick_gelu_keeps_the_openai_activation(tmp_path):
    from open_clip.transformer import QuickGELU

    from marpipe.metrics.clip_metrics import build_open_clip
    from testbed import metrics as tiny
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_OPEN_CLIP}))
    model, _, cfg = build_open_clip(tmp_path, "ViT-L-14-quickgelu", "aesthetic")
    assert cfg["quick_gelu"] is True
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**tiny.TINY_OPEN_CLIP,
                                                                              "quick_gelu": False}}))
    model, _, _ = build_open_clip(tmp_path, "ViT-L-14-quickgelu", "aesthetic")   # the file's word wins
    assert not isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_a_hub_server_that_lacks_a_pinned_revision_is_reported_stale():
    pins = {"IDEA-Research/grounding-dino-tiny": "0" * 40, "http://127.0.0.1:1/files/x": "ab" * 32}
    assert R.stale_pins("http://127.0.0.1:1", pins) == ["IDEA-Research/grounding-dino-tiny@0000000"]


def test_gdino_fixture_has_the_transformers4_layout_of_the_real_file(tmp_path):
    """NOVA's mixed reward runs Grounding DINO under transformers 4.57 (.venv-nova), which strictly refuses
    the layout transformers 5 writes (Swin's relative_position_index missing, swin.layernorm unexpected).
    The fixture has the real file's transformers-4 layout, which both versions read."""
    import subprocess

    from safetensors import safe_open

    from marpipe.metrics.detection import ZeroShotDetector
    from testbed.hub.build import build_hub, side_python
    build_hub(tmp_path, ["gdino"], log=lambda *a, **k: None)
    d = tmp_path / "repos" / "IDEA-Research" / "grounding-dino-tiny"
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        idx = [k for k in keys if k.endswith("attention.self.relative_position_index")]
        assert idx and all(len(f.get_slice(k).get_shape()) == 2 for k in idx)
    assert not [k for k in keys if ".swin.layernorm." in k]
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    here = ZeroShotDetector.from_pretrained(d).detect(img, [["cat"]])      # transformers 5 (strict)
    nova = side_python("nova")
    if not nova.exists():
        pytest.skip("no .venv-nova (make official-venvs): transformers 4.57 not checked")
    code = ("import json, torch; from marpipe.metrics.detection import ZeroShotDetector; "
            "img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)); "
            f"print(json.dumps(ZeroShotDetector.from_pretrained({str(d)!r}).detect(img, [['cat']])))")
    r = subprocess.run([str(nova), "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    there = json.loads(r.stdout.strip().splitlines()[-1])
    assert [x["label"] for x in there[0]] == [x["label"] for x in here[0]]
    assert there[0][0]["score"] == pytest.approx(here[0][0]["score"], abs=1e-5)


def test_the_working_folder_is_its_own_git_repository_so_dvc_can_init(tmp_path):
    """In a folder the checkout ignores, `dvc init --subdir` refuses (".dvc is ignored by your SCM
    tool") and dvc_push, the DAG's last job, would fail: the working folder is a repository of its own."""
    work = R.prepare_workdir(tmp_path / "rehearsal")
    assert (work / ".git").is_dir()
    R.prepare_workdir(work)                         # idempotent
    assert (work / ".git").is_dir()


def test_a_rehearsal_refuses_to_start_without_the_disk_it_needs(tmp_path):
    """A rehearsal writes checkpoints and their DVC copies (~0.2 GB) and checks
    the free disk first, so it cannot fill a shared disk."""
    with pytest.raises(SystemExit, match=r"GB free; a rehearsal needs ~"):
        R.check_disk(tmp_path, need_gb=1e9)
    R.check_disk(tmp_path, need_gb=0)
