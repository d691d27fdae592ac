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

    @property
    def known(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))


def cell_estimate(values: Sequence[float]) -> float:
    """The cell's value: the mean over all images, summed exactly (independent of summation order)."""
    values = [float(v) for v in values]
    return math.fsum(values) / len(values) if values else float("nan")


@dataclass(frozen=True)
class _Prompts:
    """Per-image values grouped by prompt: sums and image counts per prompt, prompts sorted by id."""
    ids: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    strata: np.ndarray          # stratum code per prompt (0 everywhere when unstratified)


def _by_prompt(values, prompt_index=None, strata=None) -> _Prompts:
    v = np.asarray(values, dtype=np.float64).ravel()
    pid = np.arange(len(v)) if prompt_index is None else np.asarray(prompt_index, dtype=np.int64).ravel()
    if len(pid) != len(v):
        raise ValueError(f"{len(v)} values but {len(pid)} prompt indices")
    ids, inverse = np.unique(pid, return_inverse=True)
    sums = np.bincount(inverse, weights=v, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    if strata is None:
        codes = np.zeros(len(ids), dtype=np.int64)
    else:
        labels = [str(_stratum(strata, int(i))) for i in ids]
        codes = np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)
    return _Prompts(ids, sums, counts, codes)


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


def _means(p: _Prompts, idx: np.ndarray) -> np.ndarray:
    """The estimator on each resample: sum of the drawn prompts' values / number of their images."""
    if len(p.counts) and (p.counts == p.counts[0]).all():      # as many images per prompt: skip the counts
        return p.sums[idx].sum(axis=1) / (p.counts[0] * idx.shape[1])
    return p.sums[idx].sum(axis=1) / p.counts[idx].sum(axis=1)


def bootstrap_mean(values: Sequence[float], prompt_index: Sequence[int] | None = None,
                   strata: Mapping | Sequence | None = None, *, n_resamples: int = N_RESAMPLES,
                   seed: int = SEED, level: float = LEVEL) -> Interval:
    """The cell's estimate and its percentile-bootstrap interval over prompts.

    ``values``: one per image; ``prompt_index``: the prompt of each (None: every value its own
    prompt); ``strata``: stratum of each prompt id (indexable by it), prompts resampled within
    strata. Fewer than two prompts: no interval (NaN)."""
    est = cell_estimate(values)
    p = _by_prompt(values, prompt_index, strata)
    if len(p.ids) < 2:
        return Interval(est, math.nan, math.nan, len(p.ids), len(values))
    lo, hi = _percentiles(_means(p, resample_indices(p.strata, n_resamples, seed)), level)
    return Interval(est, lo, hi, len(p.ids), len(values))


def bootstrap_difference(a: Sequence[float], b: Sequence[float], prompt_index: Sequence[int] | None = None,
                         strata: Mapping | Sequence | None = None, *, paired: bool = True,
                         prompt_index_b: Sequence[int] | None = None, n_resamples: int = N_RESAMPLES,
                         seed: int = SEED, level: float = LEVEL) -> Interval:
    """``mean(a) - mean(b)`` (exactly the difference of the two cells) and its interval.

    ``paired`` (rows sampled on the same prompts with the same seeds): ``a`` and ``b`` are
    aligned image by image on ``prompt_index``; each resample draws one set of prompts for
    both. Unpaired: ``b`` has its own ``prompt_index_b`` (default: ``prompt_index``) and the
    two are resampled independently (for comparison only: it ignores what the rows share)."""
    est = cell_estimate(a) - cell_estimate(b)
    pa = _by_prompt(a, prompt_index, strata)
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired difference of {len(a)} and {len(b)} values")
        pb = _by_prompt(b, prompt_index, strata)
        if len(pa.ids) < 2:
            return Interval(est, math.nan, math.nan, len(pa.ids), len(a))
        idx = resample_indices(pa.strata, n_resamples, seed)
        reps = _means(pa, idx) - _means(pb, idx)
        n_prompts = len(pa.ids)
    else:
        pb = _by_prompt(b, prompt_index if prompt_index_b is None else prompt_index_b, strata)
        if min(len(pa.ids), len(pb.ids)) < 2:
            return Interval(est, math.nan, math.nan, min(len(pa.ids), len(pb.ids)), len(a))
        rng = np.random.default_rng(seed)
        seeds = rng.integers(0, 2 ** 63 - 1, size=2)
        reps = (_means(pa, resample_indices(pa.strata, n_resamples, int(seeds[0])))
                - _means(pb, resample_indices(pb.strata, n_resamples, int(seeds[1]))))
        n_prompts = min(len(pa.ids), len(pb.ids))
    lo, hi = _percentiles(reps, level)
    return Interval(est, lo, hi, n_prompts, len(a))


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
