# Config validation, wildcard constraints and the input functions: every "which files
# does this job need" question is answered here.
import yaml
from pathlib import Path

from marpipe import experiment as E
from marpipe.stages import session

session.ensure_cli_on_path()

# --configfile replaces config.yaml instead of being merged into it (two worlds never mix); each
# file is read again strictly (duplicate keys are an error, naming the file and line)
config.clear()
for _path in workflow.overwrite_configfiles or ["config.yaml"]:
    config.update(E.read_config(_path))
config.update(workflow.config_settings.overwrite_config)

EXP = E.load(config, cache=".marpipe/validated")  # ConfigError naming the key: nothing is submitted
# The validated config every job reads (content-addressed, so re-parsing in a job writes the same file)
CONFIG = f".marpipe/config-{EXP.config_hash}.yaml"
Path(CONFIG).parent.mkdir(exist_ok=True)
if not Path(CONFIG).exists():
    Path(CONFIG).write_text(yaml.safe_dump(EXP.to_json(), sort_keys=False))

MODELS = EXP.models
REWARDS = EXP.trained_rewards
VARIANTS = EXP.variants
SUITES = list(E.SUITES)
MANIFEST = "MANIFEST.sha256"


wildcard_constraints:
    model="|".join(MODELS),
    reward="|".join(REWARDS),
    variant="|".join(VARIANTS),
    row="base|" + "|".join(f"{r}-{v}" for r in REWARDS for v in VARIANTS),
    suite="|".join(SUITES),
    weights="|".join(EXP.cfg["weights"]),
    prompts="|".join(EXP.cfg["prompts"]),


def env_for(wildcards):
    """The conda env of a model's rule family (the official NOVA/Harmon code for the paper)."""
    adapter = EXP.cfg["models"][wildcards.model].get("adapter", "tiny")
    return f"../../envs/{'train' if adapter == 'tiny' else adapter}.yaml"


def launcher(resources):
    """``marpipe`` for one device; ``torchrun`` over the job's GPUs when the profile asks for several."""
    gpus = int(resources.get("gpu", 0) or 0)
    return f"torchrun --standalone --nproc_per_node={gpus} -m marpipe" if gpus > 1 else "marpipe"


def base_model(model):
    return f"resources/models/{model}/{MANIFEST}"


def weights_for_scorers(scorers):
    return [f"resources/metrics/{w}/{MANIFEST}" for w in EXP.weights_for(scorers)]


def reward_weights(reward):
    return weights_for_scorers(EXP.reward_scorers(reward))


def start_weights(wildcards):
    """GRPO starts from the base model, or from the warmed-up head where the model has one."""
    if EXP.has_warmup(wildcards.model):
        return {"warm": f"results/runs/{wildcards.model}/warmup/warm.safetensors"}
    return {}


def row_weights(wildcards):
    """A row's weights: the selected checkpoint, or nothing for the base model."""
    if wildcards.row == "base":
        return {}
    reward, variant = wildcards.row.split("-", 1)
    return {"weights": f"results/selected/{wildcards.model}/{reward}/{variant}.safetensors",
            "selection": f"results/selected/{wildcards.model}/{reward}/{variant}.json"}


def suite_prompts(wildcards):
    return [f"resources/prompts/{p}.jsonl" for p in sorted(set(EXP.suite_prompt_sets(wildcards.suite).values()))]


def evaluated():
    """Every (model, row, suite) whose scores fill Tables 1-2."""
    return [(row.model, row.name, suite) for suite in SUITES for row in EXP.suite_rows(suite)]


def score_files():
    return [f"results/scores/{m}/{r}/{s}.json" for m, r, s in evaluated()]


def metrics_files():
    return [f"results/runs/{m}/{r}/{v}/summary.json" for m in MODELS for r in REWARDS for v in VARIANTS]


def image_bundles():
    return [f"results/images/{m}/{r}/{s}.npz" for m, r, s in evaluated()]


def all_targets():
    return (
        [f"results/verify/{m}.json" for m in MODELS]
        + ["results/tables/table1.csv", "results/tables/table2.csv", "results/figures",
           "results/mlflow.json", "results/dvc.json"]
    )

