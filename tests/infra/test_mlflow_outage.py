"""MLflow outages and run status, against a real ``mlflow server``.

The server is the pipeline's own (``workflow/scripts/mlflow-server.sh``) with its state
(sqlite backend, port file) in a tmp folder, so a test can stop and restart it. What is
pinned here:

* a live logging call never blocks for long while the server is away or hung (MLflow's
  client alone retries a refused request for about 4 minutes);
* live logging resumes when the server is back and resends the steps it missed, one
  point per (metric, step); what a writer never sent, ``sync_to_mlflow`` sends, with no
  duplicates;
* the restarted server comes back on the same port (same URI);
* runs end FINISHED / FAILED / KILLED (SIGTERM, in a subprocess) with their end time;
  experiments are tagged as model training (the MLflow UI's runs view, not GenAI);
* ``marpipe mlflow-sync`` to an address nobody answers fails within seconds, naming it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.infra.conftest import REPO, unavailable

pytestmark = [pytest.mark.infra, pytest.mark.timeout(240)]

SCRIPT = REPO / "workflow" / "scripts" / "mlflow-server.sh"
KEYS = ("loss", "reward_mean", "kl")
MODEL_TRAINING = "custom_model_development"


def _mlflow_bin() -> str | None:
    for cand in (Path(sys.executable).with_name("mlflow"), REPO / ".venv" / "bin" / "mlflow"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow-server.sh up/down`` with its state in ``state``."""

    def __init__(self, state: Path, mlflow_bin: str):
        self.state = state
        self.env = {k: v for k, v in os.environ.items() if k not in ("MARPIPE_MLFLOW_PORT", "MLFLOW_TRACKING_URI")}
        self.env.update(MARPIPE_STATE=str(state), MLFLOW_BIN=mlflow_bin, MARPIPE_MLFLOW_WORKERS="1")

    def _script(self, cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), cmd], env=self.env, capture_output=True, text=True, timeout=150)

    def up(self) -> str:
        r = self._script("up")
        if r.returncode:
            unavailable(f"mlflow-server.sh up failed: {r.stderr.strip()[-800:]}")
        return r.stdout.strip()

    def down(self) -> None:
        self._script("down")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        import mlflow  # noqa: F401
    except ImportError:
        unavailable("mlflow is not installed (extra `pipeline`)")
    exe = _mlflow_bin()
    if exe is None:
        unavailable("no `mlflow` executable (the server binary): run `make install`")
    state = tmp_path_factory.mktemp("mlflow-state")
    (state / "mlflow").mkdir()
    # a recorded port, as a previous run of the pipeline leaves it: the server must come up on it
    (state / "mlflow" / "port").write_text(f"{_free_port()}\n")
    srv = Server(state, exe)
    yield srv
    srv.down()


def _row(step: int) -> dict:
    return {k: step + i / 10 for i, k in enumerate(KEYS)}


def _histories(client, run_id) -> dict[str, list[int]]:
    return {k: [m.step for m in client.get_metric_history(run_id, k)] for k in KEYS}


def _points(hist) -> int:
    return sum(len(v) for v in hist.values())


def _duplicates(hist) -> int:
    return sum(len(v) - len(set(v)) for v in hist.values())


def test_outage_blocks_no_call_resumes_live_and_sync_fills_the_rest(server, tmp_path):
    from mlflow.tracking import MlflowClient

    from marpipe.io.tracking import MetricsLog, MLflowRun, sync_to_mlflow

    uri = server.up()
    port = (server.state / "mlflow" / "port").read_text().strip()
    assert uri == f"http://127.0.0.1:{port}"                              # the recorded port was reused
    exp = f"outage-{uuid.uuid4().hex[:8]}"
    # A trains through the outage; B "dies" during it (its last steps are only in its JSONL)
    a = MLflowRun("m/a", exp, tracking_uri=uri, retry_every=1.0)
    b = MLflowRun("m/b", exp, tracking_uri=uri, retry_every=1.0)
    assert a.active and b.active
    logs = {"a": MetricsLog(tmp_path / "a.jsonl"), "b": MetricsLog(tmp_path / "b.jsonl")}
    runs = {"a": a, "b": b}
    longest = {"up": 0.0, "outage": 0.0}

    def step(name, s, phase):
        logs[name].append({"step": s, **_row(s)})                           # the source of truth first
        t = time.perf_counter()
        runs[name].log_step(s, _row(s))
        longest[phase] = max(longest[phase], time.perf_counter() - t)

    for s in range(1, 11):
        step("a", s, "up"), step("b", s, "up")
    server.down()
    for s in range(11, 31):                                                 # about 3 s without a server
        step("a", s, "outage")
        if s <= 20:
            step("b", s, "outage")
        time.sleep(0.15)
    assert not a.active and a._backlog                                     # paused, steps waiting
    assert server.up() == uri                                               # same port, same URI
    for s in range(31, 41):
        step("a", s, "up")
        time.sleep(0.15)
    assert a.active and not a._backlog                                      # resumed, backlog resent live

    client = MlflowClient(tracking_uri=uri)
    live = {n: _histories(client, r.run_id) for n, r in runs.items()}
    assert {k: sorted(v) for k, v in live["a"].items()} == {k: list(range(1, 41)) for k in KEYS}  # each step once
    assert sorted(set(live["b"]["loss"])) == list(range(1, 11))
    assert a.end("FINISHED")

    end_b = int(time.time() * 1000) - 1000
    synced = {n: sync_to_mlflow(tmp_path / f"{n}.jsonl", f"m/{n}", exp, tracking_uri=uri,
                                finished=True, end_time=end_b) for n in runs}
    assert synced == {n: r.run_id for n, r in runs.items()}
    after = {n: _histories(client, r.run_id) for n, r in runs.items()}
    for n, last in (("a", 40), ("b", 20)):
        for k in KEYS:
            assert sorted(after[n][k]) == list(range(1, last + 1)), (n, k)
    numbers = {
        "longest_call_s": round(max(longest.values()), 3),
        "longest_call_during_outage_s": round(longest["outage"], 3),
        "points_live": sum(_points(h) for h in live.values()),
        "points_synced": sum(_points(after[n]) - _points(live[n]) for n in runs),
        "duplicates": sum(_duplicates(h) for h in after.values()),
    }
    print(f"\n[outage] {numbers}")
    assert longest["outage"] < 5.0, numbers
    assert max(longest.values()) < 5.0, numbers
    assert numbers["points_live"] == (40 + 10) * len(KEYS)
    assert numbers["points_synced"] == 10 * len(KEYS)                      # B's steps 11-20
    assert numbers["duplicates"] == 0

    # both runs ended FINISHED with an end time: A by itself, B (still RUNNING) by the sync
    info = {n: client.get_run(r.run_id).info for n, r in runs.items()}
    assert {n: i.status for n, i in info.items()} == {"a": "FINISHED", "b": "FINISHED"}
    assert info["b"].end_time == max(end_b, info["b"].start_time)
    assert info["a"].end_time >= info["a"].start_time


def test_a_hung_server_blocks_a_call_only_for_the_live_timeout(tmp_path):
    """A server that accepts connections but never answers (a hung process, a full disk):
    opening the run and each retry give up after LIVE_TIMEOUT_S, the calls in between
    return at once."""
    pytest.importorskip("mlflow")
    from marpipe.io.tracking import LIVE_TIMEOUT_S, MLflowRun

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)                                                     # never accept()ed: no answer
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        t = time.perf_counter()
        run = MLflowRun("m/hung", "hung", tracking_uri=uri, retry_every=1.0)
        calls = [time.perf_counter() - t]
        assert not run.active
        for s in range(1, 25):
            t = time.perf_counter()
            run.log_step(s, _row(s))
            calls.append(time.perf_counter() - t)
            time.sleep(0.05)
    print(f"\n[hung] longest call {max(calls):.2f} s, {sum(c > 1 for c in calls)} calls waited on the server")
    assert max(calls) < LIVE_TIMEOUT_S + 2
    assert sum(c > 1 for c in calls) >= 2                                   # it did try again
    assert sorted(run._backlog) == list(range(1, 25))                       # nothing lost meanwhile


def _status(client, run_id):
    info = client.get_run(run_id).info
    return info.status, info.end_time, info.start_time


def test_runs_end_with_their_real_status(server):
    from mlflow.tracking import MlflowClient

    from marpipe.io.tracking import MLflowRun, run_status

    uri = server.up()
    client = MlflowClient(tracking_uri=uri)
    exp = f"status-{uuid.uuid4().hex[:8]}"

    ok = MLflowRun("m/ok", exp, tracking_uri=uri)
    with run_status(ok):
        ok.log_step(1, _row(1))
        assert _status(client, ok.run_id)[0] == "RUNNING"
    failed = MLflowRun("m/failed", exp, tracking_uri=uri)
    with pytest.raises(ValueError), run_status(failed):
        failed.log_step(1, _row(1))
        raise ValueError("a bug in step 2")
    interrupted = MLflowRun("m/ctrl-c", exp, tracking_uri=uri)
    with pytest.raises(KeyboardInterrupt), run_status(interrupted):
        raise KeyboardInterrupt
    now = int(time.time() * 1000)
    for run, want in ((ok, "FINISHED"), (failed, "FAILED"), (interrupted, "KILLED")):
        status, end, start = _status(client, run.run_id)
        assert status == want
        assert end is not None and start <= end <= now + 1000

    # an ended run continued by a new attempt (a resume) is RUNNING again, then FINISHED
    again = MLflowRun("m/ctrl-c", exp, tracking_uri=uri)
    assert again.run_id == interrupted.run_id and not again.created
    with run_status(again):
        assert _status(client, again.run_id)[0] == "RUNNING"
        again.log_step(2, _row(2))
    assert _status(client, again.run_id)[0] == "FINISHED"

    # the experiment opens on its runs: tagged model training (at creation and when missing or GenAI)
    assert client.get_experiment_by_name(exp).tags.get("mlflow.experimentKind") == MODEL_TRAINING
    for kind in (None, "genai_development"):
        name = f"old-{uuid.uuid4().hex[:8]}"
        exp_id = client.create_experiment(name, tags={"mlflow.experimentKind": kind} if kind else None)
        MLflowRun("m/x", name, tracking_uri=uri)
        assert client.get_experiment(exp_id).tags.get("mlflow.experimentKind") == MODEL_TRAINING, kind


CHILD = textwrap.dedent("""
    import sys, time
    from marpipe.io.tracking import MLflowRun, run_status
    run = MLflowRun("m/scancel", sys.argv[2], tracking_uri=sys.argv[1])
    with run_status(run):
        step = 0
        while True:
            step += 1
            run.log_step(step, {"loss": 1.0 / step})
            if step == 3:
                print(run.run_id, flush=True)
            time.sleep(0.05)
""")


def test_sigterm_ends_the_run_killed_and_the_process_dies_of_it(server):
    from mlflow.tracking import MlflowClient

    uri = server.up()
    exp = f"sigterm-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, uri, exp], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = child.stdout.readline().strip()
        assert run_id, child.stderr.read()
        t = time.perf_counter()
        child.send_signal(signal.SIGTERM)                                 # what scancel sends
        rc = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert rc == -signal.SIGTERM, child.stderr.read()                       # dies of the signal, as before
    client = MlflowClient(tracking_uri=uri)
    status, end, start = _status(client, run_id)
    assert status == "KILLED" and end is not None and end >= start
    assert len(client.get_metric_history(run_id, "loss")) >= 3
    print(f"\n[sigterm] the run ended KILLED; the process exited {time.perf_counter() - t:.2f} s after SIGTERM")


@pytest.mark.parametrize("kind", ["refused", "hung"])
def test_mlflow_sync_to_an_unreachable_address_fails_fast_with_one_message(kind, tmp_path, capsys):
    from marpipe import cli

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == "hung":
            sock.listen(8)                                                  # accepts, never answers
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"                   # "refused": bound, not listening
        t = time.perf_counter()
        rc = cli.main(["mlflow-sync", "--config", str(REPO / "config" / "small.yaml"), "--tracking-uri", uri,
                       "--results", str(tmp_path), "--out", str(tmp_path / "mlflow.json")])
        took = time.perf_counter() - t
    err = capsys.readouterr().err
    print(f"\n[mlflow-sync {kind}] rc {rc} after {took:.2f} s: {err.strip()}")
    assert rc == 2 and took < 10
    assert uri in err and "MLFLOW_TRACKING_URI" in err and "mlflow-server.sh up" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not (tmp_path / "mlflow.json").exists()
