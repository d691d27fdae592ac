"""The local hub (``testbed.hub``): tiny fixture repositories in the real repositories' layouts,
served over HTTP and downloaded through ``marpipe.models.download`` -> ``huggingface_hub`` exactly
as on a cluster, with ``HF_ENDPOINT`` pointing at the hub.

``HF_ENDPOINT`` is read when ``huggingface_hub`` is imported, so the downloads run in a child
process with that environment (as a pipeline job would). Fast part: the scorer repositories
(built with transformers / open_clip, ~15 s). The NOVA/Harmon repositories need the official
code and the side venvs (``slow``; skipped, saying why, without them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from testbed.hub import gitobj
from testbed.hub.__main__ import check as check_pins
from testbed.hub.__main__ import config_pins
from testbed.hub.build import build_hub, official_root, side_python, url_path
from testbed.hub.repos import REPOS
from testbed.hub.server import HubServer

ROOT = Path(__file__).resolve().parents[2]
PAPER = yaml.safe_load((ROOT / "config.yaml").read_text())
REHEARSAL = ROOT / "config" / "rehearsal.yaml"
SCORER_KEYS = [k for k, r in REPOS.items() if r.builder is not None and r.repo_type == "model"]
OFFICIAL_KEYS = [k for k, r in REPOS.items() if r.side_venv]

# the child process: download every (name, repo_id, revision[, allow_patterns]) with marpipe's
# download_model and report the files, their sha256 and any DownloadError
CLIENT = r"""
import json, sys
from pathlib import Path
from marpipe.models.download import DownloadError, ModelSource, download_model, read_manifest
jobs, root = json.loads(sys.argv[1]), Path(sys.argv[2])
out = {}
for name, repo_id, rev, allow in jobs:
    try:
        d = download_model(ModelSource(name, repo_id, rev, allow_patterns=tuple(allow) if allow else None), root)
        files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and ".cache" not in p.parts)
        out[name] = {"files": files, "manifest": read_manifest(d)}
    except DownloadError as e:
        out[name] = {"error": str(e)}
print("RESULT" + json.dumps(out))
"""


def run_client(endpoint: str, jobs: list, dest: Path, python: str = sys.executable) -> dict:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(dest / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)
    r = subprocess.run([python, "-c", CLIENT, json.dumps(jobs), str(dest)], env=env, capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    index = build_hub(root, SCORER_KEYS + ["preference"], log=lambda s: None)   # + the HPS benchmark's dataset
    with HubServer(root) as srv:
        yield types.SimpleNamespace(root=root, index=index, server=srv)


@pytest.fixture(scope="module")
def downloads(hub, tmp_path_factory):
    """Every scorer repository at its revision, the full snapshot (no filter)."""
    dest = tmp_path_factory.mktemp("downloads")
    jobs = [[REPOS[k].key, rid, r["revision"], None] for rid, r in hub.index["repos"].items()
            for k in [r["key"]] if r["type"] == "model"]
    return run_client(hub.server.endpoint, jobs, dest)


# --- the layouts ---------------------------------------------------------------------------------
def test_every_hub_entry_of_the_paper_config_has_a_fixture():
    hub_ids = {s["source"]["repo_id"] for s in PAPER["models"].values() if s["source"]["kind"] == "hub"}
    hub_ids |= {s["repo_id"] for s in PAPER["weights"].values() if s["kind"] == "hub"}
    from marpipe.lock import parse_hub_url, sources
    hub_ids |= {parse_hub_url(s["url"])[1] for s in sources(PAPER).values()       # the HPS benchmark's dataset
                if "url" in s and parse_hub_url(s["url"])}
    assert hub_ids == {r.repo_id for r in REPOS.values()}
    for r in REPOS.values():
        assert r.source.split(":")[0] in ("listing", "inferred"), r.key
        assert list(r.files) == sorted(r.files), f"{r.key}: keep the file list sorted"


@pytest.mark.parametrize("key", sorted(k for k, s in PAPER["weights"].items() if s["kind"] == "hub" and s.get("files")))
def test_config_files_filters_name_files_of_the_real_layout(key):
    """config.yaml's `files:` of each hub entry are files the repository holds (else the download
    would fetch nothing and the loader fail on the cluster)."""
    spec = PAPER["weights"][key]
    assert set(spec["files"]) <= set(REPOS[key].files), sorted(set(spec["files"]) - set(REPOS[key].files))


# --- `files:` filters keep what the loaders open --------------------------------------------------
#: the scorers whose weights: entry filters a repository with several weight formats (loader, one call)
FILTERED_LOADERS = {
    "blip_vqa": lambda d: _metric("blip_vqa", d).score_questions(_images(2), ["a red cat?", "two dogs?"]),
    "git_vqa": lambda d: _metric("git_vqa", d).score_questions(_images(2), ["a red cat?", "two dogs?"]),
    "gdino": lambda d: _detector(d).detect(_images(1), [["cat", "red dog"]]),
    "depth": lambda d: _depth(d).depth_maps(_images(1)),
}
WEIGHT_FORMATS = (".bin", ".safetensors", ".h5", ".msgpack", ".onnx", ".ot", ".mlmodel", ".pt", ".pth")
POISON = b"marpipe test: a file the files: filter drops (a loader that reads it fails here)\n"


def _metric(name, folder):
    from marpipe.metrics import load_metric
    return load_metric(name, folder, batch_size=2)


def _detector(folder):
    from marpipe.metrics.detection import ZeroShotDetector
    return ZeroShotDetector.from_pretrained(folder, box_threshold=0.0)


def _depth(folder):
    from marpipe.metrics.detection import DepthEstimator
    return DepthEstimator.from_pretrained(folder)


def _images(n):
    from testbed.metrics import images
    return images(n)


def _same(a, b) -> bool:
    import torch
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("key", sorted(FILTERED_LOADERS))
def test_files_filter_keeps_every_file_the_loader_opens(key, hub, tmp_path):
    """config.yaml's `files:` (the same in config/rehearsal.yaml) of a repository with several weight
    formats, applied as snapshot_download applies it to the fixture repository (the real file list):
    it keeps ONE weight file; the loader on the filtered folder gives exactly what it gives on the whole
    repository (nothing it needs, or reads when present and defaults when absent, is dropped); and on
    the whole repository with every dropped file replaced by garbage it still gives that (it opens no
    dropped file, also not natively: safetensors, tokenizer.json -- e.g. not the other weight format)."""
    from huggingface_hub.utils import filter_repo_objects
    files = PAPER["weights"][key]["files"]
    assert yaml.safe_load(REHEARSAL.read_text())["weights"][key]["files"] == files
    repo = REPOS[key]
    kept = sorted(filter_repo_objects(repo.files, allow_patterns=files))
    assert set(kept) == set(files)                  # each name is a file of the repository (no pattern misses)
    assert len([f for f in repo.files if f.endswith(WEIGHT_FORMATS)]) > 1, f"{repo.repo_id}: one weight file"
    assert [f for f in kept if f.endswith(WEIGHT_FORMATS)] in (["model.safetensors"], ["pytorch_model.bin"])
    src = hub.root / "repos" / repo.repo_id
    whole, filtered, poisoned = tmp_path / "whole", tmp_path / "filtered", tmp_path / "poisoned"
    shutil.copytree(src, whole)
    shutil.copytree(src, poisoned)
    filtered.mkdir()
    for f in repo.files:
        if f in kept:
            shutil.copyfile(src / f, filtered / f)
        else:
            (poisoned / f).write_bytes(POISON)
    want = FILTERED_LOADERS[key](whole)
    assert _same(FILTERED_LOADERS[key](filtered), want), "the filtered download loads differently"
    try:
        got = FILTERED_LOADERS[key](poisoned)
    except Exception as e:        # noqa: BLE001 - any failure means a dropped file was read
        pytest.fail(f"the loader reads a file the filter drops ({sorted(set(repo.files) - set(kept))}): {e!r}")
    assert _same(got, want)
    if not isinstance(want, __import__("torch").Tensor):
        assert want, "no detections to compare"


def test_revisions_are_git_commits_of_the_files(hub, tmp_path):
    """The revision is the commit id git computes for the repository with its LFS files as pointers."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git not installed")
    rid = "THUDM/ImageReward"
    entry, src = hub.index["repos"][rid], hub.root / "repos" / rid
    work = tmp_path / "git"
    shutil.copytree(src, work)
    for f, e in entry["files"].items():
        if e["lfs"]:
            (work / f).write_bytes(gitobj.lfs_pointer((src / f).read_bytes()))
    env = {**os.environ, "GIT_AUTHOR_NAME": "marpipe-hub", "GIT_AUTHOR_EMAIL": "hub@marpipe.invalid",
           "GIT_COMMITTER_NAME": "marpipe-hub", "GIT_COMMITTER_EMAIL": "hub@marpipe.invalid",
           "GIT_AUTHOR_DATE": "@0 +0000", "GIT_COMMITTER_DATE": "@0 +0000", "GIT_CONFIG_GLOBAL": "/dev/null"}
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "commit.gpgsign=false", "commit", "-q", "-m", gitobj.COMMIT_MESSAGE]):
        subprocess.run([git, *cmd], cwd=work, env=env, check=True)
    head = subprocess.run([git, "rev-parse", "HEAD"], cwd=work, env=env, check=True, capture_output=True, text=True)
    assert head.stdout.strip() == entry["revision"]
    assert entry["files"]["ImageReward.pt"]["lfs"] and not entry["files"]["med_config.json"]["lfs"]


def test_the_build_is_deterministic(hub, tmp_path):
    again = build_hub(tmp_path, ["imagereward", "clip_b32"], log=lambda s: None)
    for rid in ("THUDM/ImageReward", "timm/vit_base_patch32_clip_224.openai"):
        assert again["repos"][rid]["revision"] == hub.index["repos"][rid]["revision"]
    assert again["files"] == hub.index["files"]


# --- served and downloaded as on a cluster -------------------------------------------------------
@pytest.mark.parametrize("key", SCORER_KEYS)
def test_download_gives_exactly_the_real_file_list(key, hub, downloads):
    repo = REPOS[key]
    got = downloads[key]
    assert "error" not in got, got.get("error")
    assert got["files"] == sorted([*repo.files, "MANIFEST.sha256", "MARPIPE_SOURCE.json"])
    served = hub.index["repos"][repo.repo_id]["files"]
    assert got["manifest"] == {f: e["sha256"] for f, e in served.items()}      # byte for byte


def test_files_filter_downloads_only_the_pinned_files(hub, tmp_path):
    """The config's `files:` lists reach snapshot_download as allow_patterns."""
    keys = ["imagereward", "bert_base_uncased", "clip_h14_processor"]
    jobs = [[k, REPOS[k].repo_id, hub.index["repos"][REPOS[k].repo_id]["revision"], PAPER["weights"][k]["files"]]
            for k in keys]
    got = run_client(hub.server.endpoint, jobs, tmp_path)
    for k in keys:
        assert got[k]["files"] == sorted([*PAPER["weights"][k]["files"], "MANIFEST.sha256", "MARPIPE_SOURCE.json"])


def test_wrong_revision_and_unknown_repository_are_download_errors(hub, tmp_path):
    wrong = "0123456789abcdef0123456789abcdef01234567"
    jobs = [["hps", "xswu/HPSv2", wrong, None], ["nope", "nobody/no-such-model", wrong, None]]
    got = run_client(hub.server.endpoint, jobs, tmp_path)
    assert got["hps"]["error"].startswith(f"xswu/HPSv2 has no revision {wrong}")
    assert "huggingface.co/xswu/HPSv2/commits/main" in got["hps"]["error"]
    assert got["nope"]["error"].startswith("repository nobody/no-such-model not found")


def test_resolve_headers_are_the_hubs(hub):
    """What get_hf_file_metadata reads: a regular file answers 200 with its git blob id as ETag; an
    LFS file 302 to another origin with X-Linked-Etag = sha256 and X-Linked-Size; never a Xet hash."""
    rid = "THUDM/ImageReward"
    e = hub.index["repos"][rid]
    opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                                              {"redirect_request": lambda *a, **k: None}))

    def head(path):
        req = urllib.request.Request(f"{hub.server.endpoint}/{rid}/resolve/{e['revision']}/{path}", method="HEAD")
        try:
            return opener.open(req)
        except urllib.error.HTTPError as err:
            return err
    r = head("med_config.json")
    assert r.status == 200 and r.headers["ETag"] == f'"{e["files"]["med_config.json"]["blob"]}"'
    assert r.headers["X-Repo-Commit"] == e["revision"]
    assert int(r.headers["Content-Length"]) == e["files"]["med_config.json"]["size"]
    r = head("ImageReward.pt")
    assert r.status == 302 and r.headers["X-Linked-Etag"] == f'"{e["files"]["ImageReward.pt"]["sha256"]}"'
    assert int(r.headers["X-Linked-Size"]) == e["files"]["ImageReward.pt"]["size"]
    assert not r.headers["Location"].startswith(hub.server.endpoint)          # the "CDN": another origin
    assert not any(h.lower().startswith("x-xet") for h in r.headers)
    r = head("no_such_file.bin")
    assert r.status == 404 and r.headers["X-Error-Code"] == "EntryNotFound"
    tree = json.loads(urllib.request.urlopen(f"{hub.server.endpoint}/api/models/{rid}/tree/main?recursive=True").read())
    assert {t["path"] for t in tree if t["type"] == "file"} == set(REPOS["imagereward"].files)
    assert not any("xetHash" in t for t in tree)
    req = urllib.request.Request(f"{hub.server.endpoint}/{rid}/resolve/{e['revision']}/med_config.json",
                                 headers={"Range": "bytes=5-"})
    r = urllib.request.urlopen(req)
    assert r.status == 206 and r.read() == (hub.root / "repos" / rid / "med_config.json").read_bytes()[5:]


# --- `kind: url` files ---------------------------------------------------------------------------
def _served(hub, key):
    return next((rel, f) for rel, f in hub.index["files"].items() if f["key"] == key)


def test_url_prompt_set_is_fetched_and_its_sha256_checked(hub, tmp_path):
    from marpipe.io.files import read_prompt_set
    from marpipe.stages.resources import fetch_prompts
    rel, f = _served(hub, "prompts.compbench_color")
    spec = {"kind": "url", "format": "txt", "url": f"{hub.server.endpoint}/{rel}", "sha256": f["sha256"]}
    exp = types.SimpleNamespace(cfg={"seed": 0, "prompts": {"compbench_color": spec}})
    out = fetch_prompts(exp, "compbench_color", tmp_path / "compbench_color.jsonl")
    rows = read_prompt_set(out)
    assert len(rows) == 4 and all(r["prompt"] for r in rows)
    bad = {**spec, "sha256": "0" * 64}
    exp.cfg["prompts"]["compbench_color"] = bad
    with pytest.raises(RuntimeError, match=rf"has sha256 {f['sha256']} but the pinned sha256 is 0{{64}}.*"
                                           r"prompts\.compbench_color\.sha256"):
        fetch_prompts(exp, "compbench_color", tmp_path / "again.jsonl")


def test_every_url_file_of_the_paper_config_is_served(hub, tmp_path):
    from marpipe.stages.resources import fetch_url_weights
    urls = {f["url"] for f in hub.index["files"].values()}
    want = {u for u in config_pins(PAPER) if u.startswith("http")}
    assert urls == want
    rel, f = _served(hub, "weights.aesthetic")
    assert rel == url_path(PAPER["weights"]["aesthetic"]["url"])
    spec = {"kind": "url", "url": hub.server.url_for(PAPER["weights"]["aesthetic"]["url"]), "sha256": f["sha256"]}
    out = fetch_url_weights(spec, "aesthetic", tmp_path / "aesthetic")
    assert (out / "sac+logos+ava1-l14-linearMSE.pth").is_file()


# --- config/rehearsal.yaml -----------------------------------------------------------------------
def test_rehearsal_config_validates_and_pins_what_the_hub_serves(hub):
    from marpipe import experiment
    experiment.load(REHEARSAL)
    cfg = yaml.safe_load(REHEARSAL.read_text())
    problems = [p for p in check_pins(hub.root, REHEARSAL) if not any(REPOS[k].repo_id in p for k in OFFICIAL_KEYS)]
    assert problems == []
    assert set(cfg) == set(PAPER), "the rehearsal config has the paper config's keys"


BUILD_REVISIONS = r"""
import json, sys
from testbed.hub.build import build_hub
index = build_hub(sys.argv[1], sys.argv[2:], log=lambda s: None)
print("RESULT" + json.dumps({k: v["revision"] for k, v in index["repos"].items()}))
"""


def test_the_hub_has_the_same_bytes_under_every_cpu_capability(hub, tmp_path):
    """torch's random initialisers run other kernels (other floats) under another CPU capability; the
    fixtures' weights must not: the same revisions under ATen's scalar kernels as in this process."""
    keys = ["hps", "clip_l14", "clip_b32", "pickscore"]        # timm's trunc_normal_, open_clip, transformers
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    r = subprocess.run([sys.executable, "-c", BUILD_REVISIONS, str(tmp_path / "hub"), *keys], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads([x for x in r.stdout.splitlines() if x.startswith("RESULT")][-1][len("RESULT"):])
    assert got == {REPOS[k].repo_id: hub.index["repos"][REPOS[k].repo_id]["revision"] for k in keys}


def test_defined_weights_are_exact_grids_and_keep_constant_fills():
    import torch

    from testbed.hub.defined import define
    sd = {"w": torch.randn(8, 64), "ln.weight": torch.ones(5), "ln.bias": torch.zeros(5), "idx": torch.arange(4),
          "h": torch.randn(3, 16, dtype=torch.bfloat16)}
    a, b = define(sd, "repo"), define(dict(sd), "repo")
    assert all(torch.equal(a[k], b[k]) for k in sd) and not torch.equal(a["w"], define(sd, "other")["w"])
    assert a["ln.weight"] is sd["ln.weight"] and a["ln.bias"] is sd["ln.bias"] and a["idx"] is sd["idx"]
    step = 2.0 ** -(15 + 3)                                    # fan_in 64: bound 2**-3, 15 integer bits
    assert a["w"].abs().max() <= 2 ** -3 and torch.equal(a["w"] / step, (a["w"] / step).round())
    assert a["h"].dtype == torch.bfloat16 and torch.equal(a["h"].float(), a["h"].float().mul(2 ** 9).round() / 2 ** 9)


# --- NOVA / Harmon: the official code in the side venvs (slow) -----------------------------------
@pytest.mark.slow
def test_official_repos_download_in_the_real_layout(tmp_path):
    missing = [f".venv-{REPOS[k].side_venv}" for k in OFFICIAL_KEYS if not side_python(REPOS[k].side_venv).exists()]
    if official_root() is None or missing:
        pytest.skip(f"needs the official code (../shared/official or $MARPIPE_OFFICIAL_CODE) and {missing or 'the side venvs'}")
    index = build_hub(tmp_path / "hub", OFFICIAL_KEYS, log=lambda s: None)
    with HubServer(tmp_path / "hub") as srv:
        jobs = [[k, REPOS[k].repo_id, index["repos"][REPOS[k].repo_id]["revision"], None] for k in OFFICIAL_KEYS]
        got = run_client(srv.endpoint, jobs, tmp_path / "dl")
    for k in OFFICIAL_KEYS:
        assert got[k]["files"] == sorted([*REPOS[k].files, "MANIFEST.sha256", "MARPIPE_SOURCE.json"])
    # the rebuilt NOVA/Harmon fixtures are the ones config/rehearsal.yaml pins (a deterministic build)
    ids = [REPOS[k].repo_id for k in OFFICIAL_KEYS]
    assert [p for p in check_pins(tmp_path / "hub", REHEARSAL) if any(i in p for i in ids)] == []


#: docs/development.md's commands, run as written in a folder that holds config/rehearsal.yaml
HUB_BUILD = "python -m testbed.hub build .marpipe/hub"
HUB_SERVE = "python -m testbed.hub serve .marpipe/hub"
HUB_PINS_CHECK = "python -m testbed.hub pins .marpipe/hub --check config/rehearsal.yaml"


@pytest.mark.slow
def test_the_docs_hub_commands_build_serve_and_check_the_rehearsals_pins(tmp_path):
    """The whole hub, as the docs build it (NOVA and Harmon skipped, and so not checked, without the official
    code), has the revisions config/rehearsal.yaml pins and is served where the rehearsal looks for it."""
    from testbed.hub.__main__ import DEFAULT_PORT
    from testbed.hub.rehearse import hub_answers, stale_pins
    endpoint = f"http://127.0.0.1:{DEFAULT_PORT}"
    if hub_answers(endpoint):
        pytest.skip(f"a hub server already answers at {endpoint}: stop it to run this check")
    (tmp_path / "config").mkdir()
    shutil.copy(REHEARSAL, tmp_path / "config")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    for command in (HUB_BUILD, HUB_PINS_CHECK):
        r = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"`{command}` failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    index = json.loads((tmp_path / ".marpipe" / "hub" / "index.json").read_text())
    server = subprocess.Popen(["bash", "-c", f"exec {HUB_SERVE}"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not hub_answers(endpoint, 0.5):
            assert server.poll() is None and time.monotonic() < deadline, f"`{HUB_SERVE}` serves nothing at {endpoint}"
            time.sleep(0.2)
        models = {rid: r["revision"] for rid, r in index["repos"].items() if r["type"] == "model"}
        assert models and stale_pins(endpoint, models) == []
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("key", OFFICIAL_KEYS)
def test_the_rehearsals_base_model_check_passes_on_the_official_fixtures(key, tmp_path):
    """``marpipe check-model`` (the rehearsal's verify_base_model) on the hub's NOVA / Harmon fixture, in
    the family's side venv: its log-prob check holds on any CPU (run under both capabilities by
    ``make test-kernels``)."""
    from marpipe.models.download import write_manifest
    py, env = ROOT / f".venv-{REPOS[key].side_venv}" / "bin" / "python", dict(os.environ)   # the deployment's venv
    if not py.exists():
        pytest.skip(f"{py.parent.parent.name} not built (make official-venvs)")
    if official_root() is None:
        pytest.skip("needs the official code (../shared/official or $MARPIPE_OFFICIAL_CODE)")
    index = build_hub(tmp_path / "hub", [key], log=lambda s: None)
    folder = tmp_path / "model"
    shutil.copytree(tmp_path / "hub" / "repos" / REPOS[key].repo_id, folder)
    write_manifest(folder)
    assert index["repos"][REPOS[key].repo_id]["revision"]
    r = subprocess.run([py, "-m", "marpipe.models.conformance", f"{key}:{folder}", "--ar-steps", "8"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "11/11 checks passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
