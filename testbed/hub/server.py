"""An HTTP server that answers ``huggingface_hub``'s downloads from a hub folder (:mod:`.build`),
with the endpoints, headers and errors that the installed ``huggingface_hub`` reads (:class:`_Handler`);
point the client at it with ``HF_ENDPOINT=http://127.0.0.1:<port>``. See ``docs/development.md``.
"""
from __future__ import annotations

import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATE = "1970-01-01T00:00:00.000Z"


class _Hub:
    """The index and file lookup shared by both listeners. Several hub folders can be served at once:
    each repository's ``main`` is its commit in the LAST folder that has it, and every commit of every
    folder stays addressable by its id (a branch that moved after a lock)."""

    def __init__(self, roots):
        roots = [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]
        self.root = roots[-1]
        self.roots = roots
        self.index = json.loads((self.root / "index.json").read_text())
        self.repos: dict[str, dict] = {}            # repo id -> the entry of its main commit
        self.commits: dict[str, dict[str, tuple[Path, dict]]] = {}   # repo id -> commit -> (root, entry)
        self.by_sha = {}
        for root in roots:
            for repo_id, r in json.loads((root / "index.json").read_text())["repos"].items():
                self.repos[repo_id] = r
                self.commits.setdefault(repo_id, {})[r["revision"]] = (root, r)
                for f, e in r["files"].items():
                    self.by_sha[e["sha256"]] = root / "repos" / repo_id / f
        self.cdn_base = ""              # set when the CDN listener is bound

    def commit(self, repo_id: str, rev: str) -> str | None:
        if rev == "main":
            return self.repos[repo_id]["revision"]
        return rev if rev in self.commits[repo_id] else None

    def entry(self, repo_id: str, commit: str) -> tuple[Path, dict]:
        return self.commits[repo_id][commit]

    def repo_type(self, repo_id: str) -> str:
        return self.repos[repo_id].get("type", "model")

    def url_file(self, rel: str) -> Path | None:
        """A ``kind: url`` file (``files/<host>/<path>``) of the newest folder that has it."""
        for root in reversed(self.roots):
            f = (root / rel).resolve()
            if f.is_file() and (root / "files").resolve() in f.parents:
                return f
        return None


class _Handler(BaseHTTPRequestHandler):
    """The endpoints and headers that ``huggingface_hub`` (2.4: ``_snapshot_download.py``,
    ``file_download.py``, ``hf_api.py``, ``utils/_http.py``) reads:

    * ``GET /api/models/<repo>/tree/<rev>[/<path>]?recursive=&expand=`` -- what ``snapshot_download``
      calls for a 40-hex revision (``list_repo_tree``; no ``repo_info`` call then). Entries
      ``{type, oid, size, path}`` plus ``lfs: {oid: <sha256>, size, pointerSize}`` for LFS files; never
      ``xetHash``, so the client never takes the Xet path (``hf_xet`` may be installed: without a Xet
      hash in the tree and without ``X-Xet-Hash`` on ``resolve`` it downloads over plain HTTP).
    * ``GET /api/models/<repo>[/revision/<rev>]`` -- ``repo_info``/``model_info`` (``sha``,
      ``siblings``), what ``snapshot_download`` calls for a branch name (``main`` resolves to the
      fixture's commit); with ``?blobs=true`` (``files_metadata=True``, what ``marpipe lock`` asks) each
      file's size, blob id and LFS sha256. ``/api/datasets/...`` and ``/datasets/<repo>/resolve/...``
      the same for dataset repositories (index entries with ``"type": "dataset"``).
    * ``HEAD|GET /<repo>/resolve/<rev>/<path>`` -- ``get_hf_file_metadata`` (HEAD, redirects not
      followed across origins) and ``http_get``. A regular file: 200 with ``ETag`` = its git blob id,
      ``Content-Length``, ``X-Repo-Commit``. An LFS file: 302 to a second port of this server (the
      "CDN": another origin, so the client stops at the redirect as it does at the hub's CDN and
      downloads from ``Location`` without the ``Authorization`` header) with ``X-Linked-Etag`` = its
      sha256, ``X-Linked-Size`` and ``X-Repo-Commit``. ``Range: bytes=N-`` is honoured (resume).
    * Errors as the hub sends them (``hf_raise_for_status`` maps ``X-Error-Code``): unknown
      repository 404 ``RepoNotFound``; unknown revision 404 ``RevisionNotFound`` ("Invalid rev id"),
      which ``snapshot_download`` raises as ``RevisionNotFoundError``; unknown file 404
      ``EntryNotFound`` with ``X-Repo-Commit``.
    * ``HEAD|GET /files/<host>/<path>`` -- the ``kind: url`` files (prompt sets, the aesthetic MLP).
    """
    server_version = "marpipe-hub"
    protocol_version = "HTTP/1.1"
    hub: _Hub
    cdn = False
    verbose = False

    def log_message(self, fmt, *args):      # noqa: A003 - quiet unless asked
        if self.verbose:
            super().log_message(fmt, *args)

    # --- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False,
              content_type: str = "application/json; charset=utf-8") -> None:
        self.send_response(status)
        h = {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}
        for k, v in h.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, obj, status=200, headers=None, head=False):
        self._send(status, json.dumps(obj).encode(), headers, head)

    def _error(self, status: int, code: str | None, message: str, headers=None, head=False):
        h = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        self._json({"error": message}, status, h, head)

    def _file(self, path: Path, headers: dict, head: bool) -> None:
        """200 (or 206 for ``Range: bytes=a-[b]``) with the file's bytes."""
        data = path.read_bytes()
        total, status = len(data), 200
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m:
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) else total - 1
            if a >= total:
                self._send(416, b"", {"Content-Range": f"bytes */{total}"}, head)
                return
            data, status = data[a:b + 1], 206
            headers = {**headers, "Content-Range": f"bytes {a}-{a + len(data) - 1}/{total}"}
        self._send(status, data, {"Accept-Ranges": "bytes", **headers}, head, "application/octet-stream")

    # --- routes -----------------------------------------------------------------------------
    def do_HEAD(self):  # noqa: N802
        self._route(head=True)

    def do_GET(self):  # noqa: N802
        self._route(head=False)

    def _route(self, head: bool) -> None:
        u = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(u.path)
        query = urllib.parse.parse_qs(u.query)
        try:
            if self.cdn:
                m = re.fullmatch(r"/lfs/([0-9a-f]{64})", path)
                if m and m.group(1) in self.hub.by_sha:
                    return self._file(self.hub.by_sha[m.group(1)], {"ETag": f'"{m.group(1)}"'}, head)
                return self._error(404, None, "Not Found", head=head)
            if path.startswith("/files/"):
                f = self.hub.url_file(path.lstrip("/"))
                if f is not None:
                    return self._file(f, {}, head)
                return self._error(404, None, "Not Found", head=head)
            m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
            if m:
                return self._tree(m.group(2), m.group(3), m.group(4) or "",
                                  query.get("recursive", ["false"])[0].lower() == "true", head, m.group(1)[:-1])
            m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m:
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                return self._info(m.group(2), m.group(3) or "main", head, m.group(1)[:-1], blobs)
            m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._resolve(m.group(2), m.group(3), m.group(4), head, "dataset" if m.group(1) else "model")
            return self._error(404, None, "Not Found", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo_commit(self, repo_id: str, rev: str, head: bool, repo_type: str = "model"):
        if repo_id not in self.hub.repos or self.hub.repo_type(repo_id) != repo_type:
            self._error(404, "RepoNotFound", "Repository not found", head=head)
            return None
        commit = self.hub.commit(repo_id, rev)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
        return commit

    def _tree(self, repo_id, rev, sub, recursive, head, repo_type):
        commit = self._repo_commit(repo_id, rev, head, repo_type)
        if commit is None:
            return
        _, r = self.hub.entry(repo_id, commit)
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and prefix[:-1] not in r["dirs"]:
            return self._error(404, "EntryNotFound", f"{sub} does not exist on \"{rev}\"",
                               {"X-Repo-Commit": commit}, head)
        out = []
        for d, oid in sorted(r["dirs"].items()):
            rel = d[len(prefix):] if d.startswith(prefix) else None
            if rel and (recursive or "/" not in rel):
                out.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        for f, e in sorted(r["files"].items()):
            rel = f[len(prefix):] if f.startswith(prefix) else None
            if rel and (recursive or "/" not in rel):
                item = {"type": "file", "oid": e["blob"], "size": e["size"], "path": f}
                if e["lfs"]:
                    item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
                out.append(item)
        self._json(out, headers={"X-Repo-Commit": commit}, head=head)

    def _info(self, repo_id, rev, head, repo_type, blobs):
        """``model_info`` / ``dataset_info``; with ``?blobs=true`` (``files_metadata=True``) each sibling's
        size, blob id and, for LFS files, ``lfs: {sha256, size, pointerSize}``."""
        commit = self._repo_commit(repo_id, rev, head, repo_type)
        if commit is None:
            return
        _, r = self.hub.entry(repo_id, commit)

        def sibling(f, e):
            if not blobs:
                return {"rfilename": f}
            out = {"rfilename": f, "size": e["size"], "blobId": e["blob"]}
            if e["lfs"]:
                out["lfs"] = {"sha256": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
            return out
        self._json({"_id": commit[:24], "id": repo_id, "author": repo_id.split("/")[0],
                    **({"modelId": repo_id} if repo_type == "model" else {}),
                    "sha": commit, "lastModified": DATE, "createdAt": DATE, "private": False, "disabled": False,
                    "gated": False, "downloads": 0, "likes": 0, "tags": ["marpipe-fixture"],
                    "siblings": [sibling(f, e) for f, e in sorted(r["files"].items())],
                    "usedStorage": sum(e["size"] for e in r["files"].values())}, head=head)

    def _resolve(self, repo_id, rev, fname, head, repo_type):
        commit = self._repo_commit(repo_id, rev, head, repo_type)
        if commit is None:
            return
        root, r = self.hub.entry(repo_id, commit)
        e = r["files"].get(fname)
        if e is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit}, head)
        common = {"X-Repo-Commit": commit, "Content-Disposition": f'inline; filename="{fname.rsplit("/", 1)[-1]}"'}
        if e["lfs"]:
            body = f"Found. Redirecting to {self.hub.cdn_base}/lfs/{e['sha256']}".encode()
            return self._send(302, body, {**common, "Location": f"{self.hub.cdn_base}/lfs/{e['sha256']}",
                                          "X-Linked-Etag": f'"{e["sha256"]}"', "X-Linked-Size": str(e["size"]),
                                          "ETag": f'"{e["sha256"]}"'}, head, "text/plain; charset=utf-8")
        self._file(root / "repos" / repo_id / fname, {**common, "ETag": f'"{e["blob"]}"'}, head)


class HubServer:
    """The hub on ``host:port`` (0 = a free port) and its "CDN" on a second free port; ``root``: a hub
    folder, or a list of them (the last one's commits are ``main``, the others' stay addressable).

    ``with HubServer(root) as hub: os.environ["HF_ENDPOINT"] = hub.endpoint``."""

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.hub = _Hub(root)
        mk = lambda cdn: type("H", (_Handler,), {"hub": self.hub, "cdn": cdn, "verbose": verbose})  # noqa: E731
        self._hub_srv = ThreadingHTTPServer((host, port), mk(False))
        self._cdn_srv = ThreadingHTTPServer((host, 0), mk(True))
        self._hub_srv.daemon_threads = self._cdn_srv.daemon_threads = True
        self.hub.cdn_base = f"http://{host}:{self._cdn_srv.server_address[1]}"
        self.endpoint = f"http://{host}:{self._hub_srv.server_address[1]}"
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._hub_srv.server_address[1]

    def url_for(self, url: str) -> str:
        """This hub's address of a ``kind: url`` file (``files/<host>/<path>``)."""
        from .build import url_path
        return f"{self.endpoint}/{urllib.parse.quote(url_path(url))}"

    def start(self) -> HubServer:
        for srv in (self._hub_srv, self._cdn_srv):
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in (self._hub_srv, self._cdn_srv):
            srv.shutdown()
            srv.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_forever(self) -> None:
        self.start()
        try:
            for t in self._threads:
                t.join()
        except KeyboardInterrupt:
            self.stop()
