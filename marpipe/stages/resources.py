"""Base models, scorer weights and prompt sets: fetched (hub, URL) or built (small world).

``resources/models/<model>/``, ``resources/metrics/<weights>/`` and
``resources/prompts/<set>.jsonl``. A folder is complete when its
``MANIFEST.sha256`` exists (written last), and it is checked on every load.
"""
from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from marpipe.experiment import Experiment
from marpipe.io.files import write_json, write_prompt_set
from marpipe.layout import MODEL_FILE, base_model_spec
from marpipe.metrics.clip_metrics import HPS_STYLES
from marpipe.models.download import MANIFEST, PIN_FILE, ModelSource, download_model, verify_manifest, write_manifest


# --- base models ---------------------------------------------------------------------
def fetch_base_model(exp: Experiment, model: str, root: str | Path = "resources/models",
                     progress: bool = True) -> Path:
    src = exp.cfg["models"][model]["source"]
    if src["kind"] == "hub":
        return download_model(ModelSource(model, src["repo_id"], src.get("revision"), key=f"models.{model}.source"),
                              root, locked=src.get("locked_files"))
    return pretrain_base_model(exp, model, Path(root) / model, progress=progress)


def pretrain_base_model(exp: Experiment, model: str, out: Path, progress: bool = True) -> Path:
    """The small world's 'download': pre-train the tiny model on rendered world data (Eq. 2)."""
    from marpipe.models.tiny import TinyMAR, TinyMARConfig
    from marpipe.pretrain import pretrain
    from marpipe.world import make_split, render

    src = exp.cfg["models"][model]["source"]
    seed = exp.cfg["seed"]
    torch.manual_seed(seed)
    overrides = dict(src.get("overrides", {}))
    if exp.cfg["models"][model].get("sampling"):
        overrides["sampling"] = {**TinyMARConfig.preset(src["preset"]).sampling, **exp.cfg["models"][model]["sampling"]}
    net = TinyMAR(TinyMARConfig.preset(src["preset"], **overrides))
    pool = make_split("train", 4000, seed)

    def batches(step: int, bs: int):
        rng = np.random.default_rng([seed, step])
        metas = [pool[i] for i in rng.integers(0, len(pool), bs)]
        return render(metas, [int(step * 100_003 + i) for i in range(bs)]), [m["prompt"] for m in metas]

    t0 = time.perf_counter()
    kept = net.codec.fit(render(pool[:512], seed))
    log = pretrain(net, batches, src["steps"], batch_size=src["batch_size"], lr=src["lr"],
                   head_fraction=src["head_fraction"], seed=seed, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    net.save(out / MODEL_FILE)
    write_json(out / "pretrain.json", {"preset": src["preset"], "steps": src["steps"], "codec_variance_kept": kept,
                                       "seconds": time.perf_counter() - t0, "log": log})
    write_manifest(out)
    return out


def model_spec(exp: Experiment, model: str, root: str | Path = "resources/models") -> str:
    """The :func:`marpipe.models.registry.load_model` spec of a fetched base model (manifest checked)."""
    folder = Path(root) / model
    if not (folder / MANIFEST).exists():
        raise FileNotFoundError(f"{folder}: base model {model!r} is not fetched "
                                f"(run: snakemake --profile local resources/models/{model}/{MANIFEST})")
    verify_manifest(folder)
    return base_model_spec(exp.adapter(model), folder)


def load_base_model(exp: Experiment, model: str, device, root: str | Path = "resources/models",
                    weights: str | Path | Sequence[str | Path] | None = None):
    """The base model, with ``weights`` (checkpoints / weights files of trained parameters, e.g. the
    warmed-up head, then a selected checkpoint) loaded over it in order."""
    from marpipe.io.checkpoint import load_model_weights, load_overlay
    from marpipe.models.registry import load_model
    m = exp.cfg["models"][model]
    net = load_model(model_spec(exp, model, root), device=device, sampling=m.get("sampling"),
                     gradient_checkpointing=m.get("gradient_checkpointing", False))
    for w in [] if weights is None else [weights] if isinstance(weights, (str, Path)) else weights:
        load_overlay(net, load_model_weights(w), w)
    return net


# --- scorer weights ------------------------------------------------------------------------
def fetch_weights(exp: Experiment, name: str, root: str | Path = "resources/metrics") -> Path:
    spec = exp.cfg["weights"][name]
    out = Path(root) / name
    if spec["kind"] == "hub":
        files = spec.get("files")
        return download_model(ModelSource(name, spec["repo_id"], spec.get("revision"),
                                          allow_patterns=tuple(files) if files else None, key=f"weights.{name}"),
                              root, locked=spec.get("locked_files"))
    if spec["kind"] == "url":
        return fetch_url_weights(spec, name, out)
    from marpipe.world.learned import train_scorers
    out.mkdir(parents=True, exist_ok=True)
    train_scorers(out, seed=exp.cfg["seed"], steps=spec["steps"], quality_steps=spec["quality_steps"],
                  threads=torch.get_num_threads())
    write_manifest(out)
    return out


def fetch_url_weights(spec: dict, name: str, out: Path) -> Path:
    """``kind: url``: one file pinned by a commit URL and its sha256 (checked like the prompt
    sets', :func:`_download`) into ``out/<its file name>``; the manifest is written last. A
    complete folder of the same pin is verified and kept (no network)."""
    fname = urllib.parse.unquote(spec["url"].rsplit("/", 1)[-1])
    pin = {"url": spec["url"], "sha256": spec.get("sha256")}
    if (out / MANIFEST).exists():
        old = json.loads((out / PIN_FILE).read_text()) if (out / PIN_FILE).exists() else None
        if old == pin:
            verify_manifest(out)
            return out
        (out / MANIFEST).unlink()           # another pin: download again
    data = _download(spec, None, name, f"weights.{name}.sha256", what="weights")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (fname + ".part")
    tmp.write_bytes(data)
    tmp.replace(out / fname)
    (out / PIN_FILE).write_text(json.dumps(pin, indent=1) + "\n")
    write_manifest(out)
    return out


# --- prompt sets ---------------------------------------------------------------------------
def fetch_prompts(exp: Experiment, name: str, out: str | Path) -> Path:
    """Write prompt set ``name`` of ``config.prompts`` to ``out`` (JSON lines).

    ``kind: url`` sets are downloaded and checked against their ``sha256`` (pinned in the config
    or recorded by ``marpipe lock``; a mismatch is an error naming the set, both hashes and the
    config key to re-pin, and a file with neither is refused); the verified hash is written beside
    ``out`` (``<out>.sha256``; ``<out>.<style>.sha256`` for the per-style ``hps_benchmark`` files).
    """
    spec = exp.cfg["prompts"][name]
    if spec["kind"] == "world":
        from marpipe.world import make_split
        rows = [{"prompt": m["prompt"], "metadata": m} for m in make_split(spec["split"], spec["n"], exp.cfg["seed"])]
        return write_prompt_set(out, rows)
    fmt = spec.get("format", "jsonl")
    if fmt == "hps_benchmark":
        rows = []            # the schema requires all four styles
        for style in HPS_STYLES:
            data = _download(spec["styles"][style], Path(out).with_suffix(f".{style}.sha256"),
                             name, f"prompts.{name}.styles.{style}.sha256")
            rows += _parse_hps_style(data, style, name)
    else:
        data = _download(spec, Path(out).with_suffix(".sha256"), name, f"prompts.{name}.sha256")
        rows = _parse_prompts(data, fmt, name)
        if spec.get("complex_kinds"):
            rows = _tag_complex_kinds(rows, spec["complex_kinds"], out, name)
    if spec.get("n"):
        rows = rows[: spec["n"]]
    return write_prompt_set(out, rows)


def _download(pinned: dict, record: Path | None, name: str, key: str, what: str = "prompt set") -> bytes:
    """The bytes at ``pinned["url"]``, checked against ``pinned["sha256"]`` (config key ``key``, or the
    config's lock file); their sha256 is written to ``record`` (unless None)."""
    url, sha256 = pinned["url"], pinned.get("sha256")
    if not sha256:
        raise RuntimeError(f"{what} {name!r}: {url} is not pinned: run `marpipe lock` (it records the file's "
                           f"sha256 in the config's lock file) or set {key}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise RuntimeError(f"{what} {name!r}: cannot download {url} ({e}); check the network or "
                           f"config.yaml {key.rsplit('.', 1)[0]}.url") from None
    import hashlib
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise RuntimeError(f"{what} {name!r}: {url} has sha256 {got} but the pinned sha256 is {sha256}: "
                           f"the source changed. Check it, then pin the URL to a commit and set config.yaml "
                           f"{key} (or run `marpipe lock` again, or restore the pinned source)")
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(got + "\n")      # the verified hash, beside the prompt set
    return data


def _parse_prompts(data: bytes, fmt: str, name: str) -> list[dict]:
    if fmt == "txt":        # T2I-CompBench val files: one prompt per line (CRLF in some files)
        return [{"prompt": line.strip(), "metadata": {"set": name}} for line in data.decode().splitlines() if line.strip()]
    if fmt == "jsonl":      # the training prompts: JSON lines despite the .json extension
        rows = []
        for line in data.decode().splitlines():
            if line.strip():
                r = json.loads(line)
                text = r.get("prompt") or r.get("caption") or r.get("text")
                rows.append({"prompt": text, "metadata": {k: v for k, v in r.items() if k != "prompt"}})
        return rows
    raise ValueError(f"unknown prompt format {fmt!r} (prompt set {name!r})")


def _parse_hps_style(data: bytes, style: str, name: str) -> list[dict]:
    """One HPS v2 benchmark file (``benchmark/<style>.json`` of the HPDv2 dataset): a JSON list
    of prompt strings."""
    prompts = json.loads(data)
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt set {name!r}: the {style} file is not a JSON list of prompt strings")
    return [{"prompt": p, "metadata": {"style": style}} for p in prompts]


def _complex_key(line: str) -> str:
    """``3_in_1.py``'s key of a prompt line: the text before the first '.', lower-cased."""
    return line.strip("\n").split(".")[0].lower()


def _tag_complex_kinds(rows: list[dict], kinds: dict, out: str | Path, name: str) -> list[dict]:
    """T2I-CompBench complex: ``metadata.complex_kind`` = "spatial" / "action" when the prompt is
    in ``complex_val_spatial.txt`` / ``complex_val_action.txt`` (``3_in_1.py`` scores those by
    the mean of two parts), else "both" (the mean of attribute, spatial and CLIP)."""
    keys = {}
    for kind in ("spatial", "action"):
        data = _download(kinds[kind], Path(out).with_suffix(f".{kind}.sha256"), name,
                         f"prompts.{name}.complex_kinds.{kind}.sha256")
        keys[kind] = {_complex_key(line) for line in data.decode().splitlines()}
    for r in rows:
        k = _complex_key(r["prompt"])
        kind = "spatial" if k in keys["spatial"] else "action" if k in keys["action"] else "both"
        r["metadata"] = {**r["metadata"], "complex_kind": kind}
    return rows
