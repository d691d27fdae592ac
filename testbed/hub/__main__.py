"""``python -m testbed.hub build|serve|pins DIR``: build, serve and pin the local hub.

``build DIR [--only KEY ...]`` writes it (e.g. ``.marpipe/hub``); ``serve DIR [--port 18765]`` serves it
(``HF_ENDPOINT=http://127.0.0.1:18765``); ``pins DIR`` prints each repository's revision and each url
file's sha256, ``--check CONFIG`` compares them with a config's pins and exits 1 naming every difference
(the fixtures changed, e.g. after a library upgrade: rebuild, then re-pin). See ``docs/development.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path

import yaml

DEFAULT_PORT = 18765


def config_pins(cfg: dict) -> dict[str, str]:
    """{"<repo_id>": revision, "<url>": sha256} of a config's hub and url entries."""
    out = {}
    for section in ("models", "weights"):
        for spec in (cfg.get(section) or {}).values():
            src = spec.get("source", spec) if section == "models" else spec
            if src.get("kind") == "hub":
                out[src["repo_id"]] = src.get("revision")
    shas = {}
    for spec in (cfg.get("weights") or {}).values():
        if spec.get("kind") == "url":
            shas[spec["url"]] = spec.get("sha256")
    for spec in (cfg.get("prompts") or {}).values():
        if spec.get("kind") != "url":
            continue
        for f in [spec, *(spec.get("styles") or {}).values(), *(spec.get("complex_kinds") or {}).values()]:
            if "url" in f:
                shas[f["url"]] = f.get("sha256")
    return {**out, **shas}


def hub_pins(root: Path, prefix: str | None = None) -> dict[str, str]:
    """{"<repo_id>": revision, "<served url>": sha256} of a built hub (``prefix``: the hub's base URL)."""
    index = json.loads((Path(root) / "index.json").read_text())
    out = {rid: r["revision"] for rid, r in index["repos"].items()}
    for rel, f in index["files"].items():
        out[f"{prefix}/{rel}" if prefix else f["url"]] = f["sha256"]
    return out


def check(root: Path, config: Path) -> list[str]:
    cfg = yaml.safe_load(Path(config).read_text())
    index = json.loads((Path(root) / "index.json").read_text())
    want, problems = {k: v for k, v in config_pins(cfg).items() if v}, []   # null: resolved by `marpipe lock`
    for rid, rev in want.items():
        if rid.startswith("http"):
            continue
        if rid in index["repos"]:
            if index["repos"][rid]["revision"] != rev:
                problems.append(f"{rid}: the config pins {rev}, the hub serves {index['repos'][rid]['revision']}")
        elif rid not in index.get("skipped", {}):
            problems.append(f"{rid}: not in the hub")
    from .repos import REPOS
    for r in REPOS.values():      # every fixture repository, pinned or left to `marpipe lock`
        if r.repo_id not in index["repos"] and r.repo_id not in index.get("skipped", {}):
            problems.append(f"{r.repo_id}: not in the hub (an older build)")
    by_path = {rel: f for rel, f in index["files"].items()}
    for url, sha in want.items():
        if not url.startswith("http"):
            continue
        rel = urllib.parse.unquote("files/" + url.split("/files/", 1)[1]) if "/files/" in url else None
        if rel not in by_path:
            problems.append(f"{url}: the hub serves no such file")
        elif by_path[rel]["sha256"] != sha:
            problems.append(f"{url}: the config pins sha256 {sha}, the hub serves {by_path[rel]['sha256']}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.hub", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the fixture repositories and url files")
    b.add_argument("root")
    b.add_argument("--only", nargs="*")
    s = sub.add_parser("serve", help="serve a built hub (HF_ENDPOINT=http://HOST:PORT)")
    s.add_argument("root")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--verbose", action="store_true")
    p = sub.add_parser("pins", help="print (or --check a config against) the hub's revisions and sha256s")
    p.add_argument("root")
    p.add_argument("--check", metavar="CONFIG")
    a = ap.parse_args(argv)
    root = Path(a.root)
    if a.cmd == "build":
        from .build import build_hub
        index = build_hub(root, a.only)
        for rid, why in index.get("skipped", {}).items():
            print(f"[hub] skipped {rid}: {why}", file=sys.stderr)
        return 0
    if a.cmd == "serve":
        from .server import HubServer
        srv = HubServer(root, a.host, a.port, verbose=a.verbose)
        print(f"[hub] serving {root} at {srv.endpoint} (LFS 'CDN' at {srv.hub.cdn_base}); "
              f"export HF_ENDPOINT={srv.endpoint}", flush=True)
        srv.serve_forever()
        return 0
    if a.check:
        problems = check(root, Path(a.check))
        for line in problems:
            print(line)
        return 1 if problems else 0
    for k, v in hub_pins(root).items():
        print(f"{v}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
