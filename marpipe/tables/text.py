"""What the Markdown page, the HTML pages and the terminal text share: how intervals and verdicts are
explained, the stand-in scorers of a built table, and what counts as "no value"."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from marpipe import stats

FLOAT_FORMAT = "%.4f"


def is_nan(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


DECIDABLE = "smallest decidable Δ"


def stand_ins_of(tables) -> tuple[str, dict[str, str]]:
    st = tables.get("stand_ins")
    if st is None or not len(st):
        return "unknown", {}
    return str(st["world"].iloc[0]), dict(zip(st["column"], st["scorer"]))


INTERVALS_TEXT = ("95% intervals of the very estimator the cell prints (the mean over the column's images, of all "
                  "seeds). One training seed: percentile bootstrap over prompts ({n:,} resamples, seed {seed}; all "
                  "images of a drawn prompt go together; preference suite: prompts drawn within each style). Several: "
                  "Student's t with the spread of the per-seed means plus that bootstrap's variance "
                  "(n_seeds - 1 degrees of freedom; a bootstrap over 3 seeds would be far too narrow)")


VERDICTS_TEXT = ("Each comparison the paper makes, as a paired difference: Table 1: Ours − +GRPO per model; Table 2: "
                 "each row − the row above; and one of our own, training: each trained row − its base model in the "
                 "columns of the reward it trained on (HPS; every CompBench category), claimed > 0. Ours: the difference of the two cells, its standard error from the same "
                 "bootstrap (one set of prompts drawn for both rows: they were sampled on the same prompts with the "
                 "same seeds) and, with several training seeds, the spread of the per-seed differences (runs of the "
                 "same seed paired). The claims are decided together: each interval is simultaneous over all of them "
                 "(Bonferroni: 95% that none misses), so no verdict is a run's luck; its half-width (`smallest decidable Δ`) "
                 "is the smallest difference this run can decide, to read beside the paper's. Verdict against the sign of the "
                 "paper's own difference: holds (our interval excludes 0 on the paper's side), contradicted (it "
                 "excludes 0 on the other side), inconclusive (it contains 0); no verdict: no interval (score files "
                 "without per-image values, tables rebuilt from MLflow) or no direction in the paper.")


def intervals_text() -> str:
    return INTERVALS_TEXT.format(n=stats.N_RESAMPLES, seed=stats.SEED)


def no_interval_note(tables: dict[str, pd.DataFrame]) -> str:
    iv = tables.get("intervals")
    if iv is None or not len(iv) or iv["value"].isna().all():
        return ""
    known = iv[iv["value"].notna()]
    if known["lo"].isna().all():
        return (" No cell has an interval: these records hold no per-image values (tables rebuilt from MLflow, "
                "or score files written before intervals existed).")
    if known["lo"].isna().any():
        return " Cells without an interval: their score files hold no per-image values."
    return ""
