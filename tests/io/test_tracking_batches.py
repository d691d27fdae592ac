"""MLflow writes go out in log_batch chunks within MLflow's per-request limits."""
from marpipe.io import tracking


class RecordingClient:
    def __init__(self):
        self.calls = []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.calls.append({"metrics": len(metrics), "params": len(params), "tags": len(tags)})


def test_many_steps_go_out_in_chunks_of_at_most_1000_metrics():
    client = RecordingClient()
    rows = [(step, {"loss": 0.1 * step, "kl": 0.0, "note": "text is not a metric"}) for step in range(700)]
    tracking._log_rows(client, "run", rows)
    assert [c["metrics"] for c in client.calls] == [1000, 400]      # 1400 numbers, strings dropped


def test_params_and_tags_respect_the_100_per_request_limit():
    client = RecordingClient()
    tracking._log_batches(client, "run", params=list(range(250)), tags=list(range(3)))
    assert [(c["params"], c["tags"]) for c in client.calls] == [(100, 0), (100, 0), (50, 0), (0, 3)]


# --- non-finite values (a skipped step's loss is Infinity in metrics.jsonl) --------------------------
class MetricClient:
    """Records the Metric objects of each log_batch (what would go over the wire)."""

    def __init__(self):
        self.metrics = []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.metrics.extend(metrics)


def test_non_finite_values_go_to_mlflow_as_nan_with_a_marker_never_as_infinity():
    import math
    client = MetricClient()
    rows = [(1, {"loss": 0.5, "kl": 0.0}),
            (2, {"loss": float("inf"), "kl": float("-inf"), "grad_norm": float("nan"), "skipped": 1})]
    tracking._log_rows(client, "run", rows)
    got = {(m.key, m.step): m.value for m in client.metrics}
    assert not any(math.isinf(v) for v in got.values())
    assert got[("loss", 1)] == 0.5 and got[("kl", 1)] == 0.0 and got[("skipped", 2)] == 1.0
    assert all(math.isnan(got[(k, 2)]) for k in ("loss", "kl", "grad_norm"))
    assert {k: v for k, v in got.items() if k[0].startswith("nonfinite.")} == {
        ("nonfinite.loss", 2): 1.0, ("nonfinite.kl", 2): -1.0, ("nonfinite.grad_norm", 2): 0.0}
    assert not any(k.startswith("nonfinite.") for k, s in got if s == 1)      # finite steps: no marker


def test_sync_of_a_skipped_step_stores_nan_not_1e308_and_resends_nothing(tmp_path):
    """Through MLflow's own SQL store (which keeps +-inf as +-1.8e308): the metrics.jsonl a skipped
    step writes (``Infinity``/``NaN``) replays as NaN + marker, once."""
    import json
    import math

    from mlflow.tracking import MlflowClient
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text(json.dumps({"step": 1, "loss": 0.25, "grad_norm": 3.0}) + "\n"
                     + json.dumps({"step": 2, "loss": float("inf"), "grad_norm": float("nan")}) + "\n")
    assert "Infinity" in jsonl.read_text()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.sync_to_mlflow(jsonl, "m/row", "nonfinite", tracking_uri=uri)
    assert tracking.sync_to_mlflow(jsonl, "m/row", "nonfinite", tracking_uri=uri) == run_id    # idempotent
    client = MlflowClient(tracking_uri=uri)

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
    loss = history("loss")
    assert [s for s, _ in loss] == [1, 2] and loss[0][1] == 0.25 and math.isnan(loss[1][1])
    assert [s for s, _ in history("grad_norm")] == [1, 2] and math.isnan(history("grad_norm")[1][1])
    assert history("nonfinite.loss") == [(2, 1.0)] and history("nonfinite.grad_norm") == [(2, 0.0)]
    assert max(abs(v) for k in ("loss", "grad_norm") for _, v in history(k) if not math.isnan(v)) < 1e300


def test_a_rerun_with_other_values_is_what_mlflow_shows_after_live_logging_and_sync(tmp_path):
    """The same row trained again by changed code (same training config: the same MLflow run): the
    steps whose values moved are sent again, live and by the sync, and become the value MLflow shows
    at that step (the newest point); the steps that did not move are not sent twice."""
    import json
    import time

    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = {1: {"loss": 0.5, "kl": 0.0}, 2: {"loss": 0.25, "kl": 0.125}}
    second = {1: {"loss": 0.5, "kl": 0.0}, 2: {"loss": 0.3, "kl": 0.125}, 3: {"loss": 0.2, "kl": 0.5}}
    live = tracking.MLflowRun("m/row", "rerun", tracking_uri=uri)
    for step, metrics in first.items():
        live.log_step(step, metrics)
    time.sleep(0.01)                                     # the rerun's points are newer by the clock
    again = tracking.MLflowRun("m/row", "rerun", tracking_uri=uri)
    assert again.run_id == live.run_id and not again.created
    again.log_step(1, second[1]), again.log_step(2, second[2])      # live, up to step 2
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps({"step": s, **m}) + "\n" for s, m in second.items()))
    assert tracking.sync_to_mlflow(jsonl, "m/row", "rerun", tracking_uri=uri) == live.run_id   # and step 3
    client = MlflowClient(tracking_uri=uri)
    shown = {k: tracking.held_points(client, live.run_id, k) for k in ("loss", "kl")}
    assert shown == {k: {s: m[k] for s, m in second.items()} for k in ("loss", "kl")}
    steps = {k: sorted(m.step for m in client.get_metric_history(live.run_id, k)) for k in ("loss", "kl")}
    assert steps == {"loss": [1, 2, 2, 3], "kl": [1, 2, 3]}          # only loss at step 2 moved
    assert tracking.sync_to_mlflow(jsonl, "m/row", "rerun", tracking_uri=uri) == live.run_id
    assert sum(len(client.get_metric_history(live.run_id, k)) for k in ("loss", "kl")) == 7
