"""Metrics: a JSONL file always (the source of truth), MLflow when a tracking URI is set.

Live MLflow logging is best effort and never holds training up: one value per (metric, step),
sent only when the run does not show it yet, a bounded backlog while the server is away,
:func:`sync_to_mlflow` to replay the file later, non-finite values as NaN plus a
``nonfinite.<name>`` marker, and the run's real end status. The rules and the reasons for
them: ``docs/pipeline.md``, "Tracking"."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LIVE_TIMEOUT_S = max(1, round(float(os.environ.get("MARPIPE_MLFLOW_TIMEOUT", "3"))))   # s per live request
RETRY_EVERY_S = float(os.environ.get("MARPIPE_MLFLOW_RETRY_S", "30"))   # after a failure, try again this often
BACKLOG_MAX_POINTS = 500_000                                            # unsent points kept in memory, at most
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# kinds the MLflow UI (3.x) opens on the runs table; anything else (unset, genai_*) is replaced
_TRAINING_KINDS = {MODEL_TRAINING, "finetuning", "forecasting", "classification", "regression", "automl"}

_LIVE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
         "MLFLOW_HTTP_REQUEST_TIMEOUT": str(LIVE_TIMEOUT_S)}
# sync is a batch job: a few quick retries, a longer timeout (a user's own values win)
_SYNC = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
         "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
_HTTP_LOCK = threading.RLock()


@contextmanager
def _http(settings: dict[str, str], override: bool = True):
    """MLflow's HTTP retry/timeout env vars set to ``settings`` inside the block, restored after.
    MLflow reads them at every request and has no per-client setting (its defaults: 7 retries,
    backoff 2, 120 s timeout, about 4 minutes for a refused connection), so they are process-wide
    while a call runs, serialised by a lock. ``override=False`` keeps values the user exported."""
    with _HTTP_LOCK:
        old = {k: os.environ.get(k) for k in settings}
        os.environ.update({k: v for k, v in settings.items() if override or old[k] is None})
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class MLflowUnreachable(RuntimeError):
    """The tracking server does not answer; the message says where and what to do."""


def check_reachable(uri: str, timeout: float = 3.0, hint: str = "") -> None:
    """Raise :class:`MLflowUnreachable` within about ``timeout`` seconds when an http(s)
    tracking server does not answer (any HTTP answer counts: only the connection matters).
    Other URIs (a local ``sqlite:``/file store) are not checked."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return                      # the server answered (a proxy or an auth layer may refuse /health)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise MLflowUnreachable(
            f"MLflow tracking server at {uri} is not reachable ({reason}). Start it "
            f"(`workflow/scripts/mlflow-server.sh up` prints its URI; `MARPIPE_STATE=.marpipe "
            f"workflow/scripts/mlflow-server.sh up` restarts the pipeline's own server on its recorded port), "
            f"or point marpipe at the running one: `export MLFLOW_TRACKING_URI=<uri>`, config "
            f"`mlflow.tracking_uri`, or `--tracking-uri`." + (f" {hint}" if hint else "")) from None


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
    """Best-effort live MLflow logging; silent no-op without a tracking URI.

    No call blocks for more than about :data:`LIVE_TIMEOUT_S` seconds per request; after a
    failure, live logging pauses and is retried at most every ``retry_every`` seconds, and the
    steps logged meanwhile wait in a backlog of at most :data:`BACKLOG_MAX_POINTS` points and go
    out first when the server answers again, filtered against what the run holds (a request that
    timed out may still have landed)."""

    def __init__(self, run_key: str, experiment: str, params: dict | None = None,
                 tags: dict | None = None, tracking_uri: str | None = None, retry_every: float | None = None):
        self.run_key, self.experiment, self.params, self.tags = run_key, experiment, params or {}, tags or {}
        self.active, self.client, self.run_id, self.created = False, None, None, False
        self.retry_every = RETRY_EVERY_S if retry_every is None else retry_every
        self.training = False                  # set by :func:`run_status`: an ended run goes back to RUNNING
        self.stats = {"sent": 0, "failures": 0, "dropped": 0}   # points sent live; failed calls; backlog overflow
        self._held: dict[str, dict[int, float]] = {}  # metric -> {step: value} the run shows (on demand)
        self._backlog: dict[int, dict[str, float]] = {}          # step -> metrics not sent yet
        self._last_try, self._down_at = 0.0, None
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if self.uri:
            self._connect()

    # --- public -----------------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics at ``step`` as they are (evaluation scores; not deduplicated)."""
        if not self._ready():
            return
        try:
            with _http(_LIVE):
                _log_metrics(self.client, self.run_id, step, metrics)
            self.stats["sent"] += sum(isinstance(v, (int, float)) for v in metrics.values())
        except Exception as e:
            self._fail(f"at step {step}", e)

    def log_step(self, step: int, metrics: dict[str, Any]) -> None:
        """A step's metrics, idempotently: a (metric, step) the run already shows with this value
        is not sent again, so redoing steps after a resume adds no point. While the
        server is away the step waits in the backlog and goes out once it answers again."""
        if not self.uri:
            return
        new = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if new:
            self._backlog.setdefault(step, {}).update(new)
        if self._ready():
            self._flush(f"at step {step}")
        self._trim_backlog()

    def end(self, status: str = "FINISHED") -> bool:
        """Send what is left of the backlog, then end the run with ``status`` and the current
        time as its end time. One try (bounded like every live call); False if MLflow missed it
        (``marpipe mlflow-sync`` marks a finished run FINISHED later)."""
        if not self.uri:
            return False
        if self.run_id is None and not self._connect():
            return False
        self.active = True
        if self._backlog and not self._flush("at the end"):
            return False
        try:
            with _http(_LIVE):
                self.client.set_terminated(self.run_id, status, end_time=int(time.time() * 1000))
            return True
        except Exception as e:
            self._fail(f"ending the run as {status}", e)
            return False

    # --- internals ----------------------------------------------------------------------------
    def _connect(self) -> bool:
        self._last_try = time.monotonic()
        try:
            with _http(_LIVE):
                self.client, self.run_id, self.created = _open_run(self.uri, self.experiment, self.run_key,
                                                                   self.params, self.tags)
                if self.training and not self.created:
                    _mark_running(self.client, self.run_id)
            self.active = True
            return True
        except Exception as e:  # unreachable server: keep training, replay later
            self._fail("opening the run", e)
            return False

    def _ready(self) -> bool:
        """Live logging on, or off and due for another try (then reconnect)."""
        if self.active:
            return True
        if not self.uri or time.monotonic() - self._last_try < self.retry_every:
            return False
        if self.run_id is None:
            return self._connect()
        self._last_try = time.monotonic()
        self.active = True              # the next request tells
        return True

    def _flush(self, where: str) -> bool:
        """Send the backlog (only the points the run does not show yet). True if sent."""
        try:
            with _http(_LIVE):
                pending = sorted(self._backlog.items())
                if not pending:
                    return True
                held = {k: self._points(k) for k in sorted({k for _, m in pending for k in m})}
                rows = [(s, {k: v for k, v in m.items() if not _shows(held[k], k, s, v)}) for s, m in pending]
                _log_rows(self.client, self.run_id, rows)
            for s, m in rows:
                for k, v in m.items():
                    held[k][s] = mlflow_values({k: v})[k]
            n = sum(len(m) for _, m in rows)
            self.stats["sent"] += n
            self._backlog.clear()
            if self._down_at is not None:
                print(f"[marpipe] MLflow at {self.uri} answers again ({where}): live logging resumed, "
                      f"{n} points sent, {time.monotonic() - self._down_at:.0f} s after it stopped answering",
                      file=sys.stderr)
                self._down_at = None
            return True
        except Exception as e:
            self._fail(where, e)
            return False

    def _fail(self, where: str, e: Exception) -> None:
        self.active, self._last_try = False, time.monotonic()
        self.stats["failures"] += 1
        self.created, self._held = False, {}    # a timed-out request may have landed: ask the run again
        if self._down_at is None:               # one message per outage
            self._down_at = self._last_try
            msg = str(e).splitlines()[0][:300] if str(e) else ""
            print(f"[marpipe] MLflow at {self.uri} failed {where} ({type(e).__name__}: {msg}); training goes "
                  f"on, metrics stay in the JSONL file; live logging retries every {self.retry_every:g} s "
                  f"(`marpipe mlflow-sync` sends whatever is missed)", file=sys.stderr)

    def _trim_backlog(self) -> None:
        n = sum(len(m) for m in self._backlog.values())
        while n > BACKLOG_MAX_POINTS and self._backlog:
            dropped = self._backlog.pop(min(self._backlog))
            n -= len(dropped)
            self.stats["dropped"] += len(dropped)

    def _points(self, key: str) -> dict[int, float]:
        if key not in self._held:
            self._held[key] = {} if self.created else held_points(self.client, self.run_id, key)
        return self._held[key]


class Terminated(BaseException):
    """SIGTERM turned into an exception inside :func:`run_status`, so the run can end as KILLED."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextmanager
def run_status(run: MLflowRun | None):
    """End ``run`` with its real status: FINISHED when the block completes, FAILED on an exception,
    KILLED on Ctrl-C or SIGTERM (``scancel``). Inside the block SIGTERM raises :class:`Terminated`
    (main thread only); after the run is ended the process dies of the signal as it would have
    (exit status 128+15), so SLURM and Snakemake see the exit they would see without the handler. ``None`` (ranks > 0),
    or a run without a tracking URI: the block runs unchanged."""
    if run is None or not run.uri:
        yield
        return
    run.training = True
    if run.active and not run.created:
        try:
            with _http(_LIVE):
                _mark_running(run.client, run.run_id)
        except Exception as e:
            run._fail("marking the run RUNNING", e)

    def on_sigterm(signum, frame):
        raise Terminated(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None

    def restore():
        if main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    try:
        yield
    except BaseException as e:
        if isinstance(e, Terminated):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second SIGTERM must not cut the ending short
            run.end("KILLED")
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sys.stdout.flush(), sys.stderr.flush()
            os.kill(os.getpid(), e.signum)                  # die of the signal, as without this handler
            raise
        restore()
        if isinstance(e, KeyboardInterrupt):
            run.end("KILLED")
        elif isinstance(e, SystemExit) and e.code in (0, None):
            run.end("FINISHED")
        else:
            run.end("FAILED")
        raise
    else:
        restore()
        run.end("FINISHED")


def _mark_running(client, run_id) -> None:
    """A run continued by a new attempt (resume, longer ``steps``) is RUNNING again."""
    if client.get_run(run_id).info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")


def held_points(client, run_id, key) -> dict[int, float]:
    """``{step: value}`` as the run shows ``key``: at a step with several points, the newest."""
    held: dict[int, float] = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
        held[m.step] = m.value
    return held


def held_points_of(client, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[int, float]]:
    """:func:`held_points` of many ``(run id, metric)`` pairs: one history request each (~50 ms at
    the pipeline's server; a study's sync asks for ~1,000), 4 at a time."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(pairs, pool.map(lambda pair: held_points(client, *pair), pairs)))


def evaluation_scores(experiment: str, lineage: dict[str, str], suites: Sequence[str],
                      tracking_uri: str | None = None) -> list[dict]:
    """The evaluate stage's scores as MLflow holds them: a score file's fields (``model``, ``row``,
    ``suite``, ``scores``, ``checkpoint``, ...) per run and suite, from the run's tags and its
    ``eval.{suite}.{column}`` metrics at its ``checkpoint_step`` (each the newest point there,
    :func:`held_points`). ``lineage``: run key -> ``train_hash`` of the rows to read; a run with another
    key or hash is passed over. Where one key has several runs, the most recently started one that
    holds the suite's metrics wins. No per-image values: MLflow holds only the means."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"MLflow experiment {experiment!r} not found at {client.tracking_uri}: "
                          f"run the evaluate stage first, or read the score files instead")
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], filter_string="tags.`marpipe.run_key` != ''",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    runs.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id), reverse=True)
    chosen, seen = [], set()
    for run in runs:
        tags = run.data.tags
        row_key = tags.get("marpipe.run_key")
        if row_key not in lineage or tags.get("train_hash", "") != lineage[row_key]:
            continue
        for suite in suites:
            keys = [k for k in run.data.metrics if k.startswith(f"eval.{suite}.")]
            if keys and (row_key, suite) not in seen:
                seen.add((row_key, suite))
                chosen.append((run, suite, keys))
    points = held_points_of(client, [(run.info.run_id, k) for run, _, keys in chosen for k in keys])
    scores = []
    for run, suite, keys in chosen:
        tags, prefix = run.data.tags, f"eval.{suite}."
        step = int(tags.get("checkpoint_step") or 0)
        scores.append({
            "model": tags["model"], "label": tags.get("label"), "row": tags["row"],
            "reward": tags.get("reward") or None, "variant": tags.get("variant"), "suite": suite,
            "seed": tags.get("seed") or None,
            "scores": {k[len(prefix):]: points[run.info.run_id, k][step] for k in keys
                       if step in points[run.info.run_id, k]},
            "world": tags.get("world") or None,
            "checkpoint": {"rule": tags.get("checkpoint_rule"), "step": tags.get("checkpoint_step")},
        })
    return scores


def _shows(held: dict[int, float], key: str, step: int, value) -> bool:
    """Whether ``held`` (:func:`held_points` of ``key``) shows ``value`` at ``step`` as MLflow
    stores it (a non-finite value as NaN, see :func:`mlflow_values`). A wall time (``time_*``)
    differs in every attempt: any point at the step counts (the first attempt's stays)."""
    if step not in held:
        return False
    if key.startswith("time_"):
        return True
    value, shown = float(value), held[step]
    return shown == value or (math.isnan(shown) and not math.isfinite(value))


def _open_run(uri, experiment, run_key, params, tags):
    """``(client, run_id, created)``: the newest run of ``experiment`` tagged ``marpipe.run_key =
    run_key`` (and ``train_hash`` when ``tags`` has one), or a new one with that name and tags. The
    experiment is created, or re-tagged, with ``mlflow.experimentKind = custom_model_development``
    when it lacks a model-training kind, so the MLflow UI opens it on its runs."""
    import mlflow
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = _create_experiment(client, experiment)
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND_TAG) not in _TRAINING_KINDS:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
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
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except Exception:  # created concurrently by another job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        if exp.tags.get(EXPERIMENT_KIND_TAG) not in _TRAINING_KINDS:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return exp.experiment_id


def _log_batches(client, run_id, metrics=(), params=(), tags=()):
    """``log_batch`` within MLflow's limits (1000 metrics, 100 params, 100 tags per call):
    one HTTP request per chunk instead of one per value."""
    for kind, items, size in (("metrics", list(metrics), 1000), ("params", list(params), 100),
                              ("tags", list(tags), 100)):
        for i in range(0, len(items), size):
            client.log_batch(run_id, **{kind: items[i:i + size]})


def _log_metrics(client, run_id, step, metrics):
    _log_rows(client, run_id, [(step, metrics)])


#: the marker metric of a non-finite value: its own name, so no reader of ``eval.*`` takes it for a column
NONFINITE_PREFIX = "nonfinite."


def mlflow_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row as MLflow gets them: finite values as they are; a NaN/+-inf value
    as NaN plus ``nonfinite.<name>`` = 1 (+inf), -1 (-inf) or 0 (NaN). Non-numbers are dropped."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(v, (int, float)):
            continue
        v = float(v)
        if math.isfinite(v):
            out[k] = v
        else:
            out[k] = math.nan
            out[NONFINITE_PREFIX + k] = 0.0 if math.isnan(v) else math.copysign(1.0, v)
    return out


def _log_rows(client, run_id, rows):
    """Metrics of many steps, ``[(step, {name: value})]``, in as few requests as possible (non-finite
    values as :func:`mlflow_values` sends them)."""
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    _log_batches(client, run_id, metrics=[Metric(k, v, now, step) for step, metrics in rows
                                          for k, v in mlflow_values(metrics).items()])


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
                   tracking_uri: str | None = None, finished: bool = False,
                   end_time: int | None = None) -> str:
    """Replay a metrics JSONL file into MLflow; only the points the run does not show are sent
    (a value that differs from the run's goes out again and becomes its newest point). Calls run
    with 3 retries, backoff 1 and a 30 s timeout unless the user exported other values. Returns the run id.

    ``finished``: the training is known to have finished (its ``summary.json`` exists); a run
    MLflow still shows otherwise (RUNNING, or KILLED/FAILED by an earlier attempt because the
    server was away at the end of the last one) is ended FINISHED at ``end_time`` (ms; default now)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RuntimeError("no MLflow tracking URI: set MLFLOW_TRACKING_URI or config mlflow.tracking_uri")
    with _http(_SYNC, override=False):
        client, run_id, created = _open_run(uri, experiment, run_key, params or {}, tags or {})
        rows = [(row["step"], {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))})
                for row in read_jsonl(jsonl)]
        if final_metrics:
            rows.append((0, {f"final.{k}": v for k, v in final_metrics.items()}))
        keys = sorted({k for _, metrics in rows for k in metrics})
        held = {} if created else {k: h for (_, k), h in held_points_of(client, [(run_id, k) for k in keys]).items()}
        _log_rows(client, run_id, [(step, {k: v for k, v in metrics.items() if not _shows(held.get(k, {}), k, step, v)})
                                   for step, metrics in rows])
        if finished:
            _finish(client, run_id, end_time, only_running=False)
    return run_id


def finish_run(run_key: str, experiment: str, tags: dict | None = None, tracking_uri: str | None = None,
               end_time: int | None = None) -> bool:
    """End the row's run (as :func:`_open_run` finds it; none is created) FINISHED at ``end_time``
    if it is still RUNNING: for runs that only evaluation opened (a base row). True if ended."""
    from mlflow.tracking import MlflowClient
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    with _http(_SYNC, override=False):
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return False
        query = f"tags.`marpipe.run_key` = '{run_key}'"
        if (tags or {}).get("train_hash"):
            query += f" and tags.`train_hash` = '{tags['train_hash']}'"
        found = client.search_runs([exp.experiment_id], filter_string=query, max_results=1,
                                   order_by=["attributes.start_time DESC"])
        return bool(found) and _finish(client, found[0].info.run_id, end_time, only_running=True)


def _finish(client, run_id, end_time, only_running: bool) -> bool:
    info = client.get_run(run_id).info
    if info.status == "FINISHED" or (only_running and info.status != "RUNNING"):
        return False
    end = max(int(end_time or time.time() * 1000), info.start_time or 0)   # never before it started
    client.set_terminated(run_id, "FINISHED", end_time=end)
    return True
