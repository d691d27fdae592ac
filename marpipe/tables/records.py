"""Score records: one per (model, row, suite) evaluation, read from the evaluate stage's score files
(:func:`score_records_from_files`) or rebuilt from its MLflow runs (:func:`score_records_from_mlflow`,
the same values without the per-image ones); a row's training seeds merged into one record
(:func:`index_records`); which scorer stood in for each column, in which world."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from marpipe import stats
from marpipe.experiment import BASE, SUITES, row_id


def score_record(d: dict) -> dict:
    missing = [k for k in ("model", "row", "suite", "scores") if k not in d]
    if missing:
        raise ValueError(f"score record lacks {missing}: {sorted(d)}")
    rec = {
        "model": d["model"], "label": d.get("label"), "row": d["row"],
        "reward": d.get("reward") or None,
        "variant": d.get("variant") or (BASE if d["row"] == BASE else d["row"].split("-", 1)[-1]),
        "suite": d["suite"], "seed": None if d.get("seed") in (None, "") else int(d["seed"]),
        "scores": {k: float(v) for k, v in d["scores"].items() if v is not None},
        "checkpoint": _checkpoint(d.get("checkpoint")),
    }
    for extra in ("scorer_for", "world", "n_images", "per_style"):
        if d.get(extra) is not None:
            rec[extra] = d[extra]
    if d.get("per_image"):
        rec["per_image"] = _per_image_of(d["per_image"])
        strata = d.get("strata") or None
        if strata is not None:
            if not isinstance(strata, dict) or not isinstance(strata.get("of_prompt"), list):
                raise ValueError(f"strata must be {{'by': ..., 'of_prompt': [...]}}, not {strata!r}")
            rec["strata"] = {"by": strata.get("by"), "of_prompt": list(strata["of_prompt"])}
    return rec


def _per_image_of(per_image: dict) -> dict:
    """``{col: {"prompt_index": [...], "value": [...]}}``, checked: one prompt index per value."""
    out = {}
    for col, entry in per_image.items():
        if not isinstance(entry, dict) or "value" not in entry or "prompt_index" not in entry:
            raise ValueError(f"per_image[{col!r}] must hold 'prompt_index' and 'value' lists")
        values, index = list(entry["value"]), [int(i) for i in entry["prompt_index"]]
        if len(values) != len(index):
            raise ValueError(f"per_image[{col!r}]: {len(values)} values but {len(index)} prompt indices")
        out[col] = {"prompt_index": index, "value": [math.nan if v is None else float(v) for v in values]}
    return out


def _checkpoint(c) -> dict:
    c = c or {}
    step = c.get("step")
    if isinstance(step, str):
        step = int(step) if step.strip().lstrip("-").isdigit() else None
    return {"rule": c.get("rule") or None, "step": None if step is None else int(step)}


def score_records_from_files(paths: Iterable[str | Path]) -> list[dict]:
    """Read score JSON files (the evaluate stage's output) into records."""
    records = []
    for p in paths:
        try:
            records.append(score_record(json.loads(Path(p).read_text())))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{p}: not a score file ({e})") from None
    return records


def score_records_from_mlflow(exp, tracking_uri: str | None = None) -> list[dict]:
    """Rebuild the score records from the evaluate stage's MLflow runs in experiment
    ``exp.cfg['experiment']`` (:func:`marpipe.io.tracking.evaluation_scores`). Only the runs of this
    config's rows count: a run key it does not give (a row it lacks, an older key layout, an ablation
    point) or another training config (a ``train_hash`` tag other than the config's for the row) is
    passed over.

    MLflow holds only each column's mean, not the per-image values: tables built from these
    records have the same values as those built from the score files but **no intervals**
    (``lo``/``hi`` empty, every verdict ``no verdict``). Build from the score files for intervals.
    """
    from marpipe.io.tracking import evaluation_scores
    records = [score_record(d) for d in evaluation_scores(exp.cfg["experiment"], _lineages(exp), SUITES, tracking_uri)]
    records.sort(key=lambda r: (r["model"], r["row"], r["suite"]))
    return records


def _lineages(exp) -> dict[str, str]:
    """MLflow run key -> ``train_hash`` ("" for a base row) of every row of the config's tables."""
    from marpipe.stages.train import run_key, train_hash
    return {run_key(r.model, row_id(r.reward, r.variant, r.seed)): train_hash(exp, r.model, r.reward, r.variant, r.seed)
            for suite in SUITES for r in exp.suite_rows(suite)}


def index_records(records: Sequence[dict]) -> dict[tuple[str, str, str], dict]:
    """(model, row, suite) -> its record; the records of a row's training seeds merged into one."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["row"], r["suite"]), []).append(r)
    out = {}
    for key, group in groups.items():
        seeds = [r.get("seed") for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"two score records for model {key[0]!r}, row {key[1]!r}, suite {key[2]!r}"
                             + (f", training seed {seeds[0]}" if seeds[0] is not None else ""))
        out[key] = group[0] if len(group) == 1 else _merge_seeds(sorted(group, key=lambda r: (r["seed"] is None, r["seed"] or 0)))
    return out


def _merge_seeds(group: list[dict]) -> dict:
    """One row's records of several training seeds as one record: a cell is the mean over all their
    images (with per-image values; else the mean of the seeds' cells), per-image values carry
    their seed, ``checkpoints`` lists each seed's."""
    rec = {**group[0], "seed": None, "seeds": [r["seed"] for r in group],
           "checkpoints": [r["checkpoint"] for r in group]}
    cols = [c for c in group[0]["scores"] if all(c in r["scores"] for r in group)]
    per_image = {}
    for col in cols:
        entries = [(r.get("per_image") or {}).get(col) for r in group]
        if all(entries):
            per_image[col] = {"prompt_index": [i for e in entries for i in e["prompt_index"]],
                              "value": [v for e in entries for v in e["value"]],
                              "seed": [r["seed"] for r, e in zip(group, entries) for _ in e["value"]]}
    rec["scores"] = {c: (stats.cell_estimate(per_image[c]["value"]) if c in per_image
                         else math.fsum(r["scores"][c] for r in group) / len(group)) for c in cols}
    rec["per_image"] = per_image
    rec["n_images"] = sum(r.get("n_images") or 0 for r in group) or None
    return rec


def stand_ins(records: Sequence[dict], exp=None) -> dict[str, str]:
    """column -> the scorer(s) that produced it (records' ``scorer_for``, else the config's evaluation
    section); columns in the config's order, whatever the order of the records."""
    found: dict[str, set[str]] = {}
    for r in records:
        for col, scorer in (r.get("scorer_for") or {}).items():
            found.setdefault(col, set()).add(str(scorer))
    order: list[str] = []
    if exp is not None:
        for suite in SUITES:
            ev = exp.cfg["evaluation"][suite]
            specs = ev["metrics"] if suite == "preference" else ev["categories"]
            for col, spec in specs.items():
                order.append(col)
                found.setdefault(col, {str(spec["scorer"])})
    order += sorted(c for c in found if c not in order)
    return {c: ", ".join(sorted(found[c])) for c in order}


def world_of(records: Sequence[dict], exp=None) -> str:
    worlds = sorted({str(r["world"]) for r in records if r.get("world")})
    if not worlds and exp is not None:
        worlds = [str(exp.cfg.get("world", ""))]
    return ", ".join(w for w in worlds if w) or "unknown"
