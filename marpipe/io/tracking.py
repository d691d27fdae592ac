"""Metrics: a JSONL file always, MLflow when a tracking URI is set.

The JSONL file is the source of truth. Live MLflow logging is best effort: if
the server is unreachable the run goes on, and :func:`sync_to_mlflow` replays
the JSONL file later (idempotently: the MLflow run is found again by its
``marpipe.run_key`` tag and only missing steps are sent).

One value per step. A resumed run redoes the steps after its checkpoint; the JSONL
file is cut back to the checkpoint (:meth:`MetricsLog.truncate_after`), and MLflow,
whose ``log_metric`` at an existing step appends a second point, gets training
points through :meth:`MLflowRun.log_step`, which sends a (metric, step) only if the
run does not hold it yet. The redone steps are bit-identical, so the point that
reached the server before the kill is the right one.

Which MLflow run a row continues (also when it is re-run from another clone or
machine): the newest run of the experiment tagged ``marpipe.run_key = model/row``
and, when the caller gives one, ``train_hash`` (a hash of the row's resolved
training config without ``steps``/``save_every``, see
:func:`marpipe.stages.train.train_hash`). Same row and same training config:
continue that run (its existing steps are not sent again; a longer ``steps`` adds
the new ones). Training config changed: a new run with the same name and key. To
keep two clones' runs apart on purpose, give them different ``experiment`` names.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a kill: ignore it and what follows
    return rows


class MetricsLog:
    """Append-only per-step metrics in JSONL; ``truncate_after(step)`` on resume."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Keep the rows of steps ``<= step``, one per step (the last one written), in step
        order; drop the rest and a torn last line. Run before redoing steps after ``step``."""
        last = {r.get("step", 0): r for r in read_jsonl(self.path) if r.get("step", 0) <= step}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(last[s]) + "\n" for s in sorted(last)))
        os.replace(tmp, self.path)

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


class MLflowRun:
    """Best-effort live MLflow logging; silent no-op without a tracking URI."""

    def __init__(self, run_key: str, experiment: str, params: dict | None = None,
                 tags: dict | None = None, tracking_uri: str | None = None):
        self.run_key, self.active, self.client, self.run_id = run_key, False, None, None
        self.created, self._steps = False, {}      # metric -> steps the run holds (filled on demand)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            return
        try:
            self.client, self.run_id, self.created = _open_run(uri, experiment, run_key, params or {}, tags or {})
            self.active = True
        except Exception as e:  # unreachable server: keep training, replay later
            print(f"[marpipe] MLflow unreachable ({type(e).__name__}: {e}); metrics stay in the JSONL "
                  f"file and are sent later by `marpipe mlflow-sync`", file=sys.stderr)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        try:
            _log_metrics(self.client, self.run_id, step, metrics)
        except Exception as e:
            self.active = False
            print(f"[marpipe] MLflow logging failed at step {step} ({e}); continuing, replay later",
                  file=sys.stderr)

    def log_step(self, step: int, metrics: dict[str, Any]) -> None:
        """A training step's metrics, idempotently: a (metric, step) the run already holds is
        not sent again, so redoing steps after a resume leaves one point per step."""
        if not self.active:
            return
        try:
            new = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and step not in self._held(k)}
            if new:
                _log_metrics(self.client, self.run_id, step, new)
            for k in new:
                self._steps[k].add(step)
        except Exception as e:
            self.active = False
            print(f"[marpipe] MLflow logging failed at step {step} ({e}); continuing, replay later",
                  file=sys.stderr)

    def _held(self, key: str) -> set[int]:
        if key not in self._steps:
            self._steps[key] = set() if self.created else _logged_steps(self.client, self.run_id, key)
        return self._steps[key]


def _logged_steps(client, run_id, key) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, key)}


def _open_run(uri, experiment, run_key, params, tags):
    """``(client, run_id, created)``: the row's run (see the module docstring), or a new one."""
    import mlflow
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else _create_experiment(client, experiment)
    query = f"tags.`marpipe.run_key` = '{run_key}'"
    if tags.get("train_hash"):
        query += f" and tags.`train_hash` = '{tags['train_hash']}'"
    found = client.search_runs([exp_id], filter_string=query, max_results=1,
                               order_by=["attributes.start_time DESC"])
    created = not found
    if found:
        run_id = found[0].info.run_id
    else:
        run = client.create_run(exp_id, run_name=run_key, tags={"marpipe.run_key": run_key, **tags})
        run_id = run.info.run_id
        _log_batches(client, run_id, params=[Param(k, str(v)[:6000]) for k, v in _flatten(params).items()])
    _log_batches(client, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    del mlflow
    return client, run_id, created


def _create_experiment(client, name):
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by another job
        return client.get_experiment_by_name(name).experiment_id


def _log_batches(client, run_id, metrics=(), params=(), tags=()):
    """``log_batch`` within MLflow's limits (1000 metrics, 100 params, 100 tags per call):
    one HTTP request per chunk instead of one per value."""
    for kind, items, size in (("metrics", list(metrics), 1000), ("params", list(params), 100),
                              ("tags", list(tags), 100)):
        for i in range(0, len(items), size):
            client.log_batch(run_id, **{kind: items[i:i + size]})


def _log_metrics(client, run_id, step, metrics):
    _log_rows(client, run_id, [(step, metrics)])


def _log_rows(client, run_id, rows):
    """Metrics of many steps, ``[(step, {name: value})]``, in as few requests as possible."""
    import time
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    _log_batches(client, run_id, metrics=[Metric(k, float(v), now, step) for step, metrics in rows
                                          for k, v in metrics.items() if isinstance(v, (int, float))])


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def sync_to_mlflow(jsonl: str | Path, run_key: str, experiment: str, params: dict | None = None,
                   tags: dict | None = None, final_metrics: dict | None = None,
                   tracking_uri: str | None = None) -> str:
    """Replay a metrics JSONL file into MLflow; only steps MLflow lacks are sent. Returns the run id."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RuntimeError("no MLflow tracking URI: set MLFLOW_TRACKING_URI or config mlflow.tracking_uri")
    client, run_id, created = _open_run(uri, experiment, run_key, params or {}, tags or {})
    rows = read_jsonl(jsonl)
    keys = sorted({k for row in rows for k, v in row.items() if k != "step" and isinstance(v, (int, float))})
    have = {k: set() if created else _logged_steps(client, run_id, k) for k in keys}
    _log_rows(client, run_id, [(row["step"], {k: v for k, v in row.items()
                                              if k != "step" and row["step"] not in have.get(k, ())})
                               for row in rows])
    if final_metrics:
        _log_metrics(client, run_id, 0, {f"final.{k}": v for k, v in final_metrics.items()})
    return run_id
