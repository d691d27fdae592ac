"""Intervals and verdicts for Tables 1-2: a bootstrap over prompts, paired differences, verdicts.

Pure (numpy only, no I/O). One training seed and a few hundred prompts leave differences between
variants inside the noise; every number the tables print therefore comes with a 95% interval,
and every comparison the paper makes with a verdict on it.

* The estimator of a cell (:func:`cell_estimate`) is the one the tables have always printed:
  the mean over all images of the column. It is summed exactly (``math.fsum``), so its value
  does not depend on the order of the summation. For the HPS v2 benchmark (equal numbers of
  prompts per style) it equals the mean of the per-style means.
* The interval (:func:`bootstrap_mean`) is a percentile bootstrap over *prompts*: a resample
  draws prompts with replacement and keeps all images of a drawn prompt (the images of one
  prompt are not independent). With ``strata`` (the preference suite: a prompt's style) prompts
  are drawn within each stratum, so every resample keeps the suite's style counts and each
  replicate is the same estimator (for equal counts: the mean over styles of the per-style
  means). ``n_resamples`` (2,000) and ``seed`` (0) are fixed: intervals are reproducible.
* Several training seeds (``seed_index``: the training seed of each image): a two-level
  bootstrap. Each resample draws the seeds with replacement and, independently, the prompts (as
  above), and takes the mean over the drawn (seed, prompt) cells' images: the interval then holds
  the spread between training runs as well as between prompts. One seed: exactly the above.
* A difference (:func:`bootstrap_difference`) between two rows sampled on the same prompts
  with the same seeds is *paired*: each resample draws one set of prompts and takes the
  difference of the two rows' means over it, so what the prompts share (some prompts are easy
  for every row) cancels. Its estimate is exactly the difference of the two cells.
* :func:`verdict`: ``holds`` when the interval excludes 0 on the side of the paper's own
  difference, ``contradicted`` when it excludes 0 on the other side, ``inconclusive`` when it
  contains 0; ``no verdict`` when there is no interval or the paper states no direction.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

N_RESAMPLES = 2000
SEED = 0
LEVEL = 0.95

HOLDS, INCONCLUSIVE, CONTRADICTED, NA = "holds", "inconclusive", "contradicted", "no verdict"
VERDICTS = (HOLDS, INCONCLUSIVE, CONTRADICTED)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval (``lo``/``hi`` NaN: no interval)."""
    estimate: float
    lo: float
    hi: float
    n_prompts: int
    n_images: int
    n_seeds: int = 1

    @property
    def known(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))


def cell_estimate(values: Sequence[float]) -> float:
    """The cell's value: the mean over all images, summed exactly (independent of summation order)."""
    values = [float(v) for v in values]
    return math.fsum(values) / len(values) if values else float("nan")


@dataclass(frozen=True)
class _Prompts:
    """Per-image values grouped by (training seed, prompt): sums and image counts ``[n_seeds, P]``,
    prompts sorted by id, seeds by label."""
    ids: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    strata: np.ndarray          # stratum code per prompt (0 everywhere when unstratified)
    seeds: np.ndarray           # the training seeds' labels (one entry: a single run)


def _by_prompt(values, prompt_index=None, strata=None, seed_index=None) -> _Prompts:
    v = np.asarray(values, dtype=np.float64).ravel()
    pid = np.arange(len(v)) if prompt_index is None else np.asarray(prompt_index, dtype=np.int64).ravel()
    sid = np.zeros(len(v), dtype=np.int64) if seed_index is None else np.asarray(seed_index, dtype=np.int64).ravel()
    if len(pid) != len(v) or len(sid) != len(v):
        raise ValueError(f"{len(v)} values but {len(pid)} prompt indices and {len(sid)} seed indices")
    ids, inverse = np.unique(pid, return_inverse=True)
    seeds, seed_inverse = np.unique(sid, return_inverse=True)
    cell = seed_inverse * len(ids) + inverse
    shape = (len(seeds), len(ids))
    sums = np.bincount(cell, weights=v, minlength=shape[0] * shape[1]).reshape(shape)
    counts = np.bincount(cell, minlength=shape[0] * shape[1]).astype(np.float64).reshape(shape)
    if (counts == 0).any():
        raise ValueError("every training seed must have images of every prompt (the rows were sampled on other prompts)")
    if strata is None:
        codes = np.zeros(len(ids), dtype=np.int64)
    else:
        labels = [str(_stratum(strata, int(i))) for i in ids]
        codes = np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)
    return _Prompts(ids, sums, counts, codes, seeds)


def seed_weights(n_seeds: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray | None:
    """``[n_seeds, n_resamples]``: how often each training seed is drawn (with replacement) in each
    resample; None for a single seed (nothing to draw). Drawn from a stream of its own, so the
    prompts' draws are the same with and without seeds."""
    if n_seeds < 2:
        return None
    rng = np.random.default_rng([seed, 1])
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_resamples).T.astype(np.float64)


def _stratum(strata: Mapping | Sequence, prompt: int):
    try:
        return strata[prompt]
    except (IndexError, KeyError):
        raise ValueError(f"no stratum for prompt {prompt}") from None


def resample_indices(strata: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``[n_resamples, P]`` positions of prompts drawn with replacement, within each stratum
    (stratum codes ``strata``, one per prompt): every row keeps each stratum's size. A function
    of its arguments only (cached: the tables draw the same resamples for every cell of a suite);
    the array is read-only."""
    strata = np.ascontiguousarray(strata, dtype=np.int64)
    return _resample_indices(strata.tobytes(), len(strata), int(n_resamples), int(seed))


@functools.lru_cache(maxsize=16)
def _resample_indices(strata_bytes: bytes, n: int, n_resamples: int, seed: int) -> np.ndarray:
    strata = np.frombuffer(strata_bytes, dtype=np.int64, count=n)
    rng = np.random.default_rng(seed)
    out = np.empty((n, n_resamples), dtype=np.int64)      # prompt-major while filling: row writes are fast
    for code in np.unique(strata):                     # sorted: the draws do not depend on prompt order
        pos = np.flatnonzero(strata == code)
        out[pos, :] = pos[rng.integers(0, len(pos), size=(n_resamples, len(pos)))].T
    out = np.ascontiguousarray(out.T)
    out.flags.writeable = False
    return out


def _percentiles(replicates: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(replicates, [a, 1.0 - a])
    return float(lo), float(hi)


def _means(p: _Prompts, idx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The estimator on each resample: sum of the drawn cells' values / number of their images
    (``weights``: each seed's draws per resample, :func:`seed_weights`; None: the one seed)."""
    if weights is None and len(p.seeds) == 1:
        sums, counts = p.sums[0], p.counts[0]
        if len(counts) and (counts == counts[0]).all():      # as many images per prompt: skip the counts
            return sums[idx].sum(axis=1) / (counts[0] * idx.shape[1])
        return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    per_seed = np.stack([s[idx].sum(axis=1) for s in p.sums])            # [n_seeds, R]
    images = np.stack([c[idx].sum(axis=1) for c in p.counts])
    w = np.ones_like(per_seed) if weights is None else weights
    return (w * per_seed).sum(axis=0) / (w * images).sum(axis=0)


def bootstrap_mean(values: Sequence[float], prompt_index: Sequence[int] | None = None,
                   strata: Mapping | Sequence | None = None, seed_index: Sequence[int] | None = None, *,
                   n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Interval:
    """The cell's estimate and its percentile-bootstrap interval over prompts (and training seeds).

    ``values``: one per image; ``prompt_index``: the prompt of each (None: every value its own
    prompt); ``strata``: stratum of each prompt id (indexable by it), prompts resampled within
    strata; ``seed_index``: the training seed of each image (None: one run), seeds resampled too.
    Fewer than two prompts: no interval (NaN)."""
    est = cell_estimate(values)
    p = _by_prompt(values, prompt_index, strata, seed_index)
    if len(p.ids) < 2:
        return Interval(est, math.nan, math.nan, len(p.ids), len(values), len(p.seeds))
    reps = _means(p, resample_indices(p.strata, n_resamples, seed), seed_weights(len(p.seeds), n_resamples, seed))
    lo, hi = _percentiles(reps, level)
    return Interval(est, lo, hi, len(p.ids), len(values), len(p.seeds))


def bootstrap_difference(a: Sequence[float], b: Sequence[float], prompt_index: Sequence[int] | None = None,
                         strata: Mapping | Sequence | None = None, *, paired: bool = True,
                         prompt_index_b: Sequence[int] | None = None, seed_index: Sequence[int] | None = None,
                         seed_index_b: Sequence[int] | None = None, n_resamples: int = N_RESAMPLES,
                         seed: int = SEED, level: float = LEVEL) -> Interval:
    """``mean(a) - mean(b)`` (exactly the difference of the two cells) and its interval.

    ``paired`` (rows sampled on the same prompts with the same sampling seeds): each resample
    draws one set of prompts for both (``prompt_index_b``: b's own prompt of each image, default
    ``prompt_index``; both rows must hold the same prompts). Training seeds (``seed_index``,
    ``seed_index_b``): two rows trained with the same seeds (the same training prompts, the same
    initial draws) share the seeds' draws too; a row of one run (the base model) has none.
    Unpaired: the two are resampled independently (for comparison only: it ignores what the rows
    share)."""
    est = cell_estimate(a) - cell_estimate(b)
    pa = _by_prompt(a, prompt_index, strata, seed_index)
    if paired:
        pb = _by_prompt(b, prompt_index if prompt_index_b is None else prompt_index_b, strata, seed_index_b)
        if not np.array_equal(pa.ids, pb.ids):
            raise ValueError("paired difference of rows scored on different prompts")
        if len(pa.ids) < 2:
            return Interval(est, math.nan, math.nan, len(pa.ids), len(a), len(pa.seeds))
        idx = resample_indices(pa.strata, n_resamples, seed)
        wa = seed_weights(len(pa.seeds), n_resamples, seed)
        shared = len(pa.seeds) == len(pb.seeds) and np.array_equal(pa.seeds, pb.seeds)
        wb = wa if shared else seed_weights(len(pb.seeds), n_resamples, seed + 1)
        reps = _means(pa, idx, wa) - _means(pb, idx, wb)
        n_prompts = len(pa.ids)
    else:
        pb = _by_prompt(b, prompt_index if prompt_index_b is None else prompt_index_b, strata, seed_index_b)
        if min(len(pa.ids), len(pb.ids)) < 2:
            return Interval(est, math.nan, math.nan, min(len(pa.ids), len(pb.ids)), len(a), len(pa.seeds))
        rng = np.random.default_rng(seed)
        seeds = rng.integers(0, 2 ** 63 - 1, size=2)
        reps = (_means(pa, resample_indices(pa.strata, n_resamples, int(seeds[0])),
                       seed_weights(len(pa.seeds), n_resamples, int(seeds[0])))
                - _means(pb, resample_indices(pb.strata, n_resamples, int(seeds[1])),
                         seed_weights(len(pb.seeds), n_resamples, int(seeds[1]))))
        n_prompts = min(len(pa.ids), len(pb.ids))
    lo, hi = _percentiles(reps, level)
    return Interval(est, lo, hi, n_prompts, len(a), max(len(pa.seeds), len(pb.seeds)))


def direction(paper_diff: float) -> int:
    """+1 / -1: the sign of the paper's difference; 0 when it states none (NaN or equal values)."""
    if paper_diff is None or math.isnan(paper_diff) or paper_diff == 0:
        return 0
    return 1 if paper_diff > 0 else -1


def verdict(lo: float, hi: float, paper_diff: float) -> str:
    """``holds`` / ``contradicted``: the interval excludes 0 on the side of / opposite to the
    paper's difference; ``inconclusive``: it contains 0; ``no verdict``: no interval, or no direction."""
    sign = direction(paper_diff)
    if sign == 0 or lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return NA
    if lo > 0:
        return HOLDS if sign > 0 else CONTRADICTED
    if hi < 0:
        return HOLDS if sign < 0 else CONTRADICTED
    return INCONCLUSIVE
