"""`marpipe lock` against the local hub: lock, download and verify; a tampered file fails naming it; a
branch that moves after the lock does not change a locked download; a `files:` filter naming a file
the commit lacks is refused at lock time, naming the key."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from marpipe import lock as L
from marpipe.models.download import DownloadError, ModelSource, download_model, read_manifest
from testbed.hub.build import build_hub, index_entry
from testbed.hub.repos import REPOS
from testbed.hub.server import HubServer

ROOT = Path(__file__).resolve().parents[2]
DEPTH = "Intel/dpt-hybrid-midas"
STYLES = ("anime", "concept-art", "paintings", "photo")


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    build_hub(root, ["depth", "preference"], log=lambda s: None)
    return root


def moved(hub_root: Path, tmp: Path) -> Path:
    """A second hub folder in which depth's main has a new commit (config.json edited)."""
    new = tmp / "hub-moved"
    shutil.copytree(hub_root, new)
    cfg = new / "repos" / DEPTH / "config.json"
    cfg.write_text(cfg.read_text().replace("{", '{\n  "moved": true,', 1))
    index = json.loads((new / "index.json").read_text())
    index["repos"] = {DEPTH: index_entry(REPOS["depth"], new / "repos" / DEPTH)}
    (new / "index.json").write_text(json.dumps(index))
    return new


def config(endpoint: str) -> dict:
    return {"weights": {"depth": {"kind": "hub", "repo_id": DEPTH, "revision": None,
                                  "files": ["config.json", "model.safetensors"]}},
            "prompts": {"preference": {"kind": "url", "format": "hps_benchmark", "styles": {
                s: {"url": f"{endpoint}/datasets/zhwang/HPDv2/resolve/main/benchmark/{s}.json", "sha256": None}
                for s in STYLES}}}}


def fetch_depth(cfg: dict, root: Path) -> Path:
    spec = cfg["weights"]["depth"]
    return download_model(ModelSource("depth", spec["repo_id"], spec["revision"], key="weights.depth"), root,
                          locked=spec.get("locked_files"))


def test_lock_download_and_verify(hub_root, tmp_path, monkeypatch):
    with HubServer(hub_root) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        cfg = config(srv.endpoint)
        assert len(L.unlocked(cfg, None)) == 5
        lock = L.resolve(cfg, log=lambda s: None)
        index = json.loads((hub_root / "index.json").read_text())["repos"]
        depth = lock["sources"]["weights.depth"]
        assert depth["revision"] == index[DEPTH]["revision"]
        assert depth["files"] == {f: {"size": index[DEPTH]["files"][f]["size"],
                                      "sha256": index[DEPTH]["files"][f]["sha256"]}
                                  for f in ("config.json", "model.safetensors")}
        anime = lock["sources"]["prompts.preference.styles.anime"]
        commit = index["zhwang/HPDv2"]["revision"]
        assert anime["url"] == f"{srv.endpoint}/datasets/zhwang/HPDv2/resolve/{commit}/benchmark/anime.json"
        assert anime["sha256"] == index["zhwang/HPDv2"]["files"]["benchmark/anime.json"]["sha256"]
        locked = L.apply(cfg, lock)
        assert L.unlocked(locked, lock) == []
        folder = fetch_depth(locked, tmp_path / "dl")
        assert {k: v for k, v in read_manifest(folder).items()} == {
            f: e["sha256"] for f, e in depth["files"].items()}
        from marpipe.stages.resources import _download
        data = _download(locked["prompts"]["preference"]["styles"]["anime"], None, "preference", "k")
        assert json.loads(data)[0].startswith("a anime picture")


def test_a_tampered_file_fails_naming_it(hub_root, tmp_path, monkeypatch):
    with HubServer(hub_root) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        cfg = config(srv.endpoint)
        locked = L.apply(cfg, L.resolve(cfg, log=lambda s: None))
    tampered = tmp_path / "hub"
    shutil.copytree(hub_root, tampered)
    weights = tampered / "repos" / DEPTH / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with HubServer(tampered) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        with pytest.raises(DownloadError, match=r"model\.safetensors has sha256 .* records .* weights\.depth"):
            fetch_depth(locked, tmp_path / "dl")


def test_a_moved_branch_does_not_change_a_locked_download(hub_root, tmp_path, monkeypatch):
    with HubServer(hub_root) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        cfg = config(srv.endpoint)
        lock = L.resolve(cfg, log=lambda s: None)
    before = lock["sources"]["weights.depth"]
    with HubServer([hub_root, moved(hub_root, tmp_path)]) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        now = L.resolve(config(srv.endpoint), log=lambda s: None)["sources"]["weights.depth"]
        assert now["revision"] != before["revision"]          # main moved
        assert now["files"]["config.json"] != before["files"]["config.json"]
        folder = fetch_depth(L.apply(cfg, lock), tmp_path / "dl")
    assert b'"moved"' not in (folder / "config.json").read_bytes()
    assert json.loads((folder / "MARPIPE_SOURCE.json").read_text())["revision"] == before["revision"]


def test_a_files_filter_naming_a_missing_file_is_refused_at_lock(hub_root, monkeypatch):
    with HubServer(hub_root) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        cfg = config(srv.endpoint)
        cfg["weights"]["depth"]["files"] = ["config.json", "model.bin"]
        with pytest.raises(L.LockError, match=r"weights\.depth\.files names model\.bin.*pytorch_model\.bin"):
            L.resolve(cfg, log=lambda s: None)


def test_an_edited_entry_is_unlocked_again(hub_root, monkeypatch):
    with HubServer(hub_root) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        cfg = config(srv.endpoint)
        lock = L.resolve(cfg, log=lambda s: None)
    cfg["weights"]["depth"]["files"] = ["config.json"]
    assert L.unlocked(L.apply(cfg, lock), lock) == [
        f"weights.depth.revision is not pinned ({DEPTH}); its lock entry was written for another value of this entry"]


# --- a real run without a lock ----------------------------------------------------------------------------
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.mark.parametrize("profile", [None, "slurm"])
def test_a_paper_run_without_a_lock_stops_before_any_job(tmp_path, profile):
    """A fresh checkout of the paper config, no lock file: `snakemake --cores 1 all` (and through the cluster
    profile) exits non-zero before any job starts, naming the real keys and `marpipe lock`."""
    work = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    for f in ("Snakefile", "config.yaml", "workflow", "marpipe/data", "slurm"):   # this tree, committed or not
        src, dst = ROOT / f, work / f
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy(src, dst)
    assert not (work / "config.lock.yaml").exists()
    cmd = [SNAKEMAKE, "all"] + (["--profile", profile] if profile else ["--cores", "1"])
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "MLFLOW_TRACKING_URI": "file:" + str(tmp_path / "mlruns")})
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "models.nova.source.revision is not pinned" in out and "weights.blip_vqa.revision" in out, out[-3000:]
    assert "prompts.preference.styles.anime.sha256 is not pinned" in out
    assert "marpipe lock --config config.yaml" in out
    assert not (work / "logs").exists() and not (work / "resources").exists()
    assert "Submitted job" not in out and "rule download_" not in out.split("marpipe: ")[-1]


def test_the_dry_run_shows_the_plan_and_what_is_unlocked(tmp_path):
    r = subprocess.run([SNAKEMAKE, "all", "-n", "--cores", "1", "--quiet", "rules"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "a real run will not start" in r.stderr and "weights.depth.revision is not pinned" in r.stderr
    assert "download_base_model" in r.stdout + r.stderr


def test_clip_benchmarks_dataset_folder_is_locked_to_a_commit(hub_root, monkeypatch):
    """The scorer check's webdataset (clip-benchmark fetches its shards from a hub dataset folder at
    `tree/<rev>`): the lock records the folder at its commit, and the run reads that root."""
    with HubServer(hub_root) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        cfg = {"scorer_check": {"benchmark": {"kind": "clip_benchmark", "retrieval": {
            "dataset": "wds/hpdv2", "root": srv.endpoint + "/datasets/zhwang/HPDv2/tree/main"}}}}
        assert L.unlocked(cfg, None) == [f"scorer_check.benchmark.retrieval.root is not pinned "
                                         f"({srv.endpoint}/datasets/zhwang/HPDv2/tree/main)"]
        lock = L.resolve(cfg, log=lambda s: None)
    commit = json.loads((hub_root / "index.json").read_text())["repos"]["zhwang/HPDv2"]["revision"]
    locked = L.apply(cfg, lock)
    assert locked["scorer_check"]["benchmark"]["retrieval"]["root"] == f"{srv.endpoint}/datasets/zhwang/HPDv2/tree/{commit}"
    assert L.unlocked(locked, lock) == []
