"""Image bundles that fit: generate keeps uint8 batches as it goes and resumes from them, the
bundle is streamed from them, and readers read only the rows they use."""
from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from marpipe import experiment
from marpipe.io.files import (
    atomic_write_bytes,
    canonical_json,
    from_uint8,
    load_images,
    npz_bytes,
    open_images,
    save_images,
    to_uint8,
    write_bundle,
    write_prompt_set,
)
from marpipe.stages import evaluate as E
from tests.helpers import tiny

ROOT = Path(__file__).resolve().parents[2]
ROWS = [[3], [0, 1, 2], [5, 2, 2, 9], [11, 10], [], list(range(12))]


def _images(n: int = 12, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _old_bundle(path: Path, images: torch.Tensor, n_prompts: int) -> Path:
    """A bundle as written before: every member deflated."""
    per = len(images) // n_prompts
    arrays = {"images": to_uint8(images), "prompt_index": np.repeat(np.arange(n_prompts), per),
              "prompts": np.asarray(canonical_json([f"p{i}" for i in range(n_prompts)])),
              "metadata": np.asarray(canonical_json([{}] * n_prompts)), "info": np.asarray(canonical_json({"seed": 0}))}
    return atomic_write_bytes(path, npz_bytes(arrays))


def test_reader_returns_exactly_the_rows_of_np_load(tmp_path):
    p = save_images(tmp_path / "b.npz", _images(), ["a", "b", "c"], [{"k": 1}, {}, {}], [0] * 4 + [1] * 4 + [2] * 4,
                    {"seed": 0})
    whole = np.load(p)["images"]
    data = open_images(p)
    rows = data["images"]
    assert rows.stored and rows.shape == whole.shape and len(rows) == 12 and rows.dtype == np.uint8
    for idx in ROWS:
        assert np.array_equal(rows[idx], whole[idx]), idx
    assert np.array_equal(rows[2:9:3], whole[2:9:3]) and np.array_equal(rows[-1], whole[-1])
    assert np.array_equal(rows.memmap(), whole)
    with pytest.raises(IndexError):
        rows[[12]]
    full = load_images(p)
    assert {k: v for k, v in data.items() if k != "images"} == {k: v for k, v in full.items() if k != "images"}
    # the images member is stored, and is what np.save writes
    with zipfile.ZipFile(p) as z:
        assert z.getinfo("images.npy").compress_type == zipfile.ZIP_STORED
        buf = io.BytesIO()
        np.save(buf, whole)
        assert z.read("images.npy") == buf.getvalue()


def test_bundle_bytes_do_not_depend_on_the_chunks(tmp_path):
    images = to_uint8(_images())
    args = (["a", "b"], [{}, {}], [0] * 6 + [1] * 6, {"seed": 0})
    one = write_bundle(tmp_path / "one.npz", [images], images.shape, *args)
    three = write_bundle(tmp_path / "three.npz", [images[:5], images[5:6], images[6:]], images.shape, *args)
    assert one.read_bytes() == three.read_bytes()
    with pytest.raises(ValueError, match="11 images written, 12 expected"):
        write_bundle(tmp_path / "short.npz", [images[:11]], images.shape, *args)
    assert not (tmp_path / "short.npz").exists() and not list(tmp_path.glob(".*tmp*"))


def test_an_old_deflated_bundle_still_reads(tmp_path):
    images = _images()
    p = _old_bundle(tmp_path / "old.npz", images, 3)
    whole = np.load(p)["images"]
    rows = open_images(p)["images"]
    assert not rows.stored
    for idx in ROWS + ROWS[::-1]:                       # forward, then backward reads
        assert np.array_equal(rows[idx], whole[idx]), idx
    with pytest.raises(ValueError, match="compressed"):
        rows.memmap()
    rows.close()
    new = save_images(tmp_path / "new.npz", images, ["p0", "p1", "p2"], [{}] * 3, [0] * 4 + [1] * 4 + [2] * 4,
                      {"seed": 0})
    old, now = load_images(p), load_images(new)
    assert torch.equal(old.pop("images"), now.pop("images")) and old == now


def test_evaluate_scores_a_stored_and_an_old_bundle_alike(tmp_path, monkeypatch):
    exp = _small_exp(metrics={"Red": {"scorer": "redness", "scale": 10}})
    images = _images(12)
    new = save_images(tmp_path / "new.npz", images, ["p0", "p1", "p2"], [{}] * 3, [0] * 4 + [1] * 4 + [2] * 4,
                      {"seed": 0})
    old = _old_bundle(tmp_path / "old.npz", images, 3)
    monkeypatch.setattr(E, "log_scores", lambda *a, **k: False)
    seen = []
    monkeypatch.setattr(E, "from_uint8", lambda a: seen.append(len(a)) or from_uint8(a))
    a = E.evaluate(exp, new, "preference", tmp_path / "a.json", "tiny-nova", None, "base", resources=str(tmp_path))
    b = E.evaluate(exp, old, "preference", tmp_path / "b.json", "tiny-nova", None, "base", resources=str(tmp_path))
    assert a == b and a["n_images"] == 12
    assert seen == [5, 5, 2] * 2                          # converted to float one scorer batch at a time
    from marpipe.rewards import build_reward
    want = (build_reward("redness")(load_images(new)["images"], [], []) * 10).tolist()
    assert a["per_image"]["Red"]["value"] == want


# ------------------------------------------------------------------------------------------
# generate: batches kept as made, resumed, streamed into the bundle
# ------------------------------------------------------------------------------------------
def _small_exp(**preference) -> experiment.Experiment:
    cfg = copy.deepcopy(experiment.load(ROOT / "config" / "small.yaml").cfg)
    cfg["device"] = "cpu"
    cfg["evaluation"]["batch_size"] = 5
    cfg["evaluation"]["preference"].update(images_per_prompt=2, **preference)
    return experiment.Experiment(cfg)


N_PROMPTS = 7          # 2 prompts (4 images) a batch: 4 batches, the last one short


def _generate(exp, out: Path, prompt_dir: Path) -> Path:
    return E.generate(exp, "tiny-nova", "preference", out, prompt_dir, resources=str(out.parent / "resources"))


@pytest.fixture
def gen(tmp_path, monkeypatch):
    """generate on a tiny model; ``calls`` lists the first prompt id of each rollout, ``fail_at``
    makes the rollout of that call (counted from 0 since the last reset) raise."""
    exp = _small_exp()
    write_prompt_set(tmp_path / "prompts" / "preference.jsonl",
                     [{"prompt": f"a red circle {i}"} for i in range(N_PROMPTS)])
    monkeypatch.setattr(E, "load_base_model", lambda *a, **k: tiny())
    state = {"calls": [], "fail_at": None}
    real = E.rollout

    def rollout(*a, prompt_ids, **k):
        if len(state["calls"]) == state["fail_at"]:
            raise RuntimeError("killed")
        state["calls"].append(prompt_ids[0])
        return real(*a, prompt_ids=prompt_ids, **k)

    monkeypatch.setattr(E, "rollout", rollout)
    return exp, tmp_path / "prompts", state


def test_generate_writes_a_bundle_of_all_the_images(tmp_path, gen):
    exp, prompts, state = gen
    out = _generate(exp, tmp_path / "a" / "preference.npz", prompts)
    assert state["calls"] == [0, 2, 4, 6]
    data = open_images(out)
    assert data["images"].shape == (2 * N_PROMPTS, 16, 16, 3)
    assert data["prompt_index"] == [i for i in range(N_PROMPTS) for _ in range(2)]
    assert data["prompts"] == [f"a red circle {i}" for i in range(N_PROMPTS)]
    assert data["info"]["images_per_prompt"] == 2
    assert not Path(f"{out}.parts").exists() and not list(out.parent.glob(".*tmp*"))
    # the images are the rollout's, batch by batch, as uint8
    from marpipe.rollout import RolloutPlan, rollout
    with torch.no_grad():
        first = rollout(tiny().eval(), ["a red circle 0", "a red circle 1"], 2,
                        RolloutPlan((), torch.zeros(0, 0, dtype=torch.long), 1), seed=exp.cfg["evaluation"]["seed"],
                        step=0, prompt_ids=[0, 1], device="cpu").images
    assert np.array_equal(data["images"][0:4], to_uint8(first))


def test_a_killed_generate_resumes_to_the_same_bytes(tmp_path, gen):
    exp, prompts, state = gen
    whole = _generate(exp, tmp_path / "a" / "preference.npz", prompts)
    state.update(calls=[], fail_at=2)
    out = tmp_path / "b" / "preference.npz"
    with pytest.raises(RuntimeError, match="killed"):
        _generate(exp, out, prompts)
    parts = Path(f"{out}.parts")
    assert not out.exists() and sorted(p.name for p in parts.glob("0*.npy")) == ["000000000.npy", "000000002.npy"]
    (parts / "000000000.npy").unlink()                  # this batch is made again, after a later one
    state.update(calls=[], fail_at=None)
    _generate(exp, out, prompts)
    assert state["calls"] == [0, 4, 6]                   # only the batches not kept
    assert out.read_bytes() == whole.read_bytes()
    assert not parts.exists()


def test_generate_drops_the_batches_of_other_inputs(tmp_path, gen):
    exp, prompts, state = gen
    whole = _generate(exp, tmp_path / "a" / "preference.npz", prompts)
    out = tmp_path / "b" / "preference.npz"
    other = _small_exp()
    other.cfg["evaluation"]["seed"] = 1
    state.update(calls=[], fail_at=1)
    with pytest.raises(RuntimeError, match="killed"):
        _generate(other, out, prompts)
    assert (Path(f"{out}.parts") / "000000000.npy").exists()      # batch 0 kept, of seed 1
    state.update(calls=[], fail_at=None)
    _generate(exp, out, prompts)
    assert state["calls"] == [0, 2, 4, 6]
    assert out.read_bytes() == whole.read_bytes()


# ------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------
def test_peak_memory_does_not_grow_with_the_images():
    """generate and evaluate at 256 and 2,048 64x64 images (fresh processes): the peaks differ by
    less than 24 MiB; holding the images as float32 costs 84 MiB more at 2,048 (twice that while
    concatenating them)."""
    from marpipe.bench.memory import bench_memory
    report = bench_memory(images=256, factor=8, image_size=64, config=str(ROOT / "config" / "small.yaml"))
    for stage, r in report["stages"].items():
        assert r["growth_mb"] < 24, (stage, r)
