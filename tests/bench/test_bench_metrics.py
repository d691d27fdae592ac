"""``marpipe bench metrics``: a row for every model, Table column and reward of the paper config,
tiny random-weight models on the CPU; the real-size configs built on the meta device (no memory)."""
import json
import tempfile
from pathlib import Path

import pytest
import torch

import testbed.metrics  # noqa: F401  (registers the tiny size)
from marpipe import experiment as E
from marpipe.bench import metrics as B
from marpipe.config import ConfigError

PAPER = Path(__file__).resolve().parents[2] / "config.yaml"


@pytest.fixture(scope="module")
def exp():
    return E.load(PAPER)


def config_rows(exp) -> set:
    """What the paper config names, read from its keys: every folder a scorer loads that is not a
    second folder of another model (a tokenizer, a processor, a backbone), every Table column and
    every training reward."""
    second = {(s, k) for (s, k), (_, part) in B.ROLE.items() if part != "weights_dir"}
    models = set()
    for scorer, spec in exp.cfg["scorers"].items():
        w = spec.get("weights")
        for kwarg, key in ({"weights_dir": w} if isinstance(w, str) else dict(w or {})).items():
            if (scorer, kwarg) not in second:
                models.add(("model", key))
    cols = {("evaluation", c) for c in exp.cfg["evaluation"]["preference"]["metrics"]}
    cols |= {("evaluation", c) for c in exp.cfg["evaluation"]["compbench"]["categories"]}
    return models | cols | {("reward", r) for r in exp.cfg["rewards"]}


@pytest.fixture(scope="module")
def tiny_rows(exp):
    return B.bench_metrics(config=exp, batch_size=2, repeats=1, print_table=False)


def test_a_row_for_every_metric_and_reward_of_the_paper_config(exp, tiny_rows):
    got = [(r["kind"], r["name"]) for r in tiny_rows]
    assert len(got) == len(set(got))
    assert set(got) == config_rows(exp)
    assert set(got) == set(B.expected_rows(exp))
    # the paper's metric models are among them (the paper config's keys for them)
    assert {("model", k) for k in ("hps", "imagereward", "pickscore", "aesthetic", "blip_vqa", "clip_b32",
                                   "git_vqa", "gdino", "depth")} <= set(got)
    assert {("evaluation", c) for c in ("HPS", "ImageReward", "PickScore", "Aesthetic", "Color", "Shape", "Texture",
                                        "2d-spatial", "3d-spatial", "Numeracy", "Complex")} <= set(got)
    # every scorer of the config runs in some row
    assert {s for s in exp.cfg["scorers"]} <= {r["scorer"].split()[0].split("/")[0] for r in tiny_rows}


def test_every_row_measures_speed_memory_and_finite_scores(tiny_rows):
    for r in tiny_rows:
        assert r["size"] == "tiny" and r["device"] == "cpu" and r["batch"] == 2, r
        assert r["images_per_s"] > 0 and r["ms_per_image"] > 0, r
        assert r["finite"], r
        assert r["load_mb"] is not None and r["peak_mb"] is not None, r     # Linux /proc
        if r["kind"] != "model" or r["name"] != "gdino":                     # a detector may find nothing
            assert r["n_scores"] >= 2 and r["score_min"] <= r["score_max"], r
    rows = {(r["kind"], r["name"]): r for r in tiny_rows}
    hps, col = rows["model", "hps"], rows["evaluation", "HPS"]
    assert col["score_max"] == pytest.approx(100 * hps["score_max"], rel=1e-3)   # the column's scale
    assert 0 <= rows["model", "depth"]["score_min"] <= rows["model", "depth"]["score_max"] <= 1


def test_table_names_every_row(tiny_rows):
    table = B.format_table(tiny_rows)
    lines = table.splitlines()
    assert lines[1].split()[:3] == ["kind", "name", "scorer"]
    for r in tiny_rows:
        assert any(line.split()[:2] == [r["kind"], r["name"]] for line in lines), r["name"]


def test_cli_json_subset(capsys):
    from marpipe.cli import main
    assert main(["bench", "metrics", "--size", "tiny", "--json", "--metrics", "model:clip_b32", "Numeracy",
                 "--batch-size", "2", "--repeats", "1", "--config", str(PAPER)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["name"]) for r in rows] == [("model", "clip_b32"), ("evaluation", "Numeracy")]
    assert all(r["finite"] and r["images_per_s"] > 0 for r in rows)


def test_a_scorer_without_a_bench_model_fails_loudly(exp):
    cfg = exp.to_json()
    cfg["scorers"]["newmetric"] = {"weights": "newmetric"}
    with pytest.raises(ConfigError, match="scorers.newmetric.weights.weights_dir"):
        B.expected_rows(E.Experiment(cfg))


def test_a_folder_serving_two_scorers_holds_the_files_of_both(exp):
    """HPS's architecture from the PickScore processor's repo (``config_dir``: laion's ViT-H-14 repo
    holds open_clip_config.json beside the processor files): one folder, built for both roles."""
    import inspect

    from marpipe.metrics.clip_metrics import HPSv21
    if "config_dir" not in inspect.signature(HPSv21.from_pretrained).parameters:
        pytest.skip("HPSv21.from_pretrained takes no config_dir")
    cfg = exp.to_json()
    cfg["scorers"]["hps"]["weights"] = {"weights_dir": "hps", "config_dir": "clip_h14_processor"}
    e = E.Experiment(cfg)
    assert ("model", "clip_h14_processor") not in B.expected_rows(e)
    rows = B.bench_metrics(config=e, names=["model:hps", "HPS", "PickScore"], batch_size=2, repeats=1,
                           print_table=False)
    assert [r["name"] for r in rows] == ["hps", "HPS", "PickScore"] and all(r["finite"] for r in rows)


def test_cli_names_an_unknown_row(capsys):
    from marpipe.cli import main
    assert main(["bench", "metrics", "--metrics", "model:nope", "--config", str(PAPER)]) == 2
    err = capsys.readouterr().err
    assert "no row 'model:nope'" in err and "evaluation:Complex" in err


# --- real sizes: published configs, random weights --------------------------------------------
#: parameters (millions) of the real-size builds. Published: open_clip's ViT-H-14 986.11, ViT-L-14
#: 427.62 (+ 0.93 the aesthetic MLP), ViT-B-32 151.28; PickScore is the same ViT-H/14 in transformers'
#: format, so its count must equal HPS's. The others: as built from :data:`REAL` (a regression check).
REAL_PARAMS_M = {"hps": 986.11, "pickscore": 986.11, "aesthetic": 428.54, "clip_b32": 151.28,
                 "imagereward": 446.21, "blip_vqa": 361.23, "git_vqa": 394.86, "detector": 172.25, "depth": 122.38}


def _params(metric) -> int:
    mods = [metric.model] + ([metric.mlp] if hasattr(metric, "mlp") else [])
    return sum(p.numel() for p in {id(p): p for m in mods for p in m.parameters()}.values())


def test_real_size_models_build_on_meta_through_the_loaders():
    """Inside :func:`real_loaders` each class's ``from_pretrained`` (what the reward factories call)
    builds the real architecture; on the meta device nothing is allocated."""
    original = {model: B._cls(model).__dict__["from_pretrained"] for model in B.CLASSES}
    with tempfile.TemporaryDirectory() as d:
        toks = B._Tokenizers(Path(d))
        with B.real_loaders(toks):
            for model in B.CLASSES:
                m = B._cls(model).from_pretrained("no/such/folder", device="meta")
                assert isinstance(m, B._cls(model))
                assert {p.device.type for p in m.model.parameters()} == {"meta"}, model
                assert _params(m) / 1e6 == pytest.approx(REAL_PARAMS_M[model], abs=0.01), model
    assert all(B._cls(model).__dict__["from_pretrained"] is f for model, f in original.items())   # restored


def test_real_size_config_numbers():
    """The numbers of :data:`REAL` against their sources (see its comment)."""
    v, t = B.real_config("imagereward")
    assert (v["hidden_size"], v["num_hidden_layers"], v["image_size"], t["hidden_size"]) == (1024, 24, 224, 768)
    pick, hps = B.real_config("pickscore"), B.real_config("hps")
    assert pick.vision_config.hidden_size == hps["vision_cfg"]["width"] == 1280
    assert pick.vision_config.num_hidden_layers == hps["vision_cfg"]["layers"] == 32
    assert pick.vision_config.patch_size == hps["vision_cfg"]["patch_size"] == 14
    assert pick.text_config.hidden_size == hps["text_cfg"]["width"] == 1024
    assert pick.text_config.num_hidden_layers == hps["text_cfg"]["layers"] == 24
    assert pick.projection_dim == hps["embed_dim"] == 1024
    assert B.real_config("aesthetic")["quick_gelu"] and B.real_config("clip_b32")["quick_gelu"]
    git = B.real_config("git_vqa")
    assert (git.vision_config.image_size, git.vision_config.patch_size, git.vision_config.hidden_size,
            git.num_hidden_layers) == (420, 14, 1024, 6)
    gd = B.real_config("detector")
    assert (gd.d_model, gd.num_queries, gd.encoder_layers, gd.decoder_layers, gd.backbone_config.embed_dim,
            list(gd.backbone_config.depths), gd.text_config.vocab_size) == (256, 900, 6, 6, 96, [2, 2, 6, 2], 30522)
    dpt = B.real_config("depth")
    assert dpt.is_hybrid and list(dpt.backbone_config.depths) == [3, 4, 9]
    assert list(dpt.neck_hidden_sizes) == [256, 512, 768, 768] and list(dpt.reassemble_factors) == [1, 1, 1, 0.5]
    blip = B.real_config("blip_vqa")
    assert (blip.vision_config.hidden_size, blip.vision_config.num_hidden_layers, blip.vision_config.image_size,
            blip.text_config.vocab_size) == (768, 12, 384, 30524)


def test_real_size_path_runs_on_cpu_for_the_smallest_model(exp, monkeypatch):
    """The real-size path end to end on the smallest real model (CLIP B/32, 151 M random weights): a
    model row, and a reward row through the reward factory and the replaced loader (HPS's ViT-H/14
    swapped for the B/32 to stay small)."""
    monkeypatch.setitem(B.REAL, "hps", B.REAL["clip_b32"])
    rows = B.bench_metrics(config=exp, size="real", names=["model:clip_b32", "reward:hps"], batch_size=1,
                           repeats=1, image_size=64, print_table=False)
    assert [(r["kind"], r["name"], r["size"]) for r in rows] == [("model", "clip_b32", "real"),
                                                                 ("reward", "hps", "real")]
    for r in rows:
        assert r["finite"] and r["load_mb"] > 151.28 * 4 * 0.9, r     # the fp32 weights are resident



def test_tiny_is_a_registered_size_and_without_it_one_clear_error(exp, monkeypatch):
    """The tiny folders are the test bed's: ``testbed.metrics`` registers them (this module
    imports it); without that registration the bench names the sizes it has and where tiny comes from."""
    from testbed import metrics as tiny
    assert B.SIZES["tiny"][0] == tiny.BENCH_BUILDERS
    assert set(tiny.BENCH_BUILDERS) == set(B.ROLE.values())      # a tiny folder for every model part
    monkeypatch.delitem(B.SIZES, "tiny")
    with pytest.raises(ConfigError, match=r"no size 'tiny'; sizes: real\. .*`python -m testbed\.metrics`"):
        B.bench_metrics(config=exp, print_table=False)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_size_every_row_on_cuda(exp):
    rows = B.bench_metrics(config=exp, size="real", device="cuda", repeats=2)
    assert {(r["kind"], r["name"]) for r in rows} == config_rows(exp)
    assert all(r["finite"] and r["peak_mb"] > 0 for r in rows)
