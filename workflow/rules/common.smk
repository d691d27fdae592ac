# Config validation, wildcard constraints and the input functions: every "which files
# does this job need" question is answered here.
import os
import re
import sys
import yaml
from pathlib import Path
from snakemake.utils import Paramspace, update_config
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from marpipe import experiment as E
from marpipe import layout
from marpipe import lock as L
from marpipe import workflow_hooks
from marpipe.io import tracking_server

workflow_hooks.ensure_cli_on_path()


# --configfile replaces config.yaml instead of being merged into it (two worlds never mix); several
# files are merged in order, key by key (config/small.yaml config/study.yaml: the study's changes);
# each file is read again strictly (duplicate keys are an error, naming the file and line)
CONFIGFILES = [str(p) for p in workflow.overwrite_configfiles or ["config.yaml"]]
config.clear()
for _path in CONFIGFILES:
    update_config(config, E.read_config(_path))
update_config(config, workflow.config_settings.overwrite_config)
# where each model family's jobs run: the profile's `config: deployment:` (not experiment metadata); or
# conda envs (envs/*.yaml) where the profile sets `software-deployment-method: conda`: Snakemake builds
# them from copies in .snakemake/conda/, so their paths go through MARPIPE_ROOT (this checkout)
DEPLOYMENT = {**workflow_hooks.DEFAULT_DEPLOYMENT, **(config.pop("deployment", None) or {})}
CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
os.environ.setdefault("MARPIPE_ROOT", str(Path(workflow.basedir).absolute()))

# The downloads at the commits and hashes of the config's lock file (`marpipe lock` writes it beside the
# first config file); a real run refuses to start while one is neither pinned nor locked (onstart).
LOCKFILE = L.lock_path(CONFIGFILES[0])
_locked = L.apply(config, L.read(LOCKFILE))
config.clear()
config.update(_locked)
UNLOCKED = L.refusal(config, L.read(LOCKFILE), CONFIGFILES[0])
if UNLOCKED and workflow.is_main_process:
    print(f"marpipe: a real run will not start: {UNLOCKED}", file=sys.stderr)


def refuse_unlocked():
    """onstart (never in a dry run): stop before any job is submitted while a download is unlocked."""
    if UNLOCKED:
        raise SystemExit(f"marpipe: {UNLOCKED}")


EXP = E.load(config, cache=".marpipe/validated")  # ConfigError naming the key: nothing is submitted
# The validated config every job reads (content-addressed, so re-parsing in a job writes the same file)
CONFIG = f".marpipe/config-{EXP.config_hash}.yaml"
Path(CONFIG).parent.mkdir(exist_ok=True)
if not Path(CONFIG).exists():
    Path(CONFIG).write_text(yaml.safe_dump(EXP.to_json(), sort_keys=False))

MODELS = EXP.models
REWARDS = EXP.trained_rewards
VARIANTS = EXP.variants  # the first model trains them all, the others Table 1's (EXP.model_variants)
SEEDS = EXP.seeds  # training seeds: every run is (model, reward, variant, seed)
RUNS = EXP.runs()  # the runs Tables 1-2 report: Row(model, reward, variant, seed)
SUITES = list(E.SUITES)
MANIFEST = "MANIFEST.sha256"

# Fig. 7: one knob at a time around the full method (config `ablations:`), each point a run of
# the ablated variant, named by Paramspace's folders: sim/top_k~0.1/tau~0.0/S~3
ABLATION = EXP.ablation
ABLATIONS = Paramspace(EXP.ablation_frame())
ABLATION_VARIANTS = [f"{ABLATION['variant']}/{p}" for p in ABLATIONS.instance_patterns] if ABLATION else []
assert ABLATION_VARIANTS == EXP.ablation_variants(), "ablation folders differ from marpipe's names"


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


def ablation_rows():
    return [E.row_id(ABLATION["reward"], v, s) for v in ABLATION_VARIANTS for s in SEEDS] if ABLATION else []


wildcard_constraints:
    model="|".join(MODELS),
    reward="|".join(REWARDS),
    variant=_alternatives(VARIANTS + ABLATION_VARIANTS),
    seed="|".join(map(str, SEEDS)),
    row=_alternatives(["base"] + list(dict.fromkeys(run.id for run in RUNS)) + ablation_rows()),
    suite="|".join(SUITES),
    weights="|".join(EXP.cfg["weights"]),
    prompts="|".join(EXP.cfg["prompts"]),


def env_for(wildcards):
    """The conda env of a model's rule family, where the profile deploys with conda instead."""
    adapter = EXP.adapter(wildcards.model)
    return f"../../envs/{adapter if adapter in workflow_hooks.DEFAULT_DEPLOYMENT else 'pipeline'}.yaml"


def family_python(model):
    """The interpreter of a model's jobs: the deployment's venv of its adapter (the official NOVA / Harmon
    code), else the environment Snakemake runs in (the project's .venv, with ``marpipe`` on PATH); with
    conda, the family's conda env (``env_for``)."""
    venv = DEPLOYMENT.get(EXP.adapter(model))
    if CONDA:
        return "python"
    if venv is None:
        return sys.executable
    return str(Path(workflow.basedir, venv, "bin", "python").absolute())


def marpipe(wildcards):
    """``marpipe`` in the model family's environment."""
    return f"{family_python(wildcards.model)} -m marpipe"


def launcher(wildcards, resources):
    """:func:`marpipe` on one device; through torchrun (one DDP rank per GPU) when the profile books several."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus > 1:
        return (
            f"{family_python(wildcards.model)} -m torch.distributed.run --standalone --nproc_per_node={gpus} -m marpipe"
        )
    return marpipe(wildcards)


def refuse_undeployed():
    """onstart: every model family's interpreter exists (on the shared filesystem the nodes see)."""
    for model in MODELS:
        adapter = EXP.adapter(model)
        if not CONDA and DEPLOYMENT.get(adapter) and not Path(family_python(model)).exists():
            raise SystemExit(
                f"marpipe: deployment.{adapter} = {DEPLOYMENT[adapter]}: {family_python(model)} not found; "
                f"build it with `make install official-venvs` in {workflow.basedir} (on the filesystem the "
                f"compute nodes share), or point the profile's config.deployment.{adapter} at that "
                f"environment. Nothing was submitted."
            )


def base_model(model):
    return f"resources/models/{model}/{MANIFEST}"


def weights_for_scorers(scorers):
    return [f"resources/metrics/{w}/{MANIFEST}" for w in EXP.weights_for(scorers)]


def reward_weights(reward):
    return weights_for_scorers(EXP.reward_scorers(reward))


def start_weights(wildcards):
    """GRPO starts from the base model, or from the warmed-up head where the model has one."""
    if EXP.has_warmup(wildcards.model):
        return {"warm": layout.warm_weights(wildcards.model)}
    return {}


def row_weights(wildcards):
    """A row's weights: its run's start weights (the warmed-up head, where the model has one) and the
    selected checkpoint's trained parameters over them; nothing for the base model."""
    reward, variant, seed = E.parse_row_id(wildcards.row)
    if reward is None:
        return {}
    selected = layout.selected(wildcards.model, reward, variant, seed)
    return {**start_weights(wildcards), "weights": f"{selected}.safetensors", "selection": f"{selected}.json"}


def weights_args(wildcards, input):
    """``--weights`` of a generate job: the start weights, then the selected ones (loaded in order)."""
    files = [input[k] for k in ("warm", "weights") if k in input.keys()]
    return f"--weights {' '.join(files)}" if files else ""


def row_args(wildcards):
    """The evaluate command's --reward/--variant/--seed of a row id."""
    reward, variant, seed = E.parse_row_id(wildcards.row)
    return "--variant base" if reward is None else f"--reward {reward} --variant {variant} --seed {seed}"


def suite_prompts(wildcards):
    return [f"resources/prompts/{p}.jsonl" for p in sorted(set(EXP.suite_prompt_sets(wildcards.suite).values()))]


def score_files():
    return layout.score_files(EXP)


def metrics_files():
    """Every training run of Tables 1-2 (the first model: every variant; the others: Table 1's)."""
    return [layout.run_summary(run.model, run.reward, run.variant, run.seed) for run in RUNS]


def ablation_score_files():
    """Fig. 7: the preference suite's scores of every point of the sweep and of its centre, each training seed."""
    if not ABLATION:
        return []
    centre = [E.row_id(ABLATION["reward"], ABLATION["variant"], s) for s in SEEDS]  # its Table 2 runs
    return [layout.scores(ABLATION["model"], r, "preference") for r in centre + ablation_rows()]


def ablation_metrics_files():
    if not ABLATION:
        return []
    return [
        layout.run_summary(ABLATION["model"], ABLATION["reward"], v, s)
        for v in [ABLATION["variant"]] + ABLATION_VARIANTS
        for s in SEEDS
    ]


def image_bundles():
    return layout.image_bundles(EXP)


def all_targets():
    return (
        [f"results/verify/{m}.json" for m in MODELS]
        + [
            "results/tables/table1.csv",
            "results/tables/table2.csv",
            "results/figures",
            "results/mlflow.json",
            "results/dvc.json",
        ]
        + (["results/ablations"] if ABLATION else [])
        + grad_noise_files()
    )


def grad_noise_files():
    """The study's gradient-noise tables (config `grad_noise:`), one per model."""
    return [f"results/grad_noise/{m}.csv" for m in MODELS] if EXP.cfg.get("grad_noise") else []


def model_spec(wildcards):
    """The fetched base model's load spec, as the stages load it (``marpipe.layout.base_model_spec``)."""
    return layout.base_model_spec(EXP.adapter(wildcards.model), f"resources/models/{wildcards.model}")


# the scorer check (rules/scorers.smk)
# (marpipe.metrics.scorer_check is not imported here: it would load torch on every snakemake call)
SCORER_CHECKS = (EXP.cfg.get("scorer_check") or {}).get("checks", {})


def scorer_checks(wildcards):
    """The check records an evaluate job of ``wildcards.suite`` waits for: those of the folders it reads."""
    read = EXP.weights_for(EXP.suite_scorers(wildcards.suite))
    return [f"results/scorer_check/{w}.json" for w in SCORER_CHECKS if w in read]
