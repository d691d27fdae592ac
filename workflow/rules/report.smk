# Tables 1-2 beside the paper's, figures, MLflow sync and DVC versioning.
from marpipe.workflow_hooks import figure_labels, figure_subcategory


localrules:
    tables,
    figures,
    ablations,
    mlflow_sync,
    dvc_push,


rule tables:
    input:
        score_files(),
    output:
        t1=report("results/tables/table1.csv", caption="../report/table1.rst", category="Tables"),
        t2=report("results/tables/table2.csv", caption="../report/table2.rst", category="Tables"),
        md="results/tables/tables.md",
        html=report("results/tables/tables.html", caption="../report/tables.rst", category="Tables"),
        summary="results/tables/tables_summary.html",  # shown on the report's landing page (workflow.rst)
    log:
        "logs/tables.log",
    benchmark:
        "benchmarks/tables.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
    shell:
        "marpipe tables --config {params.config} --scores {input} --out-dir results/tables > {log} 2>&1"


rule figures:
    input:
        metrics_files(),
        image_bundles(),
    output:
        report(
            directory("results/figures"),
            patterns=["dynamics_{model}_{reward}.png", "samples_{model}.png"],
            caption="../report/figures.rst",  # one caption per output: it branches on the pattern's wildcards
            category="Figures",
            subcategory=figure_subcategory,
            labels=figure_labels,
        ),
    log:
        "logs/figures.log",
    benchmark:
        "benchmarks/figures.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
    shell:
        "marpipe figures --config {params.config} --out-dir {output} > {log} 2>&1"


rule ablations:
    # Fig. 7: the sweep over top_k, tau and S (config `ablations:`; the points are Paramspace folders)
    input:
        scores=ablation_score_files(),
        runs=ablation_metrics_files(),
    output:
        report(
            directory("results/ablations"),
            patterns=["fig7_{panel}.png"],
            caption="../report/ablations.rst",
            category="Fig. 7: ablations",
        ),
    log:
        "logs/ablations.log",
    benchmark:
        "benchmarks/ablations.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
    shell:
        "marpipe ablations --config {params.config} --scores {input.scores} --out-dir {output} > {log} 2>&1"


rule grad_noise:
    # Sec. 3.2-3.3's mechanism measured directly: the AR and head gradients' noise under resampled
    # head noise, per variant, S and top_k (config `grad_noise:`; the study)
    input:
        base_model("{model}"),
    output:
        report("results/grad_noise/{model}.csv", caption="../report/grad_noise.rst", category="Gradient noise"),
    log:
        "logs/grad_noise/{model}.log",
    benchmark:
        "benchmarks/grad_noise/{model}.tsv"
    conda:
        env_for
    params:
        model=model_spec,
        draws=lambda w: EXP.cfg["grad_noise"]["draws"],
        preset=lambda w: EXP.cfg["grad_noise"]["preset"],
    shell:
        "marpipe bench grad-noise --model {params.model} --draws {params.draws} --preset {params.preset}"
        " --csv {output} > {log} 2>&1"


rule mlflow_sync:
    input:
        metrics_files(),
        score_files(),
    output:
        "results/mlflow.json",
    log:
        "logs/mlflow_sync.log",
    benchmark:
        "benchmarks/mlflow_sync.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
    shell:
        "marpipe mlflow-sync --config {params.config} --out {output} > {log} 2>&1"


rule dvc_push:
    # Versions every output of the DAG but its own (resources/ too: pinned downloads, or the small
    # world's pre-trained models), then its own record results/dvc.json, so that a fresh clone
    # after `dvc pull` lacks no output and `snakemake --touch` makes the whole DAG up to date.
    input:
        "results/tables/table1.csv",
        "results/tables/table2.csv",
        "results/figures",
        "results/mlflow.json",
        expand("results/verify/{model}.json", model=MODELS),
        ["results/ablations"] if ABLATION else [],
        grad_noise_files(),
    output:
        "results/dvc.json",
    log:
        "logs/dvc_push.log",
    benchmark:
        "benchmarks/dvc_push.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
        ablations=" ".join(
            (["results/ablations"] if ABLATION else []) + (["results/grad_noise"] if grad_noise_files() else [])
        ),
    shell:
        "marpipe dvc-push --config {params.config} --out {output} resources results/verify results/tables"
        " results/figures results/scorer_check results/scores results/images results/selected results/runs results/mlflow.json"
        " {params.ablations} > {log} 2>&1"
