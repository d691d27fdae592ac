"""Download a base model from the Hugging Face Hub at a pinned commit, and verify it on load.

:func:`download_model` fetches a repository at a 40-hex commit (a branch or tag would move under
our feet, so it is refused) into ``resources/models/<name>/`` and writes ``MANIFEST.sha256`` once
the snapshot is complete; every later load checks it (:func:`verify_manifest`). The token comes
only from ``HF_TOKEN``; failures are a :class:`DownloadError` saying what went wrong and what to do."""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

MANIFEST = "MANIFEST.sha256"
PIN_FILE = "MARPIPE_SOURCE.json"        # repo id + revision the folder was downloaded from
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_SKIP = {MANIFEST, PIN_FILE}
_SKIP_DIRS = {".cache", ".huggingface"}  # the hub client's own bookkeeping inside local_dir


class DownloadError(RuntimeError):
    """The model could not be downloaded; the message says why and what to do."""


class ManifestError(RuntimeError):
    """The files on disk do not match ``MANIFEST.sha256``."""


@dataclass(frozen=True)
class ModelSource:
    """Where a base model comes from (``models.<name>`` in the config)."""
    name: str                    # folder name under resources/models/
    repo_id: str                 # e.g. "BAAI/nova-d48w1024-sd512"
    revision: str | None         # 40-hex commit hash (required)
    allow_patterns: tuple[str, ...] | None = None
    ignore_patterns: tuple[str, ...] | None = None
    key: str = ""                # its config key (models.<name>.source, weights.<name>), for messages

    @classmethod
    def from_dict(cls, name: str, d: dict) -> ModelSource:
        def tup(v):
            return None if v is None else tuple([v] if isinstance(v, str) else v)
        return cls(name=name, repo_id=d["repo_id"], revision=d.get("revision"),
                   allow_patterns=tup(d.get("allow_patterns")), ignore_patterns=tup(d.get("ignore_patterns")))


# The paper's base models. The revisions are NOT filled in: no machine of this project could
# reach the hub to read the commit hashes, and a made-up hash would be worse than none. Fill
# them in from https://huggingface.co/<repo_id>/commits/main before the first download.
BASE_MODELS: dict[str, dict] = {
    "nova": {"repo_id": "BAAI/nova-d48w1024-sd512", "revision": None},
    "harmon": {"repo_id": "wusize/Harmon-1_5B", "revision": None},
}


def check_revision(revision: str | None, repo_id: str = "", key: str = "") -> str:
    """Return ``revision`` if it is a full 40-hex commit hash, else raise :class:`DownloadError`
    (``key``: the config key of the source, named in the message)."""
    where = f" for {repo_id}" if repo_id else ""
    if revision is None or str(revision).strip() == "":
        raise DownloadError(
            f"no revision pinned{where}: run `marpipe lock` (it records the commit in the config's lock "
            f"file) or set {key or '<source>'}.revision to the 40-hex commit hash shown at "
            f"https://huggingface.co/{repo_id or '<repo>'}/commits/main")
    rev = str(revision).strip()
    if re.fullmatch(r"[0-9a-fA-F]{40}", rev):
        rev = rev.lower()
    if not _HEX40.match(rev):
        kind = "a short hash" if re.fullmatch(r"[0-9a-fA-F]{4,39}", rev) else "a branch or tag name"
        raise DownloadError(
            f"revision {rev!r}{where} looks like {kind}; pin the full 40-hex lowercase commit hash "
            f"(branches and tags move, so downloads would not be reproducible)")
    return rev


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_dir() or rel.parts[0] in _SKIP_DIRS or str(rel) in _SKIP or p.name.endswith(".incomplete"):
            continue
        out.append(p)
    return out


def write_manifest(folder: str | Path) -> Path:
    """Hash every file under ``folder`` into ``folder/MANIFEST.sha256`` (written atomically)."""
    folder = Path(folder)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in _files(folder)]
    if not lines:
        raise ManifestError(f"{folder}: no files to put in a manifest")
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(folder / MANIFEST)
    return folder / MANIFEST


def read_manifest(folder: str | Path) -> dict[str, str]:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise ManifestError(f"{folder}: no {MANIFEST}; the download did not finish (rerun the download "
                            f"rule, it resumes) or the folder was not made by marpipe")
    entries = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ManifestError(f"{path}: line {i} is not '<sha256>  <path>'")
        entries[rel] = digest
    return entries


def verify_manifest(folder: str | Path, check_extra: bool = True) -> dict[str, str]:
    """Check every file listed in the manifest; raise :class:`ManifestError` naming the first bad one.

    ``check_extra`` also rejects files that are not listed (a stray or replaced weight file).
    """
    folder = Path(folder)
    entries = read_manifest(folder)
    for rel, digest in entries.items():
        p = folder / rel
        if not p.exists():
            raise ManifestError(f"{folder}: {rel} is listed in {MANIFEST} but missing; re-download the model")
        actual = sha256_file(p)
        if actual != digest:
            raise ManifestError(f"{folder}: {rel} does not match {MANIFEST} (sha256 {actual[:12]}... != "
                                f"{digest[:12]}...): the file was changed or corrupted; re-download it")
    if check_extra:
        extra = sorted(set(p.relative_to(folder).as_posix() for p in _files(folder)) - set(entries))
        if extra:
            raise ManifestError(f"{folder}: {extra[0]} is not listed in {MANIFEST}; remove it or re-download")
    return entries


def _hub_errors():
    from huggingface_hub import errors as E
    return E


def _is_network_error(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "TimeoutException",
                         "ReadTimeout", "OfflineModeIsEnabled", "ProxyError"})


def check_locked(target: Path, locked: dict, source: ModelSource, lock: str = "the lock file") -> None:
    """Every file of the lock is in ``target``'s manifest with the locked sha256 (and size), and no other
    file is; else :class:`DownloadError` naming the file."""
    entries = read_manifest(target)
    where = f"{source.repo_id}@{(source.revision or '')[:12]}"
    for rel, want in sorted(locked.items()):
        got = entries.get(rel)
        if got is None:
            raise DownloadError(f"{where}: {rel} is in {lock} ({source.key}) but was not downloaded")
        size = (target / rel).stat().st_size
        if got != want["sha256"] or size != want["size"]:
            raise DownloadError(f"{where}: {rel} has sha256 {got[:12]}... ({size} bytes) but {lock} records "
                                f"{want['sha256'][:12]}... ({want['size']} bytes) for {source.key}: the hub served other "
                                f"bytes than were locked. Delete {target} and download again; run `marpipe lock` "
                                f"again only if the repository was meant to change")
    extra = sorted(set(entries) - set(locked))
    if extra:
        raise DownloadError(f"{where}: {extra[0]} was downloaded but is not in {lock} ({source.key}); delete {target} "
                            f"and download again")


def download_model(source: ModelSource, root: str | Path = "resources/models",
                   snapshot_download: Callable | None = None, max_workers: int = 8,
                   locked: dict | None = None) -> Path:
    """Download ``source`` into ``root/<name>/`` at its pinned commit and write the manifest.

    The manifest (``<sha256>  <relative path>`` per file) is written only once the snapshot is
    complete, so an interrupted download leaves none and a rerun resumes (the hub client skips
    complete files). An existing complete folder (manifest present and matching, same repo and
    revision) is verified and returned without touching the network. ``locked`` ({file: {size, sha256}}, from
    the config's lock file): exactly those files are fetched and each is verified against it.
    ``snapshot_download`` can be injected (tests); default: ``huggingface_hub.snapshot_download``.
    """
    rev = check_revision(source.revision, source.repo_id, source.key)
    target = Path(root) / source.name
    pin = {"repo_id": source.repo_id, "revision": rev}
    if locked:
        source = replace(source, revision=rev, allow_patterns=tuple(sorted(locked)), ignore_patterns=None)
    if (target / MANIFEST).exists():
        old = json.loads((target / PIN_FILE).read_text()) if (target / PIN_FILE).exists() else None
        if old == pin:
            verify_manifest(target)
            if locked:
                check_locked(target, locked, source)
            return target
        # a different pin: the manifest no longer describes what we want
        (target / MANIFEST).unlink()
    if snapshot_download is None:
        from huggingface_hub import snapshot_download
    E = _hub_errors()
    token = os.environ.get("HF_TOKEN") or None
    target.mkdir(parents=True, exist_ok=True)
    repo = source.repo_id
    endpoint = os.environ.get("HF_ENDPOINT")          # a mirror, or the rehearsal's local hub
    try:
        snapshot_download(repo_id=repo, revision=rev, local_dir=str(target), token=token,
                          **({"endpoint": endpoint} if endpoint else {}),
                          allow_patterns=list(source.allow_patterns) if source.allow_patterns else None,
                          ignore_patterns=list(source.ignore_patterns) if source.ignore_patterns else None,
                          max_workers=max_workers)
    except E.GatedRepoError as exc:
        how = ("HF_TOKEN is set but its account has not been granted access" if token else
               "set HF_TOKEN in the environment to a token of an account that accepted the terms")
        raise DownloadError(f"{repo} is a gated repository: {how} (https://huggingface.co/{repo})") from exc
    except E.RevisionNotFoundError as exc:
        raise DownloadError(f"{repo} has no revision {rev}: check the pinned commit hash at "
                            f"https://huggingface.co/{repo}/commits/main") from exc
    except E.RepositoryNotFoundError as exc:
        raise DownloadError(f"repository {repo} not found (or private and HF_TOKEN missing/without "
                            f"access): check models.{source.name}.repo_id") from exc
    except E.LocalEntryNotFoundError as exc:
        raise DownloadError(f"cannot reach the Hugging Face Hub to download {repo}@{rev[:12]} (no network, "
                            f"or HF_HUB_OFFLINE=1) and no complete copy in {target}; run the download "
                            f"on a machine with network access, then copy {target} here") from exc
    except E.HfHubHTTPError as exc:
        raise DownloadError(f"the Hugging Face Hub refused the download of {repo}@{rev[:12]}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - network failures come from the HTTP client
        if _is_network_error(exc) or isinstance(exc, (ConnectionError, TimeoutError)):
            raise DownloadError(f"cannot reach the Hugging Face Hub to download {repo}@{rev[:12]} "
                                f"(no network: {type(exc).__name__}); rerun when online, the download "
                                f"resumes") from exc
        raise
    if not _files(target):
        raise DownloadError(f"the download of {repo}@{rev[:12]} left no files in {target}; check "
                            f"models.{source.name}.allow_patterns")
    # a file filter that names a file (no wildcard) the commit does not hold fetches nothing for it, silently
    missing = [p for p in source.allow_patterns or () if not any(c in p for c in "*?[") and not (target / p).is_file()]
    if missing:
        raise DownloadError(f"{repo}@{rev[:12]} holds no {', '.join(missing)}, which the download's file filter "
                            f"names (weights.{source.name}.files / models.{source.name}.allow_patterns): check the "
                            f"filter against https://huggingface.co/{repo}/tree/{rev} (e.g. the other weight format)")
    (target / PIN_FILE).write_text(json.dumps(pin, indent=1) + "\n")
    write_manifest(target)
    if locked:
        check_locked(target, locked, source)
    return target


def load_weights(paths: Iterable[str | Path]) -> dict:
    """Read weight files into one state dict: safetensors, or ``torch.load(weights_only=True)``
    for ``.bin/.pt/.pth/.ckpt`` (never a full unpickle). Duplicate keys are an error."""
    import torch
    from safetensors.torch import load_file
    state: dict = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"weight file not found: {path}")
        if path.suffix == ".safetensors":
            part = load_file(str(path))
        elif path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
            part = torch.load(str(path), map_location="cpu", weights_only=True)
            part = part.get("state_dict", part) if isinstance(part, dict) else part
        else:
            raise ValueError(f"{path}: unknown weight format (use .safetensors)")
        dup = sorted(set(part) & set(state))
        if dup:
            raise ValueError(f"{path}: key {dup[0]!r} also appears in an earlier weight file")
        state.update(part)
    return state


def _same_tensor(a, b) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype)


def tied_keys(module) -> dict[str, str]:
    """``{key: the key it is tied to}`` for the state-dict keys that ``module`` declares tied and
    that really share their tensor.

    A key counts only when a submodule declares it in transformers' ``_tied_weights_keys``, that
    submodule's config ties it (``tie_word_embeddings``; transformers 5 expands the declaration
    with ``get_expanded_tied_weights_keys``, transformers 4 declares a list of keys tied to the input
    embeddings), and the two keys hold the same tensor in the live module. Nothing else: a shared
    tensor that no submodule declares is not a tie here.
    """
    own = module.state_dict(keep_vars=True)
    ties: dict[str, str] = {}
    for prefix, sub in module.named_modules():
        declared = getattr(sub, "_tied_weights_keys", None)
        if not declared:
            continue
        if callable(getattr(sub, "get_expanded_tied_weights_keys", None)):      # transformers >= 5
            mapping = dict(sub.get_expanded_tied_weights_keys(all_submodels=False))
        elif getattr(getattr(sub, "config", None), "tie_word_embeddings", False):  # transformers 4
            emb = getattr(sub.get_input_embeddings(), "weight", None)
            source = next((k for k, v in sub.state_dict(keep_vars=True).items() if v is emb), None)
            mapping = {t: source for t in declared} if source is not None else {}
        else:
            mapping = {}
        pre = f"{prefix}." if prefix else ""
        for target, source in mapping.items():
            t, s = pre + target, pre + source
            if t != s and t in own and s in own and _same_tensor(own[t], own[s]):
                ties[t] = s
    return ties


def load_strict(module, state: dict, what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming missing/unexpected keys
    and shape mismatches (first few of each) and ``what`` was being loaded.

    The one exception to "every key of the module is in ``state``": a key the module declares
    tied (:func:`tied_keys`, e.g. Qwen2's ``lm_head.weight`` = ``model.embed_tokens.weight``,
    which ``save_pretrained`` writes once) may be absent when the key it is tied to is present.
    A file that holds both keys of a tie must hold equal tensors."""
    import torch
    own = module.state_dict()
    ties = tied_keys(module)
    absent = set(own) - set(state)
    tied_absent = {k for k in absent if k in ties and ties[k] in state}
    missing = sorted(absent - tied_absent)
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} with other shapes (e.g. {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(own[k].shape)} in the model)")
        raise ValueError(f"{what}: the weights do not match the model: " + "; ".join(parts))
    for t, s in sorted(ties.items()):
        if t in state and s in state and not torch.equal(state[t], state[s]):
            raise ValueError(f"{what}: the file holds {t} and {s} with different values, but the model ties "
                             f"them (one tensor): the file is not a save of this model")
    result = module.load_state_dict(state, strict=False)
    left = sorted(set(result.missing_keys) - tied_absent) + sorted(result.unexpected_keys)
    if left:   # cannot happen after the checks above; never load half a model silently
        raise ValueError(f"{what}: load_state_dict left {left[:3]} unmatched")


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m marpipe.models.download NAME REPO_ID REVISION [--root DIR]``."""
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("repo_id", nargs="?")
    ap.add_argument("revision", nargs="?")
    ap.add_argument("--root", default="resources/models")
    ap.add_argument("--verify-only", action="store_true")
    a = ap.parse_args(list(argv) if argv is not None else None)
    if a.verify_only:
        verify_manifest(Path(a.root) / a.name)
        print(f"{Path(a.root) / a.name}: manifest OK")
        return 0
    base = BASE_MODELS.get(a.name, {})
    src = ModelSource(a.name, a.repo_id or base.get("repo_id"), a.revision or base.get("revision"))
    print(download_model(src, a.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
