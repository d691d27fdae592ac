"""The scorer check: every CLIP-family scorer is measured with clip-benchmark, once per pinned
weights, before any evaluation uses it (config ``scorer_check:``; rule ``check_scorer``).

clip-benchmark's own zero-shot retrieval (recall@1) and caption selection against minimally
changed captions run on a CLIP-like adapter of the scorer (:func:`load_clip_under_test`), on public
sets (``kind: clip_benchmark``: Flickr30k, SugarCrepe, :func:`public_loader`) or on the small
world's held-out renders (``kind: world``, :func:`world_benchmark`). A value outside the range
written beside it in the config raises :class:`ScorerCheckError`, which stops the evaluate jobs
that read that scorer. ``docs/pipeline.md``, "The scorer check"."""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: scorer -> (kind of CLIP, the kwarg of its folder, open_clip's default architecture there)
BACKBONES = {
    "hps": ("hps", "weights_dir", None),
    "pickscore": ("pickscore", "weights_dir", None),
    "aesthetic": ("open_clip", "clip_dir", "ViT-L-14-quickgelu"),
    "compbench": ("open_clip", "clip_dir", "ViT-B-32-quickgelu"),
    "clip_b32": ("open_clip", "weights_dir", "ViT-B-32-quickgelu"),
    "world_hps": ("world", "weights_dir", None),
    "world_pickscore": ("world", "weights_dir", None),
    "world_aesthetic": ("world", "weights_dir", None),
    "world_compbench": ("world", "clip_dir", None),
}


class ScorerCheckError(RuntimeError):
    """A scorer measured outside its expected range (or one the check cannot load)."""


@dataclass
class ClipUnderTest:
    """What clip-benchmark needs of a model: ``transform`` (PIL image -> input tensor, the metric's
    own preprocessing), ``tokenizer`` (list of texts -> tokens with ``.to``), ``encode_image`` and
    ``encode_text``."""
    name: str
    transform: Callable
    tokenizer: Callable
    encode_image: Callable
    encode_text: Callable

    def eval(self):
        return self


def _pil_to_unit(image):
    """A PIL image as a ``[1, 3, H, W]`` float tensor in [0, 1] (what the metrics' preprocessing takes)."""
    import torch
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def _per_image(preprocess) -> Callable:
    return lambda image: preprocess(_pil_to_unit(image))[0]


def load_clip_under_test(scorer: str, kwargs: dict, device="cpu") -> ClipUnderTest:
    """The CLIP behind ``scorer``, loaded from its folders (``kwargs``: the config's scorer kwargs)."""
    import torch
    if scorer not in BACKBONES:
        raise ScorerCheckError(f"scorer_check: scorer {scorer!r} has no CLIP the check knows "
                               f"(known: {', '.join(sorted(BACKBONES))})")
    kind, kwarg, default = BACKBONES[scorer]
    if kwargs.get(kwarg) is None:
        raise ScorerCheckError(f"scorer_check: scorer {scorer!r} has no `{kwarg}` folder in config `scorers.{scorer}`")
    device = torch.device(device)
    from .preprocess import clip_preprocess, hf_clip_preprocess, hps_preprocess
    if kind == "world":
        from marpipe.world.learned import load_world_clip
        clip = load_world_clip(kwargs[kwarg], device)
        return ClipUnderTest(scorer, _per_image(clip.preprocess), clip.tokenizer,
                             lambda px: clip.model.encode_image(px, normalize=True),
                             lambda tok: clip.model.encode_text(tok, normalize=True))
    if kind == "hps":
        from .clip_metrics import HPSv21
        m = HPSv21.from_pretrained(device=device, **{k: v for k, v in kwargs.items() if k in ("weights_dir", "config_dir")})
        return ClipUnderTest(scorer, _per_image(lambda x: hps_preprocess(x, m.image_size, antialias=m.antialias)),
                             m.tokenizer, m.image_features, lambda tok: m.model.encode_text(tok, normalize=True))
    if kind == "open_clip":
        from .clip_metrics import ClipScore, _load_open_clip_weights
        model, tok = _load_open_clip_weights(ClipScore, kwargs[kwarg], default, kwarg=kwarg)
        m = ClipScore(model, tok, device=device)
        return ClipUnderTest(scorer, _per_image(lambda x: clip_preprocess(x, m.image_size)), m.tokenizer,
                             m.image_features, lambda t: m.model.encode_text(t, normalize=True))
    from .clip_metrics import PickScore
    m = PickScore.from_pretrained(device=device, **{k: v for k, v in kwargs.items()
                                                   if k in ("weights_dir", "processor_dir")})
    net = m.model

    def tokenize(texts):
        return m.tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")

    def encode_text(tok):
        out = net.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
        return net.text_projection(out)
    return ClipUnderTest(scorer, _per_image(lambda x: hf_clip_preprocess(x, m.size, m.crop, m.mean, m.std)),
                         tokenize, lambda px: net.visual_projection(net.vision_model(pixel_values=px).pooler_output),
                         encode_text)


# --- benchmarks ----------------------------------------------------------------------------

def _to_pil(images) -> list:
    import torch
    from PIL import Image
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


class _Pairs:
    """``(transform(image or images), captions)`` items, as clip-benchmark's caption datasets yield them."""

    def __init__(self, images: list, captions: list[list[str]], transform: Callable):
        self.images, self.captions, self.transform = images, captions, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        import torch
        img = self.images[i]
        x = torch.stack([self.transform(im) for im in img]) if isinstance(img, list) else self.transform(img)
        return x, list(self.captions[i])


def world_benchmark(n: int, pairs: int, seed: int) -> dict:
    """The small world's benchmark: ``n`` held-out renders with distinct prompts (retrieval), and
    ``pairs`` held-out renders each beside the render of a minimally changed prompt (caption
    selection, 2 images x 2 captions per instance)."""
    from marpipe.world.learned import heldout_pool
    from marpipe.world.render import mismatch_metadata, render
    metas, seen = [], set()
    for m in heldout_pool(4 * max(n, pairs), seed):
        if m["prompt"] not in seen:
            seen.add(m["prompt"])
            metas.append(m)
    rng = np.random.default_rng(seed)
    metas = [metas[i] for i in rng.permutation(len(metas))]     # every category and style, mixed
    chosen = metas[:pairs]
    wrong = [mismatch_metadata(m, rng) for m in chosen]
    images = _to_pil(render(metas[:max(n, pairs)], seed))
    wrong_images = _to_pil(render(wrong, seed + 10_000))
    return {"retrieval": (images[:n], [[m["prompt"]] for m in metas[:n]]),
            "caption_selection": ([[a, b] for a, b in zip(images, wrong_images)],
                                  [[m["prompt"], w["prompt"]] for m, w in zip(chosen, wrong)])}


def _loader(dataset, batch_size: int):
    import torch
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       collate_fn=image_captions_collate_fn)


def public_loader(task: dict, transform: Callable, batch_size: int, cache_dir: str | None = None):
    """A dataloader of a clip-benchmark dataset (``task``: its ``dataset`` name and ``root``), built
    and fetched by ``clip_benchmark.datasets.builder.build_dataset`` as clip-benchmark's CLI does."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    name = task["dataset"]
    clean = name.replace("wds/", "", 1)
    root = task["root"].format(dataset=clean, dataset_cleaned=clean.replace("/", "-"))
    if not root.startswith("https://"):
        Path(root).mkdir(parents=True, exist_ok=True)
    ds = build_dataset(name, root=root, transform=transform, split=task.get("split", "test"), download=True,
                       task="zeroshot_retrieval" if "sugar_crepe" not in name else "image_caption_selection",
                       wds_cache_dir=cache_dir)
    if name.startswith("wds/"):
        return torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, shuffle=False)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=get_dataset_collate_fn(name))


def measure(clip: ClipUnderTest, benchmark: dict, device="cpu") -> dict[str, float]:
    """clip-benchmark's retrieval and caption-selection metrics of ``clip`` on ``benchmark``, as
    ``{"retrieval.image_retrieval_recall@1": ..., "caption_selection.text_acc": ...}``."""
    import torch
    from clip_benchmark.metrics import image_caption_selection, zeroshot_retrieval
    device = str(torch.device(device).type)
    bs = int(benchmark.get("batch_size", 64))
    if benchmark["kind"] == "world":
        data = world_benchmark(int(benchmark.get("n", 64)), int(benchmark.get("pairs", 256)),
                               int(benchmark.get("seed", 0)))
        retrieval = _loader(_Pairs(*data["retrieval"], clip.transform), bs)
        selection = _loader(_Pairs(*data["caption_selection"], clip.transform), bs)
    else:
        cache = benchmark.get("cache_dir")
        retrieval = public_loader(benchmark["retrieval"], clip.transform, bs, cache)
        selection = public_loader(benchmark["caption_selection"], clip.transform, bs, cache)
    out = {}
    amp = device == "cuda"
    r = zeroshot_retrieval.evaluate(clip, retrieval, clip.tokenizer, device, amp=amp, recall_k_list=[1, 5])
    out.update({f"retrieval.{k}": float(v) for k, v in r.items()})
    s = image_caption_selection.evaluate(clip, selection, clip.tokenizer, device, amp=amp)
    out.update({f"caption_selection.{k}": float(v) for k, v in s.items()})
    return out


# --- the check -------------------------------------------------------------------------------

def config_errors(cfg: dict) -> list[str]:
    """What is wrong with config ``scorer_check`` beyond its schema: each check names a weights entry
    that its scorer reads, and a scorer whose CLIP the check can load."""
    errors = []
    for name, spec in ((cfg.get("scorer_check") or {}).get("checks") or {}).items():
        scorer = spec["scorer"]
        where = f"config.scorer_check.checks.{name}"
        if scorer not in cfg.get("scorers", {}):
            errors.append(f"{where}.scorer = {scorer!r}: not an entry of `scorers`")
            continue
        if scorer not in BACKBONES:
            errors.append(f"{where}.scorer = {scorer!r}: no CLIP the check can load (known: {', '.join(sorted(BACKBONES))})")
            continue
        folders = cfg["scorers"][scorer].get("weights") or {}
        folders = {"weights_dir": folders} if isinstance(folders, str) else folders
        if folders.get(BACKBONES[scorer][1]) != name:
            errors.append(f"{where}: scorer {scorer!r} reads its CLIP (`{BACKBONES[scorer][1]}`) from "
                          f"{folders.get(BACKBONES[scorer][1])!r}, not from weights entry {name!r}")
    return errors


def compare(measured: dict[str, float], ranges: dict[str, Sequence[float]]) -> list[dict]:
    """One row per ranged metric: value, expected range, whether it lies in it."""
    rows = []
    for key, (lo, hi) in ranges.items():
        if key not in measured:
            raise ScorerCheckError(f"scorer_check: no metric {key!r} (measured: {', '.join(sorted(measured))})")
        v = measured[key]
        rows.append({"metric": key, "value": v, "low": lo, "high": hi, "passed": bool(lo <= v <= hi)})
    return rows


def _manifest_sha(folder: str | Path) -> str | None:
    f = Path(folder) / "MANIFEST.sha256"
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None


def check_scorer(cfg: dict, weights: str, resources: str | Path = "resources", device: str | None = None,
                 out_json: str | Path | None = None, out_table: str | Path | None = None) -> dict:
    """Measure the CLIP of the weights entry ``weights`` (config ``scorer_check.checks.<weights>``)
    and compare it with its ranges; write the record and the table, then raise
    :class:`ScorerCheckError` if a value lies outside its range."""
    import torch

    from marpipe.io.files import write_json
    errors = config_errors(cfg)
    if errors:
        raise ScorerCheckError("; ".join(errors))
    sc = cfg.get("scorer_check") or {}
    if weights not in sc.get("checks", {}):
        raise ScorerCheckError(f"scorer_check.checks has no entry {weights!r} "
                               f"(entries: {', '.join(sc.get('checks', {})) or 'none'})")
    spec = sc["checks"][weights]
    scorer = spec["scorer"]
    kwargs = {k: v for k, v in cfg["scorers"][scorer].items() if k != "weights"}
    entries = cfg["scorers"][scorer].get("weights") or {}
    entries = {"weights_dir": entries} if isinstance(entries, str) else dict(entries)
    for kwarg, name in entries.items():
        kwargs[kwarg] = str(Path(resources) / "metrics" / name)
    device = device or cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    clip = load_clip_under_test(scorer, kwargs, device)
    measured = measure(clip, sc["benchmark"], device)
    rows = compare(measured, spec["ranges"])
    passed = all(r["passed"] for r in rows)
    record = {"weights": weights, "scorer": scorer, "passed": passed, "benchmark": sc["benchmark"],
              "manifests": {name: _manifest_sha(Path(resources) / "metrics" / name) for name in entries.values()},
              "measured": measured, "checks": rows, "source": spec.get("source", "")}
    if out_json:
        write_json(out_json, record)
    if out_table:
        Path(out_table).parent.mkdir(parents=True, exist_ok=True)
        with open(out_table, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["weights", "scorer", "metric", "value", "expected_low", "expected_high", "passed"])
            for r in rows:
                w.writerow([weights, scorer, r["metric"], f"{r['value']:.4f}", r["low"], r["high"],
                            "yes" if r["passed"] else "NO"])
    for r in rows:
        print(f"  {'PASS' if r['passed'] else 'FAIL'}  {weights} ({scorer}) {r['metric']} = {r['value']:.4f}"
              f"  expected [{r['low']}, {r['high']}]")
    if not passed:
        bad = "; ".join(f"{r['metric']} = {r['value']:.4f} outside [{r['low']}, {r['high']}]"
                        for r in rows if not r["passed"])
        raise ScorerCheckError(f"scorer {scorer!r} (weights {weights!r}) failed its check: {bad}. "
                               f"Expected ranges: {spec.get('source', 'config scorer_check.checks.' + weights)}. "
                               f"Check the pinned weights and their loader before evaluating with it.")
    return record
