"""``marpipe lock``: every download of a config resolved to a commit, every file to its size and sha256.

A config names what to download (``models.<m>.source``, ``weights.<w>``, the ``kind: url`` prompt
sets), and its pins may be missing (``revision: null``, ``sha256: null``, a URL at
``resolve/main``). ``marpipe lock`` asks the hub on a machine with hub access and writes
``<config>.lock.yaml`` beside the config, committed with it as ``uv.lock`` is; the pipeline reads
it (:func:`apply`), and a real run refuses to start while any download is neither pinned nor
locked (:func:`unlocked`)."""
from __future__ import annotations

import copy
import hashlib
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

LOCK_VERSION = 1
HUB = "https://huggingface.co"
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class LockError(RuntimeError):
    """A download cannot be locked; the message names the config key and what to do."""


def lock_path(config: str | Path) -> Path:
    """``config.yaml`` -> ``config.lock.yaml`` (beside the config file)."""
    config = Path(config)
    return config.with_name(config.stem + ".lock.yaml")


# --- what a config downloads ------------------------------------------------------------------------
def sources(cfg: dict) -> dict[str, dict]:
    """{config key: spec} of every download of ``cfg``: hub sources (``kind: hub``: ``repo_id``,
    ``revision``, ``files``) and url files (``url``, ``sha256``)."""
    out = {}
    for name, m in (cfg.get("models") or {}).items():
        if (m.get("source") or {}).get("kind") == "hub":
            out[f"models.{name}.source"] = m["source"]
    for name, w in (cfg.get("weights") or {}).items():
        if w.get("kind") in ("hub", "url"):
            out[f"weights.{name}"] = w
    for name, p in (cfg.get("prompts") or {}).items():
        if p.get("kind") != "url":
            continue
        if "url" in p:
            out[f"prompts.{name}"] = p
        for group in ("styles", "complex_kinds"):
            for sub, f in (p.get(group) or {}).items():
                out[f"prompts.{name}.{group}.{sub}"] = f
    bench = (cfg.get("scorer_check") or {}).get("benchmark") or {}
    for task, t in bench.items():     # clip-benchmark's webdatasets: a hub dataset folder (`root`, .../tree/<rev>)
        if isinstance(t, dict) and parse_tree_root(dataset_root(t)):
            out[f"scorer_check.benchmark.{task}"] = t
    return out


def dataset_root(task: dict) -> str:
    """A clip-benchmark task's ``root`` with its dataset name filled in, as clip-benchmark's CLI does."""
    clean = task.get("dataset", "").replace("wds/", "", 1)
    return str(task.get("root", "")).format(dataset=clean, dataset_cleaned=clean.replace("/", "-"))


def parse_tree_root(root: str) -> tuple[str, str] | None:
    """(dataset repo id, revision) of a hub ``.../datasets/<repo>/tree/<rev>`` folder URL."""
    for base in dict.fromkeys([endpoint(), HUB]):
        m = re.fullmatch(re.escape(base) + r"/datasets/([^/]+/[^/]+)/tree/([^/]+)/?", root)
        if m:
            return m.group(1), m.group(2)
    return None


def _is_hub(spec: dict) -> bool:
    return "repo_id" in spec


def _is_tree(spec: dict) -> bool:
    return "root" in spec


def asked(spec: dict) -> dict:
    """The part of a spec a lock entry answers (an entry is valid while these are unchanged)."""
    if _is_hub(spec):
        return {"repo_id": spec["repo_id"], "revision": spec.get("revision"), "files": spec.get("files")}
    if _is_tree(spec):
        return {"dataset": spec.get("dataset"), "root": spec["root"]}
    return {"url": spec["url"], "sha256": spec.get("sha256")}


def pinned(spec: dict) -> bool:
    """The config alone fixes what is downloaded: a 40-hex revision, or a url file's sha256."""
    if _is_hub(spec):
        return bool(_HEX40.match(str(spec.get("revision") or "")))
    if _is_tree(spec):
        return bool(_HEX40.match(parse_tree_root(dataset_root(spec))[1]))
    return bool(_SHA256.match(str(spec.get("sha256") or "")))


def _key_of(key: str, spec: dict) -> str:
    """The config key a user sets to pin ``spec`` by hand."""
    return f"{key}.revision" if _is_hub(spec) else f"{key}.root" if _is_tree(spec) else f"{key}.sha256"


# --- reading and applying a lock -----------------------------------------------------------------------
def read(path: str | Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    lock = yaml.safe_load(path.read_text()) or {}
    if lock.get("version") != LOCK_VERSION or not isinstance(lock.get("sources"), dict):
        raise LockError(f"{path}: not a marpipe lock file of version {LOCK_VERSION}; write it again with "
                        f"`marpipe lock --config {path.name.replace('.lock.yaml', '.yaml')}`")
    return lock


def entry_for(lock: dict | None, key: str, spec: dict) -> dict | None:
    """The lock's entry for ``key`` if it answers the spec as the config states it now."""
    e = (lock or {}).get("sources", {}).get(key)
    return e if e is not None and e.get("config") == asked(spec) else None


def apply(cfg: dict, lock: dict | None) -> dict:
    """``cfg`` with the lock's answers in place: each locked hub source's ``revision`` and
    ``locked_files`` ({file: {size, sha256}}, what the download fetches and verifies), each locked url
    file's commit-addressed ``url`` and ``sha256``. Entries of another spec (an edited config) are
    ignored, so that download shows as unlocked."""
    cfg = copy.deepcopy(cfg)
    for key, spec in sources(cfg).items():
        e = entry_for(lock, key, spec)
        if e is None:
            continue
        if _is_hub(spec):
            spec["revision"] = e["revision"]
            spec["locked_files"] = e["files"]
        elif _is_tree(spec):
            spec["root"] = e["root"]
        else:
            spec["url"], spec["sha256"] = e["url"], e["sha256"]
    return cfg


def unlocked(cfg: dict, lock: dict | None) -> list[str]:
    """One line per download of ``cfg`` that is neither pinned nor locked, naming the key to pin."""
    out = []
    for key, spec in sources(cfg).items():
        if pinned(spec) or entry_for(lock, key, spec) is not None:
            continue
        stale = (lock or {}).get("sources", {}).get(key) is not None
        what = spec["repo_id"] if _is_hub(spec) else dataset_root(spec) if _is_tree(spec) else spec["url"]
        out.append(f"{_key_of(key, spec)} is not pinned ({what})"
                   + ("; its lock entry was written for another value of this entry" if stale else ""))
    return out


def refusal(cfg: dict, lock: dict | None, config: str | Path) -> str | None:
    """The message a real run stops with while downloads are unlocked (None when all are pinned or locked)."""
    missing = unlocked(cfg, lock)
    if not missing:
        return None
    return (f"{len(missing)} download(s) of {config} are neither pinned nor locked:\n  " + "\n  ".join(missing)
            + f"\nOn a machine with hub access run `marpipe lock --config {config}` (it writes "
              f"{lock_path(config)}: commit it), or pin each key above in {config}. Nothing was submitted.")


# --- resolving against the hub -------------------------------------------------------------------------
def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HUB).rstrip("/")


def parse_hub_url(url: str) -> tuple[str, str, str, str] | None:
    """(repo type, repo id, revision, path) of a hub ``resolve`` URL (huggingface.co or $HF_ENDPOINT)."""
    for base in dict.fromkeys([endpoint(), HUB]):
        if url.startswith(base + "/"):
            rest = url[len(base) + 1:]
            m = re.fullmatch(r"(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", rest)
            if m:
                kind = {"datasets": "dataset", "spaces": "space"}.get(m.group(1), "model")
                return kind, m.group(2), urllib.parse.unquote(m.group(3)), m.group(4)
    return None


def _fetch(url: str, what: str) -> bytes:
    headers = {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"} if os.environ.get("HF_TOKEN") else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=120) as r:
            return r.read()
    except OSError as e:
        raise LockError(f"{what}: cannot download {url} ({e}); lock on a machine that reaches it") from None


def _info(api, repo_type: str, repo_id: str, revision: str, key: str):
    from huggingface_hub import errors as E
    try:
        return api.repo_info(repo_id, repo_type=repo_type, revision=revision, files_metadata=True)
    except E.RevisionNotFoundError:
        raise LockError(f"{key}: {repo_id} has no revision {revision}") from None
    except E.RepositoryNotFoundError:
        raise LockError(f"{key}: repository {repo_id} not found (or gated/private without HF_TOKEN)") from None
    except E.HfHubHTTPError as e:
        raise LockError(f"{key}: the hub refused {repo_id}@{revision}: {e}") from None
    except OSError as e:
        raise LockError(f"{key}: cannot reach the hub at {endpoint()} ({e}); run `marpipe lock` on a machine "
                        f"with hub access (or set HF_ENDPOINT)") from None


def _file_record(sib, url: str, key: str) -> dict:
    if sib.lfs is not None:
        return {"size": int(sib.lfs.size), "sha256": sib.lfs.sha256}
    data = _fetch(url, key)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _resolve_url(repo_type: str, repo_id: str, revision: str, path: str) -> str:
    prefix = {"dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")
    return f"{endpoint()}/{prefix}{repo_id}/resolve/{revision}/{urllib.parse.quote(path)}"


def lock_hub(key: str, spec: dict, api) -> dict:
    """A hub source: its commit (``.sha`` of the branch or of the pinned commit, from the
    repository's info with ``files_metadata``) and each file the download fetches (the config's
    ``files:``, each checked against the commit's file list; all when there is none) with its size
    and sha256 (the LFS metadata; small non-LFS files are hashed). ``config:`` records the spec it
    answers, so an edited config entry is unlocked again."""
    info = _info(api, "model", spec["repo_id"], spec.get("revision") or "main", key)
    siblings = {s.rfilename: s for s in info.siblings or []}
    wanted = spec.get("files") or sorted(siblings)
    missing = [f for f in wanted if f not in siblings]
    if missing:
        raise LockError(f"{key}.files names {', '.join(missing)}, which {spec['repo_id']}@{info.sha} does not hold; "
                        f"its files: {', '.join(sorted(siblings))}. Fix {key}.files (e.g. the other weight format)")
    files = {f: _file_record(siblings[f], _resolve_url("model", spec["repo_id"], info.sha, f), key) for f in wanted}
    return {"config": asked(spec), "repo_id": spec["repo_id"], "revision": info.sha, "files": files}


def lock_url(key: str, spec: dict, api) -> dict:
    """A url file: a commit-addressed URL (a hub ``resolve/<branch>`` URL rewritten to
    ``resolve/<commit>``) and the sha256 and size of its bytes."""
    url, want = spec["url"], spec.get("sha256")
    hub = parse_hub_url(url)
    if hub is not None:
        repo_type, repo_id, rev, path = hub
        info = _info(api, repo_type, repo_id, rev, key)
        sib = next((s for s in info.siblings or [] if s.rfilename == urllib.parse.unquote(path)), None)
        if sib is None:
            raise LockError(f"{key}.url: {repo_id}@{info.sha} holds no {urllib.parse.unquote(path)}")
        locked_url = _resolve_url(repo_type, repo_id, info.sha, urllib.parse.unquote(path))
        rec = _file_record(sib, locked_url, key)
        locked_url = locked_url.replace(endpoint(), HUB, 1) if url.startswith(HUB + "/") else locked_url
    else:
        if not any(_HEX40.match(part) for part in urllib.parse.urlparse(url).path.split("/")):
            raise LockError(f"{key}.url = {url} is not addressed by a commit: point it at a 40-hex commit "
                            f"(e.g. raw.githubusercontent.com/<owner>/<repo>/<commit>/<path>)")
        data = _fetch(url, key)
        rec, locked_url = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, url
    if want and want != rec["sha256"]:
        raise LockError(f"{key}: {url} has sha256 {rec['sha256']} but {key}.sha256 pins {want}: the source changed; "
                        f"check it, then re-pin")
    return {"config": asked(spec), "url": locked_url, **rec}


def lock_tree(key: str, spec: dict, api) -> dict:
    """A clip-benchmark webdataset folder at its commit (clip-benchmark fetches its shards itself)."""
    repo_id, rev = parse_tree_root(dataset_root(spec))
    info = _info(api, "dataset", repo_id, rev, key)
    root = dataset_root(spec).replace(f"/tree/{rev}", f"/tree/{info.sha}")
    return {"config": asked(spec), "repo_id": repo_id, "revision": info.sha, "root": root}


def resolve(cfg: dict, api=None, log=print) -> dict:
    """The lock of ``cfg``: every download resolved against the hub (``api``: a ``HfApi``)."""
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi(endpoint=endpoint())
    out = {}
    for key, spec in sources(cfg).items():
        lock = lock_hub if _is_hub(spec) else lock_tree if _is_tree(spec) else lock_url
        e = out[key] = lock(key, spec, api)
        log(f"[lock] {key}: " + (f"{e['repo_id']}@{e['revision']} ({len(e['files'])} files, "
                                 f"{sum(f['size'] for f in e['files'].values()) / 1e6:.1f} MB)" if "files" in e
                                 else e["root"] if "root" in e else f"{e['url']} ({e['size']} bytes)"))
    return {"version": LOCK_VERSION, "sources": out}


HEADER = """\
# Written by `marpipe lock --config {config}`: every download of {config} at a commit, with each file's
# size and sha256 (huggingface_hub file metadata). Snakemake reads it; the downloads verify against it.
# Commit it with the config; run `marpipe lock` again after changing a download's entry.
"""


def write(lock: dict, config: str | Path) -> Path:
    path = lock_path(config)
    text = HEADER.format(config=Path(config).name) + yaml.safe_dump(lock, sort_keys=False, width=120,
                                                                     default_flow_style=None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def lock_config(config: str | Path, api=None, log=print) -> Path:
    """Resolve the downloads of the config file ``config`` and write its lock file."""
    from marpipe.experiment import read_config
    return write(resolve(read_config(config), api, log), config)
