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
