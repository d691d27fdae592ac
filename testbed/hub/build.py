"""Write the local hub: the fixture repositories of :mod:`.repos` (exactly their declared files,
weights redrawn by :mod:`.defined`, revisions from :mod:`.gitobj`; NOVA and Harmon by :mod:`.official` in
their side venvs, or skipped with the reason in ``index.json``) and the ``kind: url`` files of
``config.yaml``. The build is deterministic, so ``config/rehearsal.yaml`` can pin its revisions. See
``docs/development.md``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import yaml

from testbed.official import OFFICIAL_ENV, official_root

from . import gitobj
from .defined import WEIGHT_SUFFIXES, rewrite_weight_file
from .repos import PLACEHOLDER, REPOS, Repo

REPO_ROOT = Path(__file__).resolve().parents[2]


class HubBuildError(RuntimeError):
    pass


def side_python(name: str) -> Path:
    return REPO_ROOT / f".venv-{name}" / "bin" / "python"


# --- one repository --------------------------------------------------------------------------
def _build_files(repo: Repo, work: Path) -> str | None:
    """Run the repo's builder into ``work``; returns a reason when it is skipped."""
    if repo.builder is not None:
        repo.builder(work)
        return None
    py, code = side_python(repo.side_venv), official_root()
    if code is None:
        return f"official code not found (set ${OFFICIAL_ENV} or place it at ../shared/official)"
    if not py.exists():
        return f"side venv .venv-{repo.side_venv} not built (make official-venvs)"
    env = {**os.environ, OFFICIAL_ENV: str(code), "PYTHONHASHSEED": "0"}
    r = subprocess.run([str(py), "-m", "testbed.hub.official", repo.key, str(work)], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise HubBuildError(f"building {repo.repo_id} in .venv-{repo.side_venv} failed:\n{r.stderr[-3000:]}")
    return None


def build_repo(repo: Repo, root: Path, work_root: Path) -> dict | str:
    """Build ``repo`` into ``root/repos/<repo_id>``: exactly its declared files. Returns its index
    entry, or the reason it was skipped."""
    work = work_root / repo.key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    skipped = _build_files(repo, work)
    if skipped:
        return skipped
    missing = [f for f in repo.files if not (work / f).is_file()]
    if missing:
        raise HubBuildError(f"{repo.repo_id}: the builder wrote no {missing} (declared in testbed/hub/repos.py)")
    placeholder = PLACEHOLDER.split("{")[0].encode()
    for f in repo.files:                  # weights defined bit for bit, not by this CPU's kernels
        if f.endswith(WEIGHT_SUFFIXES) and not (work / f).read_bytes().startswith(placeholder):
            rewrite_weight_file(work / f, repo.key)
    out = root / "repos" / repo.repo_id
    shutil.rmtree(out, ignore_errors=True)
    for f in repo.files:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / f, out / f)
    shutil.rmtree(work, ignore_errors=True)
    return index_entry(repo, out)


def index_entry(repo: Repo, folder: Path) -> dict:
    attrs = (folder / ".gitattributes").read_text() if (folder / ".gitattributes").exists() else ""
    patterns = gitobj.lfs_patterns(attrs)
    files, committed = {}, {}
    for f in repo.files:
        data = (folder / f).read_bytes()
        lfs = gitobj.is_lfs(f, patterns)
        pointer = gitobj.lfs_pointer(data) if lfs else None
        committed[f] = gitobj.blob_id(pointer if lfs else data)
        files[f] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "blob": committed[f],
                    "lfs": lfs, "pointer_size": len(pointer) if lfs else None}
    tree, dirs = gitobj.tree_ids(committed)
    return {"key": repo.key, "type": repo.repo_type, "revision": gitobj.commit_id(tree), "tree": tree,
            "dirs": dirs, "files": files, "source": repo.source, "notes": list(repo.notes)}


# --- `kind: url` files -------------------------------------------------------------------------
def url_path(url: str) -> str:
    """Where the hub serves ``url``: ``files/<host>/<unquoted path>``."""
    u = urllib.parse.urlparse(url)
    return f"files/{u.netloc}{urllib.parse.unquote(u.path)}"


def url_entries(cfg: dict) -> dict[str, dict]:
    """{config key: {"url", "format"}} of every ``kind: url`` file of a config (prompts and weights)."""
    out = {}
    for name, spec in (cfg.get("weights") or {}).items():
        if spec.get("kind") == "url":
            out[f"weights.{name}"] = {"url": spec["url"], "format": "weights"}
    for name, spec in (cfg.get("prompts") or {}).items():
        if spec.get("kind") != "url":
            continue
        fmt = spec.get("format", "jsonl")
        if fmt == "hps_benchmark":
            for style, f in spec["styles"].items():
                out[f"prompts.{name}.styles.{style}"] = {"url": f["url"], "format": "hps_style"}
        else:
            out[f"prompts.{name}"] = {"url": spec["url"], "format": fmt, "name": name}
        for kind, f in (spec.get("complex_kinds") or {}).items():
            out[f"prompts.{name}.complex_kinds.{kind}"] = {"url": f["url"], "format": f"complex_{kind}"}
    return out


_OBJECTS = ["cat", "dog", "apple", "car", "bench", "table"]
_COLORS = ["red", "blue", "green"]


def _train_rows() -> list[dict]:
    """JSON lines in the fields of geneval_and_t2i_data_final.json that the rewards read."""
    rows = []
    for i in range(8):
        a, b, c = _OBJECTS[i % 6], _OBJECTS[(i + 1) % 6], _COLORS[i % 3]
        kind = ["color", "spatial", "numeracy", "object"][i % 4]
        r = {"prompt": f"a {c} {a} on the left of a {b}", "task_type": kind, "nouns": [a, b],
             "attr_nouns": [f"{c} {a}", b]}
        if kind == "spatial":
            r["spatial_info"] = {"obj1": a, "obj2": b, "locality": "left of"}
        if kind == "numeracy":
            r["prompt"] = f"two {a}s and one {b}"
            r["numeracy_info"] = [{"obj_name": a, "num": 2}, {"obj_name": b, "num": 1}]
        rows.append(r)
    return rows


def _compbench_lines(name: str) -> list[str]:
    cat = name.replace("compbench_", "")
    return [f"a {_COLORS[i % 3]} {_OBJECTS[i]} and a {_OBJECTS[(i + 2) % 6]} ({cat})" for i in range(4)]


def url_bytes(entry: dict) -> bytes:
    fmt = entry["format"]
    if fmt == "weights":
        import io

        import torch

        from marpipe.metrics.clip_metrics import AestheticMLP
        from testbed.metrics import TINY_AESTHETIC_CLIP
        torch.manual_seed(3)                       # make_aesthetic_dir's MLP
        from .defined import define
        buf = io.BytesIO()
        torch.save(define(AestheticMLP(TINY_AESTHETIC_CLIP["embed_dim"]).state_dict(), "weights.aesthetic"), buf)
        return buf.getvalue()
    if fmt == "jsonl":
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in _train_rows()).encode()
    if fmt == "hps_style":
        from .repos import hps_benchmark_prompts
        return hps_benchmark_prompts(entry["url"].rsplit("/", 1)[-1].removesuffix(".json"))
    if fmt == "txt":
        return "\r\n".join(_compbench_lines(entry["name"])).encode() + b"\r\n"   # CRLF, as some val files
    if fmt.startswith("complex_"):
        lines = _compbench_lines("compbench_complex")
        picked = lines[:1] if fmt == "complex_spatial" else lines[1:2]
        return ("\n".join(picked) + "\n").encode()
    raise HubBuildError(f"no fixture content for a url file of format {fmt!r} ({entry['url']})")


def build_url_files(root: Path, cfg: dict) -> dict:
    out = {}
    for key, entry in url_entries(cfg).items():
        data = url_bytes(entry)
        rel = url_path(entry["url"])
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = {"key": key, "url": entry["url"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return out


# --- the whole hub -------------------------------------------------------------------------------
def build_hub(root: str | Path, keys: list[str] | None = None, config: str | Path = REPO_ROOT / "config.yaml",
              log=print) -> dict:
    """Build the repositories ``keys`` (default: all) and the url files of ``config`` into ``root``::

        ROOT/index.json                repo id -> revision, tree, per-file size/sha256/blob id/LFS
        ROOT/repos/<owner>/<name>/...  the files of each repository, exactly its real file list
        ROOT/files/<host>/<path>       each `kind: url` file under its real URL's host and path

    write and return ``root/index.json`` (entries of repositories not rebuilt are kept)."""
    import torch
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    old = json.loads((root / "index.json").read_text()) if (root / "index.json").exists() else {}
    index = {"repos": dict(old.get("repos", {})), "skipped": dict(old.get("skipped", {})), "files": {}}
    unknown = sorted(set(keys or []) - set(REPOS))
    if unknown:
        raise HubBuildError(f"no fixture repository for {unknown}; known: {sorted(REPOS)}")
    work_root = root / ".work"
    for key in keys or list(REPOS):
        repo = REPOS[key]
        res = build_repo(repo, root, work_root)
        if isinstance(res, str):
            index["skipped"][repo.repo_id] = res
            index["repos"].pop(repo.repo_id, None)
            log(f"[hub] {repo.repo_id}: SKIPPED ({res})")
        else:
            index["skipped"].pop(repo.repo_id, None)
            index["repos"][repo.repo_id] = res
            log(f"[hub] {repo.repo_id}@{res['revision']}: {len(res['files'])} files")
    shutil.rmtree(work_root, ignore_errors=True)
    index["files"] = build_url_files(root, yaml.safe_load(Path(config).read_text()))
    (root / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="build the local hub of tiny fixture repositories")
    ap.add_argument("root")
    ap.add_argument("--only", nargs="*", help="config keys to (re)build (default: all)")
    a = ap.parse_args(argv)
    build_hub(a.root, a.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
