"""The benchmark commands print figures; here their plumbing is checked, at tiny sizes, and the
reward-rise bench's claim -- GRPO steps raise a simple reward -- is asserted on a tiny run."""
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import testbed.standins  # noqa: F401  (registers the nova-standin spec)
from marpipe.bench.reward import _held_out, _train_prompts, bench_reward_rise, bench_warmup, total_variation
from marpipe.bench.train import VARIANTS
from marpipe.cli import main
from marpipe.rewards import build_reward
from marpipe.rollout import sample_images
from marpipe.trainer import Trainer
from tests.helpers import grpo, tiny

ROOT = Path(__file__).resolve().parents[2]


def test_reward_rise_reports_every_variant_and_seed(tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    tiny().save(weights)
    report = bench_reward_rise(str(weights), steps=5, seeds=(0, 1), held_out=2)
    assert set(report["runs"]) == {f"{v}/seed{s}" for v in VARIANTS for s in (0, 1)}
    values = [x for r in report["runs"].values() for x in r.values()] + [report["held_out_before"]]
    assert all(math.isfinite(x) for x in values)
    # the seed changes the training prompts and noise, so the runs differ
    assert report["runs"]["grpo/seed0"] != report["runs"]["grpo/seed1"]
    assert "held-out after" in capsys.readouterr().out


def redness_rise(out_dir, seed: int = 0, n_held_out: int = 16) -> tuple[torch.Tensor, list[float]]:
    """Train a random tiny model for 15 GRPO steps on the redness reward; returns the per-image rise
    of the reward on ``n_held_out`` held-out style prompts (sampled with seed 1000, which no training
    rollout uses; paired: same prompts, same noise, before and after) and the per-step training reward.

    Set up so that the rise is well conditioned: the head alone trains (the fewest parameters that move
    a colour), one head step per AR step, 64 images per step, no KL, and CFG off (``cfg_scale`` 1: the
    sampled policy is the one whose log-probs the loss weighs; with the tiny model's CFG 3 and the
    conditional-branch log-probs, the rise of a random model is not reliable)."""
    reward = build_reward("redness")
    texts, meta = _held_out(n_held_out)
    model = tiny()

    def held_out() -> torch.Tensor:
        return reward(sample_images(model, texts, seed=1000, cfg_scale=1.0), texts, meta)

    before = held_out()
    cfg = grpo(trainable="head", group_size=16, prompts_per_step=4, train_ar_steps=4, train_diffusion_steps=1,
               cfg_scale=1.0, beta=0.0, lr=5e-3, steps=15, save_every=10**6, seed=seed)
    rows = Trainer(model, cfg, _train_prompts(), reward, out_dir, progress=False).train()
    return held_out() - before, [r["reward_mean"] for r in rows]


def test_grpo_steps_raise_a_simple_reward_on_held_out_prompts(tmp_path):
    """What the reward-rise bench is for, asserted: GRPO raises the reward it is given, on held-out
    prompts and over its steps. Measured over training seeds 0-63 (a stand-in for another CPU, whose
    rounding changes an RL run as a seed does): held-out rise 0.24 +- 0.06, lowest 0.11, every image
    rising, standard error of one run's mean <= 0.007; training reward, last 5 steps minus first 5,
    >= 0.059. With the advantages negated (a sign error in the loss; seeds 0-15): held-out -0.22 +- 0.07,
    highest -0.04, no image rising; training <= 0.001. The bounds: a rise > 0.05 (3 sds below the mean,
    under half the lowest seed) and > 10 standard errors, on >= 3/4 of the images, and > 0.02 in training."""
    rise, train = redness_rise(tmp_path)
    se = float(rise.std() / math.sqrt(len(rise)))
    msg = f"held-out redness rise {float(rise.mean()):.4f} (standard error {se:.4f}); training rewards {train}"
    assert rise.mean() > max(0.05, 10 * se), msg
    assert (rise > 0).float().mean() >= 0.75, msg                      # most images, not a few outliers
    assert statistics.mean(train[-5:]) - statistics.mean(train[:5]) > 0.02, msg   # and over its steps


def test_reward_rise_names_the_missing_weights_and_how_to_make_them(tmp_path, capsys):
    assert main(["bench", "reward-rise", "--model", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "none.safetensors: no such file" in err and "make demo" in err


def test_total_variation_is_zero_on_a_flat_image_and_one_on_a_checkerboard():
    flat = torch.full((1, 3, 8, 8), 0.3)
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float().expand(1, 3, 8, 8)
    assert total_variation(flat) == 0.0
    assert total_variation(board) == 1.0


def test_warmup_bench_measures_each_model_before_and_after_a_head_only_warmup(capsys):
    models = {kind: tiny(kind) for kind in ("tiny-nova", "tiny-harmon")}
    cfg = grpo(trainable="head", steps=2, lr=1e-2, save_every=10**6)
    report = bench_warmup(models, cfg, build_reward("redness"), {"brightness": build_reward("brightness")},
                          held_out=3)
    assert set(report["models"]) == set(models)
    columns = {"reward", "brightness", "total_variation"}
    assert set(report["renders"]) == columns
    for m in report["models"].values():
        assert set(m["before"]) == set(m["after"]) == columns
        assert all(math.isfinite(v) for v in [*m["before"].values(), *m["after"].values()])
        assert m["before"] != m["after"]          # the head moved, so the same-seed samples changed
    assert report["renders"]["total_variation"] > 0
    out = capsys.readouterr().out
    assert "tiny-harmon before" in out and "renders (clean)" in out


def test_warmup_bench_names_the_unfetched_base_model_and_its_rule(tmp_path, monkeypatch, capsys):
    config = str(Path("config/small.yaml").resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "warmup", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "base model 'tiny-nova' is not fetched" in err and "snakemake" in err


def test_real_config_rollout_cost_counts_head_passes_per_schedule():
    """Head passes of one NOVA rollout (CFG doubles each), 12 of 63 AR steps trained: the official
    sampler denoises only the tokens accepted at each step (N T); marpipe every still-masked token
    at a trained step (chance 12/63), the accepted ones elsewhere (plus, for Sim, the step before
    each trained one); with the full head (a test mode) every still-masked token (T sum_k P_k); the
    NOVA reference all N tokens at every step (K N T); the Harmon reference keeps every token at the
    trained steps, the step before each and the last. Re-derived here from the mask schedule."""
    from marpipe.grpo import harmon_mask_counts, nova_mask_counts
    from marpipe.models.cost import head_macs_per_token_step, rollout_cost
    counts = nova_mask_counts(1024, 64)
    r = rollout_cost("nova", counts, 25, S=4)
    still_masked = [1024 - sum(counts[:k]) for k in range(len(counts))]
    p = r["head_passes"]
    assert p["official_sampler"] == 2 * 1024 * 25 and p["full"] == 2 * 25 * sum(still_masked) == 2_060_250
    assert p["reference"] == p["nova_reference"] == 2 * 63 * 1024 * 25
    assert p["marpipe"] == round(2 * 25 * (12 / 63 * sum(still_masked) + 51 / 63 * 1024))
    assert 4.2e5 < p["marpipe"] < 4.5e5 and 7.2e5 < p["marpipe_sim"] < 7.8e5
    assert r["head_macs"] == p["marpipe"] * head_macs_per_token_step("nova")
    assert rollout_cost("nova", counts, 25, sim=True)["head_macs"] == p["marpipe_sim"] * head_macs_per_token_step("nova")
    assert rollout_cost("nova", counts, 25, full_head=True)["head_macs"] == p["full"] * head_macs_per_token_step("nova")
    assert r["mte_extra_head_macs"] == 3 * 1024 * 25 * head_macs_per_token_step("nova")
    assert 0 < r["mte_extra_share"] < r["head_share"] < 1
    # Harmon's reference trainer (sample_with_logp's keep_this_step): ~1.19M, not K N T = 3,276,800
    h = rollout_cost("harmon", harmon_mask_counts(1024, 64), 25)["head_passes"]
    assert 1.1e6 < h["reference"] == h["harmon_reference"] < 1.25e6 and h["marpipe_sim"] < h["reference"]
    # the NOVA head (mlp_d6w1024) is ~37M multiply-adds per token-step, Harmon's (12 x 1536) ~4x that
    assert 3.5e7 < head_macs_per_token_step("nova") < 4e7
    assert 3.5 < head_macs_per_token_step("harmon") / head_macs_per_token_step("nova") < 4.5


def test_nova_rollout_counts_the_prompt_tokens_as_queries_of_every_image_encoder_block():
    """diffnext's VisionTransformer.forward concatenates the 256 prompt tokens in front of the image
    tokens before both halves: queries and keys of all 32 blocks."""
    from marpipe.models.cost import ar_step_macs, block
    assert ar_step_macs("nova", 100) == 16 * block(1024, 356, 356) + 16 * block(1024, 1280, 1280)


def test_harmon_rollout_runs_the_prompt_through_the_llm_once():
    """The adapter (and ``HarmonModel.sample``) computes the prompt's keys and values once per rollout:
    each AR step's LLM queries are the known tokens and the 64 buffer slots only, over the prompt's keys."""
    from marpipe.models.cost import PROMPT_TOKENS, ar_step_macs, block, llm_tokens, prompt_macs, qwen2_layer
    p = PROMPT_TOKENS["harmon"]
    enc, dec = 20 * block(1280, 164, 164), 20 * block(1280, 1088, 1088)
    assert ar_step_macs("harmon", 100) == enc + 28 * qwen2_layer(164, p + 164) + dec + 2 * 164 * 1280 * 1536
    assert prompt_macs("harmon") == 28 * qwen2_layer(p, p)
    counts = [1, 2, 3]
    assert llm_tokens(counts, p, 64) == p + (0 + 64) + (1 + 64) + (3 + 64)
    assert llm_tokens(counts, p, 64, cached=False) == 3 * p + (0 + 64) + (1 + 64) + (3 + 64)


def test_nova_prompt_encodings_are_shared_by_a_group_and_the_negative_by_the_rollout():
    """NOVA's adapter runs Phi-2 once per distinct text: an image's share of a rollout's encodings is
    its prompt's over the group and the negative's over the rollout; Harmon's prefill runs every row."""
    from marpipe.grpo import nova_mask_counts
    from marpipe.models.cost import prompt_macs, prompt_macs_per_image, rollout_cost
    assert prompt_macs_per_image("nova", 4, 12) == prompt_macs("nova") * (1 / 4 + 1 / 12)
    assert prompt_macs_per_image("nova") == 2 * prompt_macs("nova")
    assert prompt_macs_per_image("harmon", 4, 12) == 2 * prompt_macs("harmon")
    counts = nova_mask_counts(1024, 64)
    shared, alone = rollout_cost("nova", counts, group_size=4, images=12), rollout_cost("nova", counts)
    saved = alone["transformer_macs"] - shared["transformer_macs"]
    assert saved == pytest.approx(prompt_macs("nova") * (2 - 1 / 4 - 1 / 12), rel=1e-12)


def test_train_step_bench_takes_a_model_spec(capsys):
    """The stand-in's spec: the adapter path (as for nova:DIR on a GPU), and the real-config split."""
    from marpipe.bench.train import bench_train_step
    rep = bench_train_step(steps=1, model_names=("nova-standin",), device="cpu", preload=["testbed.standins"])
    r = rep["models"]["nova-standin"]
    assert set(r["median_step_s"]) == {"grpo", "fix_decoder", "mte", "sim"}
    assert all(t > 0 for t in r["median_step_s"].values()) and r["ratio_mte_over_fix_decoder"] > 0
    out = capsys.readouterr().out
    assert "real configs, one rollout" in out and "51,200 /" in out


def test_train_step_cost_adds_mte_extras_once_per_image_or_per_trained_step():
    """MTE's extra trajectories re-derived from the schedule: once per image, (S-1) x N x T head
    passes (twice with CFG); Alg. 2's per-step reading, (S-1) x CFG x T x the masked tokens of each
    trained step, weighted by the chance 12/K that a step is trained; the loss then adds (S-1) x
    top_k of each trained step's head transitions, forward and input-gradient."""
    from marpipe.grpo import harmon_mask_counts
    from marpipe.models.cost import head_macs_per_token_step, train_step_cost
    counts = harmon_mask_counts(1024, 64)
    h, K = head_macs_per_token_step("harmon"), len(counts)
    fd = train_step_cost("harmon", counts, "fix_decoder")
    image = train_step_cost("harmon", counts, "mte", S=6, guided=True, top_k=0.0) - fd
    assert math.isclose(image, 5 * 2 * 1024 * 25 * h, rel_tol=1e-9)
    masked = [1024 - sum(counts[:k]) for k in range(K)]
    step = train_step_cost("harmon", counts, "mte", S=3, guided=True, scope="step", top_k=0.0) - fd
    assert math.isclose(step, 12 / K * sum(2 * 2 * p * 25 * h for p in masked), rel_tol=1e-9)
    loss = train_step_cost("harmon", counts, "mte", S=3, top_k=0.5) - train_step_cost(
        "harmon", counts, "mte", S=3, top_k=0.0)
    assert math.isclose(loss, 12 / K * sum(2 * 0.5 * 2 * p * 10 * h for p in masked), rel_tol=1e-9)
    # NOVA reference: 4 latent pixels per token ranked on their own; the head runs on every token
    # holding an uncertain pixel: up to 1 - (1 - 0.5)^4 = 15/16 of them
    pixels = train_step_cost("harmon", counts, "mte", S=3, top_k=0.5, units_per_token=4) - train_step_cost(
        "harmon", counts, "mte", S=3, top_k=0.0, units_per_token=4)
    assert math.isclose(pixels, loss * (15 / 16) / 0.5, rel_tol=1e-9)
    # Harmon's after-step loss set drops the step's accepted tokens from the loss rows
    after = train_step_cost("harmon", counts, "fix_decoder", loss_tokens="after_step", beta=0.0)
    unknown = train_step_cost("harmon", counts, "fix_decoder", beta=0.0)
    assert math.isclose(unknown - after, 12 / K * 2 * 1024 * 10 * h, rel_tol=1e-9)
    # at the real proportions, once-per-image extras are about a tenth of a step; Alg. 2's, a fifth
    assert image / fd < 0.15 < 0.2 < step / fd


def test_bench_lists_its_kinds_and_each_kind_takes_only_its_own_options(capsys):
    """``marpipe bench KIND``: a subcommand per kind; an option of another kind is refused (exit 2, named)."""
    from marpipe.bench.commands import KINDS
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert list(KINDS) == ["train-step", "rollout", "reward-rise", "warmup", "memory", "gpu", "grad-noise", "metrics"]
    assert all(re.search(rf"^\s+{kind}\b", out, re.M) for kind in KINDS), out
    with pytest.raises(SystemExit) as e:
        main(["bench", "metrics", "--draws", "3"])
    assert e.value.code == 2 and "unrecognized arguments: --draws 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "grad-noise", "--size", "tiny"])
    assert e.value.code == 2 and "--size" in capsys.readouterr().err


def test_building_the_parser_imports_no_torch():
    """Every ``marpipe`` call builds the whole parser: the benchmarks' options come without torch."""
    code = "import sys; from marpipe.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_stages_and_the_grad_noise_rule_take_the_base_model_spec_from_one_function(tmp_path):
    """``marpipe.layout.base_model_spec``: what ``stages.resources.model_spec`` loads (after its manifest
    check) and what the workflow passes to ``marpipe bench grad-noise --model``, for both adapters."""
    from marpipe import layout
    from marpipe.experiment import load
    from marpipe.models.download import write_manifest
    from marpipe.stages import resources
    from tests.pipeline.test_workflow import snakemake
    assert resources.base_model_spec is layout.base_model_spec
    study = tmp_path / "grad_noise.yaml"
    study.write_text(json.dumps({"grad_noise": {"draws": 2}}))
    expected = {"nova": "nova:resources/models/nova", "harmon": "harmon:resources/models/harmon",
                "tiny-nova": "resources/models/tiny-nova/model.safetensors",
                "tiny-harmon": "resources/models/tiny-harmon/model.safetensors"}
    for config, models in (("config.yaml", ["nova", "harmon"]), ("config/small.yaml", ["tiny-nova", "tiny-harmon"])):
        exp = load(ROOT / config)
        r = snakemake("-n", "-p", "--configfile", config, str(study), "--cores", "1",
                      *(f"results/grad_noise/{m}.csv" for m in models))
        assert r.returncode == 0, r.stderr[-3000:]
        for m in models:
            assert layout.base_model_spec(exp.adapter(m), f"resources/models/{m}") == expected[m]
            assert f"marpipe bench grad-noise --model {expected[m]} --draws 2 " in r.stdout
            (tmp_path / m).mkdir()
            (tmp_path / m / layout.MODEL_FILE).write_bytes(b"")
            write_manifest(tmp_path / m)
            assert resources.model_spec(exp, m, tmp_path) == layout.base_model_spec(exp.adapter(m), tmp_path / m)


def test_rollout_bench_counts_the_head_work_the_cost_model_predicts(capsys):
    """``marpipe bench rollout``: the head token-steps it counts through the rollout equal the cost model's
    floor for each model (``marpipe.models.cost.head_rows``), with and without Sim; the test mode's full
    head never does less."""
    assert main(["bench", "rollout", "--json", "--device", "cpu", "--models", "nova-standin", "harmon-standin"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for name in ("nova-standin", "harmon-standin"):
        r = rep["models"][name]
        assert r["head_token_steps"] == r["floor_token_steps"] > 0
        assert r["head_token_steps_sim"] == r["floor_token_steps_sim"]
        assert r["head_token_steps_full"] >= r["head_token_steps"]
