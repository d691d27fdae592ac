"""Every number comes from its own row: the DAG's commands, job by job, read the files of their own
(model, reward, variant, seed, suite) -- each row's images from its own selected weights, each
score from its own images, each Fig. 7 point from its own run -- and the stages write what they
are given (selection: the checkpoint its rule picks; evaluate: the record of its own row).

The dry run is the study's (config/small.yaml + config/study.yaml: three training seeds and the
Fig. 7 sweep), printed with its shell commands, so a rule or input function that wires a job to
another row's file fails here."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from marpipe import experiment as E
from marpipe.stages.select import choose_step, select_checkpoint
from tests.pipeline_config import ROOT, shrunk_config
from tests.stages.test_select_and_experiment import write_run

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture(scope="module")
def commands():
    """(rule, wildcards, output, parsed shell command) of every job of the study's dry run."""
    r = subprocess.run([SNAKEMAKE, "all", "-n", "--forceall", "-p", "--configfile", "config/small.yaml",
                        "config/study.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", r.stdout):
        m = re.match(r"(?:local)?rule (\w+):", block)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if not m or not cmd:
            continue
        argv = shlex.split(cmd.group(1).split(" > ")[0])
        if "marpipe" not in argv:
            continue
        out = (re.search(r"^    output: (.*)$", block, re.M) or [None, ""])[1].split(", ")
        wc = dict(kv.split("=", 1) for kv in
                  (re.search(r"^    wildcards: (.*)$", block, re.M) or [None, ""])[1].split(", ") if "=" in kv)
        jobs.append({"rule": m.group(1), "wildcards": wc, "output": out,
                     "argv": argv[argv.index("marpipe"):]})
    return jobs


def opt(argv, name, n=1):
    """The value(s) after ``--name`` in a command line (None if absent)."""
    if f"--{name}" not in argv:
        return None
    i = argv.index(f"--{name}") + 1
    if n == 1:
        return argv[i]
    vals = []
    while i < len(argv) and not argv[i].startswith("--"):
        vals.append(argv[i]); i += 1
    return vals


def of(commands, rule):
    found = [j for j in commands if j["rule"] == rule]
    assert found, f"no {rule} job in the dry run"
    return found


def selected(model, row):
    reward, variant, seed = E.parse_row_id(row)
    return f"results/selected/{model}/{reward}/{variant}/seed{seed}"


def test_each_rows_images_come_from_its_own_selected_weights(commands):
    """Catches: a row sampled from another row's (or another seed's, or the centre's) weights, or from the base."""
    for job in of(commands, "generate"):
        model, row = job["wildcards"]["model"], job["wildcards"]["row"]
        assert opt(job["argv"], "row") == row and opt(job["argv"], "model") == model
        weights = opt(job["argv"], "weights", n=2) or []
        if row == "base":
            assert weights == [], f"the base row of {model} is sampled over {weights}"
            continue
        want = f"{selected(model, row)}.safetensors"
        assert weights[-1] == want, f"{model}/{row} images from {weights[-1]}, not its own {want}"
        assert weights[:-1] in ([], [f"results/runs/{model}/warmup/warm.safetensors"])
    rows = {j["wildcards"]["row"] for j in of(commands, "generate")}
    assert any("top_k~" in r for r in rows) and any("seed2" in r for r in rows)   # the sweep and 3 seeds are here


def test_each_score_is_computed_from_its_own_images_and_selection(commands):
    """Catches: images or scores of two rows or two suites swapped; a selection of another seed."""
    for job in of(commands, "evaluate"):
        w, argv = job["wildcards"], job["argv"]
        assert job["output"] == [f"results/scores/{w['model']}/{w['row']}/{w['suite']}.json"]
        assert opt(argv, "images") == f"results/images/{w['model']}/{w['row']}/{w['suite']}.npz"
        assert opt(argv, "suite") == w["suite"] and opt(argv, "model") == w["model"]
        reward, variant, seed = E.parse_row_id(w["row"])
        if reward is None:
            assert opt(argv, "selection") is None and opt(argv, "variant") == "base"
            continue
        assert (opt(argv, "reward"), opt(argv, "variant"), int(opt(argv, "seed"))) == (reward, variant, seed)
        assert opt(argv, "selection") == f"{selected(w['model'], w['row'])}.json"


def test_each_selection_reads_its_own_run_and_each_run_trains_its_own_seed(commands):
    """Catches: one training seed's run used for another seed (or variant, or sweep point)."""
    for job in of(commands, "select_checkpoint"):
        w, argv = job["wildcards"], job["argv"]
        run = f"results/runs/{w['model']}/{w['reward']}/{w['variant']}/seed{w['seed']}"
        assert opt(argv, "run") == run
        assert opt(argv, "out-weights") == f"{run.replace('runs', 'selected', 1)}.safetensors"
        assert (opt(argv, "reward"), opt(argv, "variant")) == (w["reward"], w["variant"])
    for job in of(commands, "train"):
        w, argv = job["wildcards"], job["argv"]
        assert (opt(argv, "reward"), opt(argv, "variant"), opt(argv, "seed")) == (w["reward"], w["variant"], w["seed"])
        assert opt(argv, "out") == f"results/runs/{w['model']}/{w['reward']}/{w['variant']}/seed{w['seed']}"


def test_each_fig7_point_is_scored_from_its_own_run(commands):
    """Catches: a Fig. 7 point evaluated from the centre's run (or the centre from a point's)."""
    [job] = of(commands, "ablations")
    scores = opt(job["argv"], "scores", n=2)
    from snakemake.utils import update_config
    cfg = E.read_config(ROOT / "config" / "small.yaml")
    update_config(cfg, E.read_config(ROOT / "config" / "study.yaml"))
    exp = E.load(cfg)
    points = exp.ablation_variants()
    assert points
    for variant in points:
        for seed in exp.seeds:
            row = E.row_id(exp.ablation["reward"], variant, seed)
            assert f"results/scores/{exp.ablation['model']}/{row}/preference.json" in scores
    gens = {j["wildcards"]["row"]: opt(j["argv"], "weights", n=2)[-1] for j in of(commands, "generate")
            if "top_k~" in j["wildcards"]["row"] or "tau~" in j["wildcards"]["row"] or "S~" in j["wildcards"]["row"]}
    assert gens and len(set(gens.values())) == len(gens)          # every point its own weights file
    for row, weights in gens.items():
        reward, variant, seed = E.parse_row_id(row)
        assert weights.endswith(f"/{variant}/seed{seed}.safetensors") and "~" in weights


@pytest.mark.parametrize("variant,rule,step", [("grpo", "best", 2), ("sim", "fixed", 4)])
def test_selection_writes_the_weights_of_the_step_its_rule_picks(tmp_path, variant, rule, step):
    """Catches: a selection that writes a step other than its rule's (the best by training reward, or
    the fixed step); the best step (2) and the fixed one (4) differ here, and each checkpoint's
    weights hold its step number."""
    exp = E.load(shrunk_config())                     # best_of: grpo, fix_decoder; window 2; fixed_step 4
    write_run(tmp_path, [0.8, 0.9, 0.1, 0.2, 0.3, 0.2], save_every=2)
    assert choose_step(exp, "hps", variant, tmp_path)[:2] == (step, rule)
    info = select_checkpoint(exp, "hps", variant, tmp_path, tmp_path / "w.safetensors", tmp_path / "w.json")
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "w.safetensors"))["weight"].unique().tolist() == [float(step)]
    assert (info["step"], info["rule"]) == (step, rule)
    assert info["checkpoint"] == f"checkpoints/{Path(info['checkpoint']).name}" and f"{step}" in info["checkpoint"]
