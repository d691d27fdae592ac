"""Byte-stable artifacts: identical runs, and a killed-and-resumed run, write
files with equal sha256; the global RNGs end in the same state; one metric row (and one
MLflow point) per step."""
import json
import random
import struct
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from marpipe.io import checkpoint as ckpt
from marpipe.io.files import canonical_json, load_images, save_images, sha256_file, write_json
from marpipe.io.tracking import MLflowRun, read_jsonl, sync_to_mlflow
from marpipe.rewards import build_reward
from marpipe.stages.train import write_summary
from marpipe.trainer import PromptItem, Trainer
from tests.helpers import PROMPTS, grpo, tiny

CFG = grpo(steps=5, save_every=2)          # checkpoints at steps 2, 4 and 5 (the last)
TIMES = ("time_rollout", "time_reward", "time_loss", "time_optim")


# --- canonical JSON -----------------------------------------------------------------------------
def test_write_json_is_canonical(tmp_path):
    a = {"b": [1, 0.1, 1 / 3, 1e-08, -0.0, True, None], "a": {"y": "é", "x": float("inf")}}
    b = {"a": {"x": float("inf"), "y": "é"}, "b": [1, 0.1, 1 / 3, 1e-08, -0.0, True, None]}
    write_json(tmp_path / "a.json", a)
    write_json(tmp_path / "b.json", b)
    text = (tmp_path / "a.json").read_bytes()
    assert text == (tmp_path / "b.json").read_bytes()
    assert text == (b'{\n  "a": {\n    "x": Infinity,\n    "y": "\\u00e9"\n  },\n  "b": [\n    1,\n    0.1,\n'
                    b'    0.3333333333333333,\n    1e-08,\n    -0.0,\n    true,\n    null\n  ]\n}\n')
    assert json.loads(text) == a                                   # floats round-trip (repr)
    assert canonical_json(b) == '{"a":{"x":Infinity,"y":"\\u00e9"},"b":[1,0.1,0.3333333333333333,1e-08,-0.0,true,null]}'
    for bad in (torch.tensor(1.0), np.float32(1.0), {1, 2}):      # no ad hoc forms of non-JSON data
        with pytest.raises(TypeError):
            write_json(tmp_path / "bad.json", {"x": bad})


# --- safetensors ----------------------------------------------------------------------------------
def _tensors():
    return {"model.b": torch.arange(6, dtype=torch.float32).reshape(3, 2) / 7, "model.a": torch.arange(5.0),
            "rng.torch": torch.arange(64, dtype=torch.uint8), "optim.0.step": torch.tensor(3.0),
            "model.h": torch.arange(3).bfloat16(), "ids": torch.arange(4), "flag": torch.tensor([True, False]),
            "empty": torch.zeros(0)}


META = {"step": "3", "optimizer": '{"param_groups":[]}', "meta": '{"config":{"lr":0.001}}', "zeta": "é", "alpha": "1"}

WRITE_IN_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.io.test_checkpoint_bytes import META, _tensors
from marpipe.io.checkpoint import write_safetensors
write_safetensors(sys.argv[1], _tensors(), META)
"""


def test_safetensors_files_are_byte_stable_and_readable(tmp_path):
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[2])
    p1 = ckpt.write_safetensors(tmp_path / "1.safetensors", _tensors(), META)
    shuffled = dict(reversed(list(_tensors().items())))
    p2 = ckpt.write_safetensors(tmp_path / "2.safetensors", shuffled, dict(reversed(list(META.items()))))
    subprocess.run([sys.executable, "-c", WRITE_IN_CHILD.format(root=root), str(tmp_path / "3.safetensors")],
                   check=True, cwd=root)                       # another process: another hash seed in Rust
    assert p1.read_bytes() == p2.read_bytes() == (tmp_path / "3.safetensors").read_bytes()
    n = struct.unpack("<Q", p1.read_bytes()[:8])[0]
    header = json.loads(p1.read_bytes()[8:8 + n])
    assert list(header)[0] == "__metadata__" and list(header["__metadata__"]) == sorted(META)
    with safe_open(str(p1), "pt") as f:
        assert f.metadata() == META
    back = load_file(str(p1))
    assert set(back) == set(_tensors()) and all(torch.equal(back[k], v) for k, v in _tensors().items())
    # without metadata the bytes are safetensors' own
    assert ckpt.write_safetensors(tmp_path / "4.safetensors", _tensors()).read_bytes() == save(_tensors())
    assert not list(tmp_path.glob(".*tmp*"))                    # no temporary file left behind


def test_image_bundles_carry_no_clock(tmp_path, monkeypatch):
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    args = (images, ["a", "b"], [{"k": 1}, {}], [0, 1], {"z": 1, "a": "x"})
    monkeypatch.setattr(time, "time", lambda: 1.0e9)
    save_images(tmp_path / "1.npz", *args)
    monkeypatch.setattr(time, "time", lambda: 1.7e9)           # a zip entry would carry this date
    save_images(tmp_path / "2.npz", *args)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    back = load_images(tmp_path / "1.npz")
    assert back["prompts"] == ["a", "b"] and back["info"] == {"a": "x", "z": 1} and back["prompt_index"] == [0, 1]


# --- training runs --------------------------------------------------------------------------------
class LazyReward:
    """``redness``, built on its first call with draws from the global RNGs -- like a scorer that
    loads its network lazily. A resumed process builds it again, at a later step than the
    uninterrupted one did; ``kill_at`` raises KeyboardInterrupt in that call (the job is killed)."""

    def __init__(self, kill_at=None):
        self.inner, self.calls, self.kill_at = None, 0, kill_at

    def __call__(self, images, prompts, metadata):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        if self.inner is None:
            torch.nn.Linear(16, 16)
            np.random.rand(3)
            random.random()
            self.inner = build_reward("redness")
        return self.inner(images, prompts, metadata)


def rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def same_rng(a, b):
    (ta, na, ra), (tb, nb, rb) = a, b
    return (torch.equal(ta, tb) and na[0] == nb[0] and np.array_equal(na[1], nb[1]) and na[2:] == nb[2:]
            and ra == rb)


def train(folder, kill_at=None, resume=False, mlflow=None):
    torch.manual_seed(1234 + (kill_at or 0) + 10 * resume)       # each "process" starts somewhere else
    t = Trainer(tiny(), CFG, [PromptItem(p, {}) for p in PROMPTS], LazyReward(kill_at), folder,
                progress=False, mlflow=mlflow)
    torch.manual_seed(99 + 7 * resume)
    t.train(resume=resume)
    return rng_states()


def checkpoint_shas(folder):
    return {p.name: sha256_file(p) for _, p in ckpt.list_checkpoints(folder / "checkpoints")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A and B uninterrupted; C killed in step 4 (checkpoint at 2, steps 1-3 logged), then resumed
    by a fresh Trainer on the same folder. C logs to a local MLflow store."""
    root = tmp_path_factory.mktemp("runs")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = {"root": root, "uri": uri, "rng": {}}
    out["rng"]["A"] = train(root / "A")
    out["rng"]["B"] = train(root / "B")
    with pytest.raises(KeyboardInterrupt):
        train(root / "C", kill_at=4, mlflow=MLflowRun("tiny/redness-sim", "bytes", tracking_uri=uri))
    out["killed"] = {"rows": [r["step"] for r in read_jsonl(root / "C" / "metrics.jsonl")],
                     "checkpoints": sorted(checkpoint_shas(root / "C"))}
    out["rng"]["C"] = train(root / "C", resume=True,
                            mlflow=MLflowRun("tiny/redness-sim", "bytes", tracking_uri=uri))
    for name in "ABC":
        write_summary(root / name, "tiny-nova", CFG)
    return out


def test_two_uninterrupted_runs_write_identical_bytes(runs):
    a, b = runs["root"] / "A", runs["root"] / "B"
    shas = checkpoint_shas(a)
    assert sorted(shas) == ["step-000002.safetensors", "step-000004.safetensors", "step-000005.safetensors"]
    assert shas == checkpoint_shas(b)
    assert sha256_file(a / "summary.json") == sha256_file(b / "summary.json")
    summary = json.loads((a / "summary.json").read_text())
    assert summary["final_checkpoint"] == "checkpoints/step-000005.safetensors"
    assert summary["final_checkpoint_sha256"] == shas["step-000005.safetensors"]
    assert not {"seconds", "resumed_from", "tags"} & set(summary)
    assert same_rng(runs["rng"]["A"], runs["rng"]["B"])


def test_killed_and_resumed_run_ends_byte_identical_with_one_row_per_step(runs):
    a, c = runs["root"] / "A", runs["root"] / "C"
    assert runs["killed"] == {"rows": [1, 2, 3], "checkpoints": ["step-000002.safetensors"]}
    assert checkpoint_shas(c) == checkpoint_shas(a)                      # every checkpoint, the last included
    assert sha256_file(c / "summary.json") == sha256_file(a / "summary.json")
    assert same_rng(runs["rng"]["C"], runs["rng"]["A"])                  # torch, numpy, random
    saved = {n: load_file(str(d / "checkpoints" / "step-000005.safetensors"))["rng.torch"] for n, d in (("a", a), ("c", c))}
    assert torch.equal(saved["a"], saved["c"])
    rows_a, rows_c = read_jsonl(a / "metrics.jsonl"), read_jsonl(c / "metrics.jsonl")
    assert [r["step"] for r in rows_c] == [1, 2, 3, 4, 5]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMES} for r in rows]
    assert strip(rows_c) == strip(rows_a)


def test_resumed_run_has_one_mlflow_point_per_step(runs):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=runs["uri"])
    exp = client.get_experiment_by_name("bytes")
    found = client.search_runs([exp.experiment_id])
    assert len(found) == 1
    rows = read_jsonl(runs["root"] / "C" / "metrics.jsonl")
    for key in ("loss", "reward_mean", "kl", "time_rollout"):
        history = client.get_metric_history(found[0].info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5], key
    loss = {m.step: m.value for m in client.get_metric_history(found[0].info.run_id, "loss")}
    assert loss == {r["step"]: r["loss"] for r in rows}
    # replaying the JSONL later (``marpipe mlflow-sync``), twice, adds nothing
    for _ in range(2):
        assert sync_to_mlflow(runs["root"] / "C" / "metrics.jsonl", "tiny/redness-sim", "bytes",
                              tracking_uri=runs["uri"]) == found[0].info.run_id
    assert sorted(m.step for m in client.get_metric_history(found[0].info.run_id, "kl")) == [1, 2, 3, 4, 5]


def test_a_row_continues_its_mlflow_run_only_with_the_same_training_config(runs):
    # the module's store (a fresh one costs seconds of migrations), in an experiment of this call's own:
    # the runs it adds are seen by no other test, nor by this one run again in the same session
    uri, key, name = runs["uri"], "tiny/redness-grpo", f"lineage-{uuid.uuid4().hex}"
    first = MLflowRun(key, name, tags={"train_hash": "aaaa"}, tracking_uri=uri)
    first.log_step(1, {"loss": 1.0})
    again = MLflowRun(key, name, tags={"train_hash": "aaaa"}, tracking_uri=uri)   # another clone, same row
    assert (again.run_id, again.created) == (first.run_id, False)
    again.log_step(1, {"loss": 1.0})
    again.log_step(2, {"loss": 0.5})
    assert [m.step for m in again.client.get_metric_history(first.run_id, "loss")] == [1, 2]
    changed = MLflowRun(key, name, tags={"train_hash": "bbbb"}, tracking_uri=uri)  # config changed
    assert changed.created and changed.run_id != first.run_id


def test_selected_weights_and_selection_json_are_byte_identical(runs, tmp_path):
    from marpipe import experiment as E
    from marpipe.stages.select import select_checkpoint
    from tests.pipeline_config import shrunk_config
    exp = E.load(shrunk_config())                          # fixed_step hps: 4; best_of: grpo, fix_decoder
    for variant in ("sim", "grpo"):
        made = {}
        for name in "AC":
            w, j = tmp_path / f"{variant}-{name}.safetensors", tmp_path / f"{variant}-{name}.json"
            info = select_checkpoint(exp, "hps", variant, runs["root"] / name, w, j)
            made[name] = (sha256_file(w), sha256_file(j), info)
        assert made["A"][:2] == made["C"][:2], variant
        info = made["A"][2]
        assert info["checkpoint"] == f"checkpoints/step-{info['step']:06d}.safetensors"
        assert info["weights_sha256"] == made["A"][0]
        assert str(runs["root"]) not in (tmp_path / f"{variant}-A.json").read_text()


def test_a_score_record_sent_twice_is_one_point_per_checkpoint(tmp_path):
    """``log_scores`` (evaluate, and mlflow-sync's replay): the evaluated checkpoint's step keys each point."""
    from mlflow.tracking import MlflowClient

    from marpipe import experiment as E
    from marpipe.stages.evaluate import log_scores
    from tests.pipeline_config import shrunk_config
    exp = E.load(shrunk_config())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = {"model": "tiny-nova", "row": "hps-sim", "reward": "hps", "variant": "sim", "suite": "preference",
              "scores": {"HPS": 21.5}, "checkpoint": {"step": 12, "rule": "fixed"}}
    assert log_scores(exp, record, tracking_uri=uri) and log_scores(exp, record, tracking_uri=uri)
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name(exp.cfg["experiment"]).experiment_id])[0]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval.preference.HPS")] == [(12, 21.5)]
