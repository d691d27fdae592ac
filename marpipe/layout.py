"""Where the pipeline's results lie, below a results folder (``results`` by default): a training run
in ``runs/<model>/<reward>/<variant>/seed<N>/``, its selected checkpoint in ``selected/``, a row's
images and scores in ``images/`` and ``scores/<model>/<row id>/<suite>``. The workflow's input
functions (``workflow/rules/common.smk``) and the tables, figures, ablations and MLflow sync read
these paths from here; the rules' output patterns are the same paths with wildcards, and a dry run
fails where the two disagree. A fetched base model's load spec is also built here, once for the
stages and the workflow."""
from __future__ import annotations

from pathlib import Path

from marpipe.experiment import SUITES

RESULTS = "results"
MODEL_FILE = "model.safetensors"      # a tiny base model's weights, in its folder
RUN_METRICS_GLOB = "runs/*/*/**/seed*/metrics.jsonl"   # every training run's metrics, below the results folder


def base_model_spec(adapter: str, folder: str | Path) -> str:
    """The :func:`marpipe.models.registry.load_model` spec of the base model fetched into ``folder``
    (``resources/models/<model>``): its weights file ``FOLDER/model.safetensors`` for the ``tiny``
    adapter, else ``ADAPTER:FOLDER``. The stages load it (:func:`marpipe.stages.resources.model_spec`)
    and the workflow's grad-noise rule passes it to ``marpipe bench grad-noise --model``."""
    return str(Path(folder) / MODEL_FILE) if adapter == "tiny" else f"{adapter}:{folder}"


def run_dir(model: str, reward: str, variant: str, seed: int | str, results: str | Path = RESULTS) -> str:
    """A training run's folder (``summary.json``, ``metrics.jsonl``, checkpoints); an ablation point's
    variant is a path of its own (``sim/top_k~0.1/tau~0.0/S~3``)."""
    return f"{results}/runs/{model}/{reward}/{variant}/seed{seed}"


def run_of(metrics: str | Path, results: str | Path = RESULTS) -> tuple[str, str, str, int]:
    """Inverse of :func:`run_dir` for a file in a run's folder: ``(model, reward, variant, seed)``."""
    model, reward, *variant, seed = Path(metrics).relative_to(Path(results) / "runs").parts[:-1]
    return model, reward, "/".join(variant), int(seed.removeprefix("seed"))


def run_metrics(model: str, reward: str, variant: str, seed: int | str, results: str | Path = RESULTS) -> str:
    return f"{run_dir(model, reward, variant, seed, results)}/metrics.jsonl"


def run_summary(model: str, reward: str, variant: str, seed: int | str, results: str | Path = RESULTS) -> str:
    return f"{run_dir(model, reward, variant, seed, results)}/summary.json"


def warm_weights(model: str, results: str | Path = RESULTS) -> str:
    """The warmed-up diffusion head a model's GRPO runs start from (where the model has a warm-up)."""
    return f"{results}/runs/{model}/warmup/warm.safetensors"


def selected(model: str, reward: str, variant: str, seed: int | str, results: str | Path = RESULTS) -> str:
    """A run's selected checkpoint, without suffix: ``.safetensors`` (weights) and ``.json`` (the choice)."""
    return f"{results}/selected/{model}/{reward}/{variant}/seed{seed}"


def images(model: str, row: str, suite: str, results: str | Path = RESULTS) -> str:
    """A row's image bundle of a suite (``row``: a row id, :func:`marpipe.experiment.row_id`)."""
    return f"{results}/images/{model}/{row}/{suite}.npz"


def scores(model: str, row: str, suite: str, results: str | Path = RESULTS) -> str:
    """A row's score file of a suite."""
    return f"{results}/scores/{model}/{row}/{suite}.json"


def evaluated(exp) -> list[tuple[str, str, str]]:
    """Every (model, row id, suite) whose scores fill Tables 1-2 (each row once per training seed)."""
    return [(row.model, row.id, suite) for suite in SUITES for row in exp.suite_rows(suite)]


def score_files(exp, results: str | Path = RESULTS) -> list[str]:
    """The score files Tables 1-2 read."""
    return [scores(m, r, s, results) for m, r, s in evaluated(exp)]


def image_bundles(exp, results: str | Path = RESULTS) -> list[str]:
    """The image bundles of Tables 1-2's rows."""
    return [images(m, r, s, results) for m, r, s in evaluated(exp)]
