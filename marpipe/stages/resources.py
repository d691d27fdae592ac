"""Base models, scorer weights and prompt sets: fetched (hub, URL) or built (small world).

``resources/models/<model>/``, ``resources/metrics/<weights>/`` and
``resources/prompts/<set>.jsonl``. A folder is complete when its
``MANIFEST.sha256`` exists (written last), and it is checked on every load.
"""
from __future__ import annotations

import io
import json
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch

from marpipe.experiment import Experiment
from marpipe.io.files import write_json, write_prompt_set
from marpipe.models.download import MANIFEST, ModelSource, download_model, verify_manifest, write_manifest

MODEL_FILE = "model.safetensors"


# --- base models ---------------------------------------------------------------------
def fetch_base_model(exp: Experiment, model: str, root: str | Path = "resources/models",
                     progress: bool = True) -> Path:
    src = exp.cfg["models"][model]["source"]
    if src["kind"] == "hub":
        return download_model(ModelSource(model, src["repo_id"], src.get("revision")), root)
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
    adapter = exp.cfg["models"][model].get("adapter", "tiny")
    return str(folder / MODEL_FILE) if adapter == "tiny" else f"{adapter}:{folder}"


def load_base_model(exp: Experiment, model: str, device, root: str | Path = "resources/models",
                    weights: str | Path | None = None):
    """The base model (or a fine-tuned state of it when ``weights`` is a checkpoint/weights file)."""
    from marpipe.io.checkpoint import load_model_weights
    from marpipe.models.registry import load_model
    m = exp.cfg["models"][model]
    net = load_model(model_spec(exp, model, root), device=device, sampling=m.get("sampling"),
                     gradient_checkpointing=m.get("gradient_checkpointing", False))
    if weights is not None:
        net.load_state_dict(load_model_weights(weights), strict=True)
    return net


# --- scorer weights ------------------------------------------------------------------------
def fetch_weights(exp: Experiment, name: str, root: str | Path = "resources/metrics") -> Path:
    spec = exp.cfg["weights"][name]
    out = Path(root) / name
    if spec["kind"] == "hub":
        files = spec.get("files")
        return download_model(ModelSource(name, spec["repo_id"], spec.get("revision"),
                                          allow_patterns=tuple(files) if files else None), root)
    from marpipe.world.learned import train_scorers
    out.mkdir(parents=True, exist_ok=True)
    train_scorers(out, seed=exp.cfg["seed"], steps=spec["steps"], quality_steps=spec["quality_steps"],
                  threads=torch.get_num_threads())
    write_manifest(out)
    return out


# --- prompt sets ---------------------------------------------------------------------------
def fetch_prompts(exp: Experiment, name: str, out: str | Path) -> Path:
    spec = exp.cfg["prompts"][name]
    if spec["kind"] == "world":
        from marpipe.world import make_split
        rows = [{"prompt": m["prompt"], "metadata": m} for m in make_split(spec["split"], spec["n"], exp.cfg["seed"])]
        return write_prompt_set(out, rows)
    data = _download(spec["url"], spec.get("sha256"), Path(out).with_suffix(".sha256"))
    rows = _parse_prompts(data, spec.get("format", "jsonl"), name)
    if spec.get("n"):
        rows = rows[: spec["n"]]
    return write_prompt_set(out, rows)


def _download(url: str, sha256: str | None, record: Path) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise RuntimeError(f"cannot download {url} ({e}); check the network or config.prompts.<set>.url") from None
    import hashlib
    got = hashlib.sha256(data).hexdigest()
    if sha256 and got != sha256:
        raise RuntimeError(f"{url}: sha256 {got} != pinned {sha256} (the source changed; re-pin config.prompts.<set>.sha256)")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(got + "\n")          # trust on first use: pin this value in the config
    return data


def _parse_prompts(data: bytes, fmt: str, name: str) -> list[dict]:
    if fmt == "txt":        # T2I-CompBench val files: one prompt per line
        return [{"prompt": line.strip(), "metadata": {"set": name}} for line in data.decode().splitlines() if line.strip()]
    if fmt == "jsonl":      # the training prompts: JSON lines despite the .json extension
        rows = []
        for line in data.decode().splitlines():
            if line.strip():
                r = json.loads(line)
                text = r.get("prompt") or r.get("caption") or r.get("text")
                rows.append({"prompt": text, "metadata": {k: v for k, v in r.items() if k != "prompt"}})
        return rows
    if fmt == "hps_benchmark":   # the HPS v2 repo archive: benchmark prompt lists per style
        rows = []
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for style in ("anime", "concept-art", "paintings", "photo"):
                member = next(n for n in z.namelist() if n.endswith(f"benchmark_prompts/{style}.json"))
                rows += [{"prompt": p, "metadata": {"style": style}} for p in json.loads(z.read(member))]
        return rows
    raise ValueError(f"unknown prompt format {fmt!r}")
