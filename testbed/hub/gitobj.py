"""Git object ids of a fixture repository, as the Hugging Face Hub reports them for a real one: a
file that ``.gitattributes`` routes through LFS is committed as its pointer (the tree API's ``oid`` is
the pointer's blob id, ``lfs.oid`` and ``resolve``'s ``X-Linked-Etag`` its sha256), any other file is a
plain blob (its id is ``resolve``'s ``ETag``); :func:`commit_id` makes one commit over the trees (fixed
author, date and message), so a revision is a real git commit id of exactly the files. See
``docs/development.md``.
"""
from __future__ import annotations

import fnmatch
import hashlib

LFS_SPEC = "https://git-lfs.github.com/spec/v1"
COMMIT_AUTHOR = "marpipe-hub <hub@marpipe.invalid> 0 +0000"
COMMIT_MESSAGE = "marpipe tiny fixture"

#: the ``.gitattributes`` the hub writes into every new model repository (``huggingface_hub``'s
#: ``create_repo``; the 1.52 kB file listed in e.g. BAAI/nova-d48w1024-sd512 and
#: IDEA-Research/grounding-dino-tiny). Older repositories (1.43-1.48 kB) hold a subset of these
#: patterns; every pattern that matters for the files served here is in all of them.
DEFAULT_GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.mlmodel filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""


def lfs_patterns(gitattributes: str) -> list[str]:
    out = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "filter=lfs" in parts[1:]:
            out.append(parts[0])
    return out


def is_lfs(path: str, patterns: list[str]) -> bool:
    """Whether git would route ``path`` through LFS (a pattern without '/' matches the basename)."""
    name = path.rsplit("/", 1)[-1]
    for p in patterns:
        if "/" in p.rstrip("/"):
            if fnmatch.fnmatch(path, p.replace("**/", "*")):
                return True
        elif fnmatch.fnmatch(name, p):
            return True
    return False


def lfs_pointer(data: bytes) -> bytes:
    return f"version {LFS_SPEC}\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n".encode()


def git_object_id(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def blob_id(data: bytes) -> str:
    return git_object_id("blob", data)


def _tree(entries: dict) -> str:
    """``entries``: name -> blob id (str) or a nested dict (sub-tree). Git orders tree entries by
    name, a sub-tree's name compared as if it ended with '/'."""
    body = b""
    for name in sorted(entries, key=lambda n: n + "/" if isinstance(entries[n], dict) else n):
        v = entries[name]
        if isinstance(v, dict):
            body += b"40000 " + name.encode() + b"\0" + bytes.fromhex(_tree(v))
        else:
            body += b"100644 " + name.encode() + b"\0" + bytes.fromhex(v)
    return git_object_id("tree", body)


def tree_ids(blobs: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(root tree id, {directory path: its tree id}) of files ``{path: committed blob id}``."""
    root: dict = {}
    for path, oid in blobs.items():
        node = root
        *dirs, name = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = oid
    dirs: dict[str, str] = {}

    def walk(node, prefix):
        for name, v in node.items():
            if isinstance(v, dict):
                p = f"{prefix}{name}"
                dirs[p] = _tree(v)
                walk(v, p + "/")
    walk(root, "")
    return _tree(root), dirs


def commit_id(tree: str) -> str:
    body = (f"tree {tree}\nauthor {COMMIT_AUTHOR}\ncommitter {COMMIT_AUTHOR}\n\n{COMMIT_MESSAGE}\n").encode()
    return git_object_id("commit", body)
