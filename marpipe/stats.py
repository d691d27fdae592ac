"""Intervals and verdicts for Tables 1-2: a bootstrap over prompts, paired differences, verdicts.

Pure (numpy only, no I/O). Every number the tables print comes with a 95% interval of the mean the
cell prints, and every comparison the paper makes with a verdict decided at a simultaneous
(Bonferroni) level over all claims of a run. How to read them: ``docs/results.md``, "How to read
the tables"."""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000
SEED = 0
LEVEL = 0.95

HOLDS, INCONCLUSIVE, CONTRADICTED, NA = "holds", "inconclusive", "contradicted", "no verdict"
VERDICTS = (HOLDS, INCONCLUSIVE, CONTRADICTED)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% interval (``lo``/``hi`` NaN: no interval): a percentile bootstrap
    over prompts for one training seed, Student's t over seeds and prompts for several."""
    estimate: float
    lo: float
    hi: float
    n_prompts: int
    n_images: int
    n_seeds: int = 1
    se: float = math.nan        # standard error: the bootstrap's sd (one seed), sqrt(v_seeds + v_prompts) (several)
    df: float = math.inf        # its degrees of freedom (several seeds: n_seeds - 1; inf: normal)

    @property
    def known(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))


def cell_estimate(values: Sequence[float]) -> float:
    """The cell's value: the mean over all images, summed exactly (independent of summation order).
    For the HPS v2 benchmark (equal prompts per style) it equals the mean of the per-style means."""
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
    """The estimator on each resample of prompts ``idx``: sum of the drawn prompts' values over all
    training seeds / number of their images."""
    if len(p.seeds) == 1:
        sums, counts = p.sums[0], p.counts[0]
        if len(counts) and (counts == counts[0]).all():      # as many images per prompt: skip the counts
            return sums[idx].sum(axis=1) / (counts[0] * idx.shape[1])
        return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    sums, counts = p.sums.sum(axis=0), p.counts.sum(axis=0)
    return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)


def _seed_means(p: _Prompts) -> np.ndarray:
    """Each training seed's cell value: the mean over its images ``[n_seeds]``."""
    return p.sums.sum(axis=1) / p.counts.sum(axis=1)


def _t_quantile(q: float, df: float) -> float:
    """Student's t quantile (``df`` inf: the normal's). scipy is imported here, not at the top:
    every generate and evaluate job imports this module and uses no quantile (scipy.stats: ~1.6 s)."""
    from scipy.stats import t
    return float(t.ppf(q, df))


def _t_interval(est: float, v_seeds: float, df: float, v_prompts: float, level: float) -> tuple[float, float, float, float]:
    """``est +- t(df) * se``, ``se = sqrt(v_seeds + v_prompts)``: ``(lo, hi, se, df)``. ``df`` is the
    seeds' alone, not Welch-Satterthwaite's: with 3 seeds the seeds' variance is often
    underestimated and a Satterthwaite df from it grows (at a simultaneous level it decided 40% of
    null families instead of 5%). The image noise counts in both terms: it errs on the wide side."""
    var = v_seeds + v_prompts
    if not var > 0:
        return est, est, 0.0, math.inf
    se = math.sqrt(var)
    half = _t_quantile(0.5 + level / 2.0, df) * se
    return est - half, est + half, se, df


def _interval(est: float, reps: np.ndarray, v_prompts: float, n_seeds: int, seed_variance, level: float):
    """``(lo, hi, se, df)``: one seed, the percentile bootstrap of ``reps`` (se: their sd, normal);
    several, :func:`_t_interval` with ``seed_variance()`` (the seeds' variance and df)."""
    if n_seeds == 1:
        return (*_percentiles(reps, level), float(np.std(reps, ddof=1)), math.inf)
    return _t_interval(est, *seed_variance(), v_prompts, level)

def _seed_variance(pa: _Prompts, pb: _Prompts | None = None) -> tuple[float, float]:
    """The variance of the (difference of the) mean(s) over training seeds and its degrees of freedom:
    one row, or two rows whose runs of the same seed are paired, or against a row of one run: the
    per-seed values' variance / n, ``n - 1``; two rows with different seed sets: Welch's sum, with
    the smaller row's ``n - 1`` (conservative)."""
    ma = _seed_means(pa)
    if pb is None:
        return float(np.var(ma, ddof=1)) / len(ma), len(ma) - 1
    mb = _seed_means(pb)
    if len(mb) == 1 or (len(ma) == len(mb) and np.array_equal(pa.seeds, pb.seeds)):
        d = ma - mb
        return float(np.var(d, ddof=1)) / len(d), len(d) - 1
    if len(ma) == 1:
        return float(np.var(mb, ddof=1)) / len(mb), len(mb) - 1
    return (float(np.var(ma, ddof=1)) / len(ma) + float(np.var(mb, ddof=1)) / len(mb),
            min(len(ma), len(mb)) - 1)


def bootstrap_mean(values: Sequence[float], prompt_index: Sequence[int] | None = None,
                   strata: Mapping | Sequence | None = None, seed_index: Sequence[int] | None = None, *,
                   n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Interval:
    """The cell's estimate and its interval: a percentile bootstrap over prompts for one training
    seed, Student's t over seeds and prompts for several.

    A resample draws prompts with replacement and keeps all images of a drawn prompt (the images of
    one prompt are not independent); with ``strata`` (the preference suite: a prompt's style) it
    draws within each stratum, so each replicate is the same estimator. ``n_resamples`` and ``seed``
    are fixed: intervals are reproducible. Several seeds: ``v_seeds`` from the spread of the per-seed
    means, ``v_prompts`` from the prompt bootstrap with every seed kept (the prompts are shared by all
    seeds, so their spread does not show between seeds); a bootstrap over so few seeds would be too
    narrow.

    ``values``: one per image; ``prompt_index``: the prompt of each (None: every value its own
    prompt); ``strata``: stratum of each prompt id (indexable by it), prompts resampled within
    strata; ``seed_index``: the training seed of each image (None: one run).
    Fewer than two prompts: no interval (NaN)."""
    est = cell_estimate(values)
    p = _by_prompt(values, prompt_index, strata, seed_index)
    if len(p.ids) < 2:
        return Interval(est, math.nan, math.nan, len(p.ids), len(values), len(p.seeds))
    reps = _means(p, resample_indices(p.strata, n_resamples, seed))
    lo, hi, se, df = _interval(est, reps, float(np.var(reps, ddof=1)), len(p.seeds), lambda: _seed_variance(p), level)
    return Interval(est, lo, hi, len(p.ids), len(values), len(p.seeds), se, df)


def bootstrap_difference(a: Sequence[float], b: Sequence[float], prompt_index: Sequence[int] | None = None,
                         strata: Mapping | Sequence | None = None, *, paired: bool = True,
                         prompt_index_b: Sequence[int] | None = None, seed_index: Sequence[int] | None = None,
                         seed_index_b: Sequence[int] | None = None, n_resamples: int = N_RESAMPLES,
                         seed: int = SEED, level: float = LEVEL) -> Interval:
    """``mean(a) - mean(b)`` (exactly the difference of the two cells) and its interval.

    ``paired`` (rows sampled on the same prompts with the same sampling seeds): each resample
    draws one set of prompts for both (``prompt_index_b``: b's own prompt of each image, default
    ``prompt_index``; both rows must hold the same prompts). Training seeds (``seed_index``,
    ``seed_index_b``): runs of the same seed are paired too (the same training prompts, the same
    initial draws); a row of one run (the base model) has none. Unpaired: the two are resampled
    independently (for comparison only: it ignores what the rows share)."""
    est = cell_estimate(a) - cell_estimate(b)
    pa = _by_prompt(a, prompt_index, strata, seed_index)
    pb = _by_prompt(b, prompt_index if prompt_index_b is None else prompt_index_b, strata, seed_index_b)
    if paired:
        if not np.array_equal(pa.ids, pb.ids):
            raise ValueError("paired difference of rows scored on different prompts")
        n_prompts = len(pa.ids)
        if n_prompts >= 2:
            idx = resample_indices(pa.strata, n_resamples, seed)
            reps = _means(pa, idx) - _means(pb, idx)
            v_prompts = float(np.var(reps, ddof=1))
    else:
        n_prompts = min(len(pa.ids), len(pb.ids))
        if n_prompts >= 2:
            rng = np.random.default_rng(seed)
            seeds = rng.integers(0, 2 ** 63 - 1, size=2)
            ra = _means(pa, resample_indices(pa.strata, n_resamples, int(seeds[0])))
            rb = _means(pb, resample_indices(pb.strata, n_resamples, int(seeds[1])))
            reps = ra - rb
            v_prompts = float(np.var(ra, ddof=1) + np.var(rb, ddof=1))
    n_seeds = max(len(pa.seeds), len(pb.seeds))
    if n_prompts < 2:
        return Interval(est, math.nan, math.nan, n_prompts, len(a), n_seeds)
    lo, hi, se, df = _interval(est, reps, v_prompts, n_seeds, lambda: _seed_variance(pa, pb), level)
    return Interval(est, lo, hi, n_prompts, len(a), n_seeds, se, df)


def simultaneous(estimate: float, se: float, df: float, n_claims: int, level: float = LEVEL) -> tuple[float, float]:
    """Bonferroni's interval for one of ``n_claims`` claims decided together: ``estimate +- q * se``,
    ``q`` Student's t (``df``; inf: normal) at ``1 - (1 - level) / (2 n_claims)``, so that the chance
    that ANY of the claims' intervals misses its true value is at most ``1 - level``. A study decides
    some forty claims at once: at 95% each, two of them would be decided by chance in every run, and
    differently in the next. ``(nan, nan)`` without a standard error."""
    half = decidable(se, df, n_claims, level)
    return estimate - half, estimate + half


def decidable(se: float, df: float, n_claims: int, level: float = LEVEL) -> float:
    """The smallest difference a run can decide: the half-width of :func:`simultaneous`'s interval.
    A claim is decided (holds or contradicted) exactly when ``|estimate| > decidable(...)``; beside
    the paper's difference it says whether a run of this size could see an effect of the paper's
    size at all. ``nan`` without a standard error."""
    if se is None or math.isnan(se) or n_claims < 1:
        return math.nan
    return _t_quantile(1.0 - (1.0 - level) / (2.0 * n_claims), df) * se


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
