"""Figures: training dynamics (the paper's Fig. 1, 2b and 5) and sample grids (Fig. 6).

Headless and deterministic: figures are drawn on matplotlib's Agg canvas without pyplot
(no global state, no display), at a fixed size and dpi, with no version string in the
PNG metadata, so the same inputs give the same bytes.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from marpipe import layout
from marpipe.experiment import BASE, row_id
from marpipe.io.files import open_images, to_uint8
from marpipe.io.tracking import read_jsonl

# display names and colours shared by all figures (the paper's names)
VARIANT_LABELS = {BASE: "Base", "grpo": "GRPO", "fix_decoder": "+Fix Decoder", "mte": "+MTE", "sim": "+Sim (Ours)"}
VARIANT_COLORS = {BASE: "#7f7f7f", "grpo": "#1f77b4", "fix_decoder": "#ff7f0e", "mte": "#2ca02c", "sim": "#d62728"}
DYNAMICS_PANELS = (("reward_mean", "reward (mean)"), ("kl", "KL"), ("grad_norm", "gradient norm"))
DYNAMICS_SIZE = (12.0, 3.6)          # inches
DPI = 100
PNG_METADATA = {"Software": None}   # no matplotlib version in the file


def _variant_of(key: str) -> str:
    """"hps-sim" -> "sim", "fix_decoder" -> "fix_decoder", "base" -> "base"."""
    if key in VARIANT_LABELS:
        return key
    tail = key.split("-", 1)[-1]
    return tail if tail in VARIANT_LABELS else key


def display_label(key: str) -> str:
    return VARIANT_LABELS.get(_variant_of(key), key)


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
    tmp.replace(out)
    return out


# ------------------------------------------------------------------------------------------
# training dynamics
# ------------------------------------------------------------------------------------------
def metrics_paths(exp, model: str, reward: str, results: str | Path = "results") -> dict[str, Path]:
    """variant -> ``{results}/runs/{model}/{reward}/{variant}/seed{N}/metrics.jsonl`` of the first
    training seed, for each variant the model trains (:meth:`Experiment.model_variants`), in config order."""
    seed = exp.seeds[0]
    return {v: Path(layout.run_metrics(model, reward, v, seed, results)) for v in exp.model_variants(model)}


def plot_dynamics(metrics_by_variant: dict[str, str | Path], title: str, out_png: str | Path) -> Path:
    """Reward mean, KL and gradient norm against the training step, one line per variant.

    ``metrics_by_variant``: variant (or row) name -> a training ``metrics.jsonl``. A file that
    does not exist raises; a step lacking a metric is a gap in that line.
    """
    series = {}
    for name, path in metrics_by_variant.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no training metrics for {name!r} (train it first)")
        rows = sorted(read_jsonl(path), key=lambda r: r["step"])
        series[name] = {"step": np.array([r["step"] for r in rows], dtype=float),
                        **{k: np.array([_num(r.get(k)) for r in rows], dtype=float) for k, _ in DYNAMICS_PANELS}}
    fig = Figure(figsize=DYNAMICS_SIZE, dpi=DPI)
    axes = fig.subplots(1, len(DYNAMICS_PANELS))
    for ax, (key, ylabel) in zip(axes, DYNAMICS_PANELS):
        for i, (name, s) in enumerate(series.items()):
            color = VARIANT_COLORS.get(_variant_of(name), f"C{i % 10}")
            ax.plot(s["step"], s[key], label=display_label(name), color=color, linewidth=1.4)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel)
        ax.grid(True, alpha=0.3)
    if series:
        axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


# ------------------------------------------------------------------------------------------
# sample grids
# ------------------------------------------------------------------------------------------
def grid_bundles(exp, model: str, suite: str, results: str | Path = "results") -> dict[str, Path]:
    """row name -> ``{results}/images/{model}/{row id}/{suite}.npz`` for the base and each variant
    the model trains (:meth:`Experiment.model_variants`) with the suite's reward (its first training
    seed), in config order (base, grpo, ...)."""
    reward = exp.cfg["evaluation"][suite]["reward"]
    rows = {BASE: BASE} | {f"{reward}-{v}": row_id(reward, v, exp.seeds[0]) for v in exp.model_variants(model)}
    return {name: Path(layout.images(model, rid, suite, results)) for name, rid in rows.items()}


GRID_MIN_CELL = 128      # images are upscaled (nearest) by an integer factor to at least this many pixels
GRID_PAD = 4
GRID_LABEL_W = 130       # pixels left of the images for the row labels
GRID_TITLE_H = 56        # pixels above the images for the prompts


def grid_size(n_rows: int, n_cols: int, image_size: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`sample_grid`'s PNG."""
    cell = image_size * max(1, math.ceil(GRID_MIN_CELL / image_size))
    return (GRID_LABEL_W + n_cols * cell + (n_cols + 1) * GRID_PAD,
            GRID_TITLE_H + n_rows * cell + (n_rows + 1) * GRID_PAD)


def sample_grid(bundles: dict[str, str | Path], out_png: str | Path, n_prompts: int = 8,
                labels: dict[str, str] | None = None) -> Path:
    """A grid of samples like the paper's Fig. 6: one row per bundle (base, GRPO, ... in the given
    order), one column per prompt (the first ``n_prompts`` prompts of the first bundle, each
    prompt's first image), row labels on the left, prompts on top. Small images are upscaled
    by an integer factor with nearest neighbour so that each pixel stays visible.

    ``labels``: optional row name -> label (default: the paper's variant names, "Base").
    """
    if not bundles:
        raise ValueError("sample_grid: no image bundles given")
    loaded = {}
    for name, path in bundles.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no image bundle for {name!r} (run the evaluate stage first)")
        loaded[name] = open_images(path)
    first = next(iter(loaded.values()))
    prompts = first["prompts"][:n_prompts]
    if not prompts:
        raise ValueError(f"sample_grid: {next(iter(bundles.values()))} holds no prompts")
    size = int(first["images"].shape[2])
    tiles = []
    for bundle in loaded.values():
        images = bundle["images"]
        index = list(bundle["prompt_index"])
        at = [_first_image_of(bundle, index, prompt, c) for c, prompt in enumerate(prompts)]
        keep = [c for c, j in enumerate(at) if j is not None] if images.shape[1] == size else []
        drawn = dict(zip(keep, images[[at[c] for c in keep]]))       # only the images drawn are read
        tiles.append([drawn.get(c) for c in range(len(prompts))])
        images.close()
    row_labels = [(labels or {}).get(name, display_label(name)) for name in loaded]
    return _draw_grid(tiles, row_labels, prompts, size, out_png)


def prompt_grid(images, prompts: list[str], out_png: str | Path, label: str = "") -> Path:
    """One row of samples, one per prompt, with the prompt printed above each image: the base
    model check's figure. ``images``: ``[N,3,H,W]`` in [0,1] (a tensor), image i for prompt i;
    upscaled with nearest neighbour to at least :data:`GRID_MIN_CELL` pixels like :func:`sample_grid`."""
    arr = to_uint8(images)
    if len(arr) != len(prompts) or not len(prompts):
        raise ValueError(f"prompt_grid: {len(arr)} images for {len(prompts)} prompts")
    return _draw_grid([list(arr)], [label], list(prompts), int(arr.shape[1]), out_png)


def _draw_grid(tiles: list[list[np.ndarray | None]], row_labels: list[str], prompts: list[str], size: int,
               out_png: str | Path) -> Path:
    """The grid figure: ``tiles[r][c]`` a ``[size,size,3]`` uint8 image (None: a gray cell), each
    upscaled by an integer factor with nearest neighbour; row labels left, prompts above."""
    n_rows, n_cols = len(tiles), len(prompts)
    scale = max(1, math.ceil(GRID_MIN_CELL / size))
    cell = size * scale
    width, height = grid_size(n_rows, n_cols, size)
    mosaic_w, mosaic_h = width - GRID_LABEL_W, height - GRID_TITLE_H
    mosaic = np.full((mosaic_h, mosaic_w, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c in range(n_cols):
            y, x = GRID_PAD + r * (cell + GRID_PAD), GRID_PAD + c * (cell + GRID_PAD)
            tile = row[c] if c < len(row) else None
            if tile is None or tile.shape[:2] != (size, size):
                mosaic[y:y + cell, x:x + cell] = 200          # gray: no image for this prompt
                continue
            mosaic[y:y + cell, x:x + cell] = tile.repeat(scale, axis=0).repeat(scale, axis=1)

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((GRID_LABEL_W / width, 0, mosaic_w / width, mosaic_h / height))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto", extent=(0, mosaic_w, mosaic_h, 0))
    ax.set_axis_off()
    for r, text in enumerate(row_labels):
        y = 1 - (GRID_TITLE_H + GRID_PAD + r * (cell + GRID_PAD) + cell / 2) / height
        fig.text(6 / width, y, "\n".join(textwrap.wrap(text, 16)), ha="left", va="center", fontsize=10)
    for c, prompt in enumerate(prompts):
        x = (GRID_LABEL_W + GRID_PAD + c * (cell + GRID_PAD) + cell / 2) / width
        wrapped = textwrap.wrap(prompt, max(8, cell * 3 // 20))[:3]     # 19 characters a line at 128 px
        fig.text(x, 1 - 4 / height, "\n".join(wrapped), ha="center", va="top", fontsize=8)
    return _save(fig, out_png)


def _first_image_of(bundle: dict, index: list[int], prompt: str, c: int) -> int | None:
    """The first image of prompt ``prompt`` (matched by text; by position if the texts differ)."""
    prompts = bundle["prompts"]
    p = prompts.index(prompt) if prompt in prompts else (c if c < len(prompts) else None)
    if p is None:
        return None
    return next((i for i, k in enumerate(index) if k == p), None)


def make_figures(exp, out_dir: str | Path, results: str | Path = "results") -> list[Path]:
    """The figures stage: per model, the training dynamics of each trained reward and the preference
    suite's sample grid, of the runs and bundles below ``results`` that exist."""
    out_dir, results = Path(out_dir), Path(results)
    made = []
    seed = f" (training seed {exp.seeds[0]})" if len(exp.seeds) > 1 else ""
    for model in exp.models:
        for reward in exp.trained_rewards:
            runs = {v: p for v, p in metrics_paths(exp, model, reward, results).items() if p.exists()}
            if runs:
                made.append(plot_dynamics(runs, f"{exp.label(model)}, {reward} reward{seed}",
                                          out_dir / f"dynamics_{model}_{reward}.png"))
        rows = {k: p for k, p in grid_bundles(exp, model, "preference", results).items() if p.exists()}
        if rows:
            made.append(sample_grid(rows, out_dir / f"samples_{model}.png", n_prompts=exp.cfg["figures"]["grid_prompts"]))
    return made
