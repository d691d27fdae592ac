"""The scorer check (marpipe.metrics.scorer_check): the small world's CLIP passes its ranges and a
corrupted copy fails them, naming the scorer; the paper path runs clip-benchmark's dataset builder
and metrics on local stand-ins of its public sets (a retrieval webdataset, a SugarCrepe folder)."""
import copy
import json
from pathlib import Path

import pytest
import torch

from marpipe import experiment as E
from marpipe.metrics import scorer_check as S
from marpipe.world import learned
from tests.pipeline_config import ROOT

SMALL = E.load(ROOT / "config" / "small.yaml").cfg


@pytest.fixture(scope="module")
def world_resources(tmp_path_factory):
    """resources/metrics/world_scorers holding a world CLIP of small.yaml's size, trained briefly."""
    root = tmp_path_factory.mktemp("resources")
    clip, _ = learned.train_clip(200, seed=0, batch_size=32, pool_size=1000)
    learned.save_world_clip(clip, learned.world_clip_config(), root / "metrics" / "world_scorers" / "clip")
    return root


def corrupt(resources: Path, out: Path) -> Path:
    """A copy whose image tower's output projection is shuffled (what a mis-mapped state dict does)."""
    from safetensors.torch import load_file, save_file
    src = resources / "metrics" / "world_scorers" / "clip"
    dst = out / "metrics" / "world_scorers" / "clip"
    dst.mkdir(parents=True)
    (dst / "open_clip_config.json").write_text((src / "open_clip_config.json").read_text())
    sd = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    sd["visual.proj"] = sd["visual.proj"][torch.randperm(sd["visual.proj"].shape[0], generator=g)].contiguous()
    save_file(sd, str(dst / "model.safetensors"))
    return out


def test_the_world_clip_passes_and_a_corrupted_one_fails_naming_it(world_resources, tmp_path, capsys):
    rec = S.check_scorer(SMALL, "world_scorers", world_resources, device="cpu", out_json=tmp_path / "ok.json",
                         out_table=tmp_path / "ok.csv")
    assert rec["passed"] and json.loads((tmp_path / "ok.json").read_text())["passed"]
    assert (tmp_path / "ok.csv").read_text().count(",yes") == len(SMALL["scorer_check"]["checks"]["world_scorers"]["ranges"])
    bad = corrupt(world_resources, tmp_path / "bad")
    with pytest.raises(S.ScorerCheckError, match=r"scorer 'world_hps' \(weights 'world_scorers'\) failed its check"):
        S.check_scorer(SMALL, "world_scorers", bad, device="cpu")
    # the rule's command: exit 1 and the message, no traceback
    from marpipe.cli import main
    cfg = tmp_path / "small.yaml"
    cfg.write_text((ROOT / "config" / "small.yaml").read_text())
    assert main(["check-scorer", "world_scorers", "--config", str(cfg), "--resources", str(bad),
                 "--out", str(tmp_path / "b.json"), "--table", str(tmp_path / "b.csv")]) == 1
    assert "world_hps" in capsys.readouterr().err


def test_a_check_that_names_another_folder_than_its_scorer_reads_is_refused():
    cfg = copy.deepcopy(SMALL)
    cfg["scorer_check"]["checks"]["other"] = cfg["scorer_check"]["checks"]["world_scorers"]
    assert any("other" in e and "world_scorers" in e for e in S.config_errors(cfg))
    assert S.config_errors(SMALL) == []
    assert S.config_errors(E.load(ROOT / "config.yaml").cfg) == []


def test_every_clip_family_weights_of_the_paper_and_the_small_world_is_checked():
    paper = E.load(ROOT / "config.yaml").cfg
    assert set(paper["scorer_check"]["checks"]) == {"hps", "pickscore", "clip_l14", "clip_b32"}
    assert set(SMALL["scorer_check"]["checks"]) == {"world_scorers"}
    for spec in paper["scorer_check"]["checks"].values():
        assert "openclip_retrieval_results.csv" in spec["source"]


def _stand_ins(root: Path, n: int = 12):
    """A local retrieval webdataset (clip-benchmark's wds layout) and a SugarCrepe folder, from world renders."""
    import webdataset as wds
    data = S.world_benchmark(n, n, seed=7)
    (root / "wds" / "test").mkdir(parents=True)
    (root / "wds" / "test" / "nshards.txt").write_text("1")
    (root / "wds" / "dataset_type.txt").write_text("retrieval")
    with wds.TarWriter(str(root / "wds" / "test" / "0.tar")) as sink:
        for i, (img, caps) in enumerate(zip(*data["retrieval"])):
            sink.write({"__key__": f"{i:04d}", "png": img, "txt": "\n".join(caps)})
    (root / "sc" / "val2017").mkdir(parents=True)
    ann = {}
    for i, ((img, _), (cap, neg)) in enumerate(zip(*data["caption_selection"])):
        img.save(root / "sc" / "val2017" / f"{i}.png")
        ann[str(i)] = {"filename": f"{i}.png", "caption": cap, "negative_caption": neg}
    (root / "sc" / "replace_att.json").write_text(json.dumps(ann))
    return {"kind": "clip_benchmark", "batch_size": 5,
            "retrieval": {"dataset": "wds/flickr30k", "root": str(root / "wds")},
            "caption_selection": {"dataset": "sugar_crepe/replace_att", "root": str(root / "sc")}}


def test_the_paper_path_measures_each_real_loader_through_clip_benchmark(
        tmp_path, hps_dir, pickscore_dir, clip_h14_processor_dir, clip_l14_dir):
    bench = _stand_ins(tmp_path)
    for scorer, kwargs in [("hps", {"weights_dir": hps_dir}),
                           ("pickscore", {"weights_dir": pickscore_dir, "processor_dir": clip_h14_processor_dir}),
                           ("aesthetic", {"clip_dir": clip_l14_dir}), ("compbench", {"clip_dir": clip_l14_dir})]:
        m = S.measure(S.load_clip_under_test(scorer, kwargs), bench)
        assert set(m) >= {"retrieval.image_retrieval_recall@1", "retrieval.text_retrieval_recall@1",
                          "caption_selection.text_acc"}, scorer
        assert all(0 <= v <= 1 for v in m.values()), (scorer, m)
