# Base models, scorer weights and prompt sets (paper: pinned downloads; small world: built here).


rule download_base_model:
    output:
        f"resources/models/{{model}}/{MANIFEST}",
    log:
        "logs/download_base_model/{model}.log",
    benchmark:
        "benchmarks/download_base_model/{model}.tsv"
    conda:
        env_for
    params:
        config=CONFIG,
        marpipe=marpipe,
    shell:
        "{params.marpipe} fetch-model {wildcards.model} --config {params.config} --no-progress > {log} 2>&1"


rule verify_base_model:
    input:
        base=base_model("{model}"),
    output:
        json="results/verify/{model}.json",
        grid=report("results/verify/{model}.png", caption="../report/verify.rst", category="Base models"),
    log:
        "logs/verify_base_model/{model}.log",
    benchmark:
        "benchmarks/verify_base_model/{model}.tsv"
    conda:
        env_for
    params:
        config=CONFIG,
        marpipe=marpipe,
    shell:
        "{params.marpipe} verify-model {wildcards.model} --config {params.config} --out {output.json} --grid {output.grid} > {log} 2>&1"


rule download_weights:
    output:
        f"resources/metrics/{{weights}}/{MANIFEST}",
    log:
        "logs/download_weights/{weights}.log",
    benchmark:
        "benchmarks/download_weights/{weights}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
    shell:
        "marpipe fetch-weights {wildcards.weights} --config {params.config} > {log} 2>&1"


rule prompts:
    output:
        "resources/prompts/{prompts}.jsonl",
    log:
        "logs/prompts/{prompts}.log",
    benchmark:
        "benchmarks/prompts/{prompts}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
    shell:
        "marpipe fetch-prompts {wildcards.prompts} --config {params.config} --out {output} > {log} 2>&1"
