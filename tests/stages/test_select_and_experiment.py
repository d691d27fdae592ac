"""Checkpoint selection and the experiment config's resolution."""
import json

import pytest
import torch

from marpipe import experiment as E
from marpipe.config import ConfigError
from marpipe.io.checkpoint import save_checkpoint
from marpipe.stages.select import choose_step, select_checkpoint, windowed_reward
from tests.pipeline_config import ROOT, shrunk_config


def write_run(run, rewards, save_every):
    model = torch.nn.Linear(2, 2)
    (run / "checkpoints").mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        for step, r in enumerate(rewards, start=1):
            f.write(json.dumps({"step": step, "reward_mean": r}) + "\n")
            if step % save_every == 0:
                with torch.no_grad():
                    model.weight.fill_(step)
                save_checkpoint(run / "checkpoints", step, model, None)


def test_baselines_take_the_best_checkpoint_by_windowed_training_reward(tmp_path):
    exp = E.load(shrunk_config())                     # best_of: grpo, fix_decoder; window 2
    write_run(tmp_path, [0.1, 0.2, 0.9, 0.8, 0.3, 0.2], save_every=2)
    step, rule, scores = choose_step(exp, "hps", "grpo", tmp_path)
    assert (step, rule) == (4, "best")
    assert scores["4"] == pytest.approx(0.85) and scores["2"] == pytest.approx(0.15)
    info = select_checkpoint(exp, "hps", "grpo", tmp_path, tmp_path / "w.safetensors", tmp_path / "w.json")
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "w.safetensors"))["weight"].unique().tolist() == [4.0]
    assert json.loads((tmp_path / "w.json").read_text())["rule"] == "best" == info["rule"]


def test_ours_takes_the_step_fixed_in_advance(tmp_path):
    exp = E.load(shrunk_config())                     # fixed_step: 4
    write_run(tmp_path, [0.1, 0.2, 0.9, 0.8, 0.3, 0.2], save_every=2)
    assert choose_step(exp, "hps", "sim", tmp_path)[:2] == (4, "fixed")
    cfg = E.validate(shrunk_config())                 # the config check refuses fixed_step 5 (tests/stages/
    cfg["selection"]["fixed_step"]["hps"] = 5         # test_config_validation.py); selection still names it
    with pytest.raises(FileNotFoundError, match="no checkpoint at the fixed step 5"):
        choose_step(E.Experiment(cfg), "hps", "sim", tmp_path)


def write_pruned_run(run, rewards, save_every, keep):
    """``write_run`` as the trainer writes it: metrics row, save, then prune."""
    from marpipe.io.checkpoint import prune
    model = torch.nn.Linear(2, 2)
    (run / "checkpoints").mkdir(parents=True)
    for step, r in enumerate(rewards, start=1):
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "reward_mean": r}) + "\n")
        if step % save_every == 0:
            with torch.no_grad():
                model.weight.fill_(step)
            save_checkpoint(run / "checkpoints", step, model, None)
            if keep is not None:
                prune(run / "checkpoints", keep)


@pytest.mark.parametrize("variant,kept", [("grpo", [4, 12]), ("sim", [4, 12])])
def test_a_run_keeps_the_newest_checkpoint_and_the_one_its_rule_picks(tmp_path, variant, kept):
    from marpipe.io.checkpoint import list_checkpoints
    from marpipe.stages.select import keep_for_selection
    exp = E.load(shrunk_config())                     # best_of: grpo, fix_decoder; window 2; fixed_step 4
    rewards = [0.1, 0.2, 0.9, 0.8, 0.3, 0.2, 0.1, 0.5, 0.4, 0.3, 0.2, 0.1]
    write_pruned_run(tmp_path / "all", rewards, 2, None)
    write_pruned_run(tmp_path / "pruned", rewards, 2, keep_for_selection(exp, "hps", variant, tmp_path / "pruned"))
    assert [s for s, _ in list_checkpoints(tmp_path / "pruned" / "checkpoints")] == kept
    assert choose_step(exp, "hps", variant, tmp_path / "all")[0] == choose_step(exp, "hps", variant,
                                                                                tmp_path / "pruned")[0] == 4
    cfg = E.validate(shrunk_config())
    cfg["selection"]["keep_all_checkpoints"] = True
    assert keep_for_selection(E.Experiment(cfg), "hps", variant, tmp_path) is None


def test_windowed_reward():
    rows = [{"step": s, "reward_mean": float(s)} for s in range(1, 7)]
    assert windowed_reward(rows, 4, 2) == 3.5
    assert windowed_reward(rows, 4, 10) == 2.5


def test_variant_configs_resolve_from_config_model_and_variant():
    exp = E.load(ROOT / "config.yaml")
    nova_sim, nova_grpo = exp.train_config("nova", "hps", "sim"), exp.train_config("nova", "hps", "grpo")
    assert (nova_sim.fix_decoder, nova_sim.mte, nova_sim.sim, nova_sim.S) == (True, True, True, 3)
    assert (nova_sim.lr, nova_grpo.lr) == (2e-6, 1e-6)               # App. B
    assert exp.train_config("nova", "mixed", "sim").steps == 800      # fixed in advance
    assert nova_grpo.steps == 1200                                    # baselines: best of the run
    assert exp.train_config("harmon", "hps", "mte").S == 5
    warm = exp.warmup_config("harmon")
    assert (warm.trainable, warm.steps, warm.lr, warm.reward) == ("head", 400, 1e-6, "hps")
    assert [r.name for r in exp.suite_rows("compbench")][:5] == [
        "base", "mixed-grpo", "mixed-fix_decoder", "mixed-mte", "mixed-sim"]


def test_only_the_first_model_trains_every_variant():
    """Table 2 (the ablation) is on the first model (NOVA in the paper): it trains every variant; the
    others train Table 1's +GRPO and Ours (grpo, sim), nothing the tables or figures do not use."""
    from marpipe.tables import TABLE1_ROWS, TABLE2_ROWS
    assert tuple(TABLE1_ROWS.values()) == E.TABLE1_VARIANTS == ("grpo", "sim")
    assert tuple(TABLE2_ROWS.values()) == E.TABLE2_VARIANTS == ("grpo", "fix_decoder", "mte", "sim")
    for path, first, other in ((ROOT / "config.yaml", "nova", "harmon"),
                               (ROOT / "config" / "small.yaml", "tiny-nova", "tiny-harmon")):
        exp = E.load(path)
        assert exp.models[0] == first and exp.model_variants(first) == list(E.TABLE2_VARIANTS)
        assert exp.model_variants(other) == ["grpo", "sim"]
        runs = {(r.model, r.variant) for r in exp.runs()}
        assert {(first, v) for v in exp.variants} | {(other, "grpo"), (other, "sim")} == runs
        assert len(exp.runs()) == 2 * (4 + 2) * len(exp.seeds)
        assert [r.variant for r in exp.suite_rows("preference") if r.model == other] == ["base", "grpo", "sim"]


def test_all_variants_trains_every_variant_of_another_model():
    cfg = shrunk_config()
    cfg["models"]["tiny-harmon"]["all_variants"] = True
    assert E.load(cfg).model_variants("tiny-harmon") == ["grpo", "fix_decoder", "mte", "sim"]
    cfg["models"]["tiny-harmon"]["all_variants"] = False
    assert E.load(cfg).model_variants("tiny-harmon") == ["grpo", "sim"]
    cfg["models"]["tiny-nova"]["all_variants"] = False
    with pytest.raises(ConfigError, match="config.models.tiny-nova.all_variants = false: the first model fills Table 2"):
        E.load(cfg)


def test_an_override_of_a_variant_the_model_does_not_train_is_refused():
    cfg = shrunk_config()
    cfg["models"]["tiny-harmon"]["variants"] = {"mte": {"lr": 2.0e-4}}
    with pytest.raises(ConfigError, match=r"config.models.tiny-harmon.variants.mte: tiny-harmon trains only grpo, "
                                          r"sim .*set config.models.tiny-harmon.all_variants: true"):
        E.load(cfg)
    cfg["models"]["tiny-harmon"]["all_variants"] = True
    assert E.load(cfg).train_config("tiny-harmon", "hps", "mte").lr == 2.0e-4


def test_variants_without_table1s_train_every_variant_on_every_model():
    """A config whose variants are not laid out as Table 1 (no sim here) cannot tell what the tables use:
    every model trains every variant, as before (Table 1's "Ours" rows stay empty)."""
    cfg = shrunk_config()
    del cfg["variants"]["sim"]
    for m in cfg["models"].values():
        m.get("variants", {}).pop("sim", None)
    exp = E.load(cfg)
    assert exp.model_variants("tiny-harmon") == exp.model_variants("tiny-nova") == ["grpo", "fix_decoder", "mte"]


def test_cross_references_are_checked():
    cfg = shrunk_config()
    cfg["rewards"]["hps"] = {"world_nope": 1.0}
    with pytest.raises(ConfigError, match="world_nope"):
        E.load(cfg)
    cfg = shrunk_config()
    cfg["evaluation"]["compbench"]["categories"]["Color"]["prompts"] = "missing_set"
    with pytest.raises(ConfigError, match="categories.Color.prompts = 'missing_set': not in config.prompts"):
        E.load(cfg)


def test_validated_config_cache_reuses_valid_configs_and_never_stores_bad_ones(tmp_path):
    cfg = shrunk_config()
    first = E.load(cfg, cache=tmp_path)
    stored = list(tmp_path.glob("*.json"))
    assert len(stored) == 1
    assert E.load(cfg, cache=tmp_path).cfg == first.cfg == E.load(cfg).cfg   # hit == fresh validation
    cfg["train"]["top_k"] = 1.5
    with pytest.raises(ConfigError, match=r"config\.train\.top_k"):
        E.load(cfg, cache=tmp_path)
    assert list(tmp_path.glob("*.json")) == stored


def test_loading_the_paper_config_at_parse_time_imports_no_torch(tmp_path):
    # the Snakefile loads the config on every snakemake call (the dry run must stay under 3 s);
    # a cache miss validates and writes the cache, and must not pull in torch (~2.5 s) either
    import subprocess
    import sys
    code = ("import sys; from marpipe import experiment as E; "
            f"E.load({str(ROOT / 'config.yaml')!r}, cache={str(tmp_path)!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_scorers_with_weights_run_on_the_jobs_device(monkeypatch):
    """Training and evaluation pass their device to every scorer factory that takes one (the
    factories default to cpu: on a GPU node the reward models would otherwise run on the CPU)."""
    from marpipe import rewards
    seen = {}

    def with_device(device="cpu"):
        seen["with"] = device
        return lambda images, prompts, metadata=None: torch.zeros(len(images))

    def without_device():
        seen["without"] = True
        return lambda images, prompts, metadata=None: torch.zeros(len(images))

    monkeypatch.setitem(rewards._REGISTRY, "fake_gpu_scorer", with_device)
    monkeypatch.setitem(rewards._REGISTRY, "fake_plain_scorer", without_device)
    cfg = E.validate(shrunk_config())
    cfg["scorers"].update(fake_gpu_scorer={}, fake_plain_scorer={})
    cfg["rewards"]["hps"] = {"fake_gpu_scorer": 1.0, "fake_plain_scorer": 1.0}
    E.Experiment(cfg).build_reward("hps", device=torch.device("cuda:1"))
    assert seen == {"with": "cuda:1", "without": True}
