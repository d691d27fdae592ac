# Images for each benchmark and their scores, per row (base model or selected checkpoint).


rule generate:
    input:
        unpack(row_weights),
        base=base_model("{model}"),
        prompts=suite_prompts,
    output:
        "results/images/{model}/{row}/{suite}.npz",
    log:
        "logs/generate/{model}/{row}/{suite}.log",
    benchmark:
        "benchmarks/generate/{model}/{row}/{suite}.tsv"
    conda:
        env_for
    params:
        config=CONFIG,
        weights=weights_args,
        marpipe=marpipe,
    shell:
        "{params.marpipe} generate --config {params.config} --model {wildcards.model} --row {wildcards.row}"
        " --suite {wildcards.suite} --prompt-dir resources/prompts {params.weights} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        unpack(row_weights),
        images="results/images/{model}/{row}/{suite}.npz",
        scorers=lambda w: weights_for_scorers(EXP.suite_scorers(w.suite)),
        checked=scorer_checks,
    output:
        "results/scores/{model}/{row}/{suite}.json",
    log:
        "logs/evaluate/{model}/{row}/{suite}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{row}/{suite}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
        row=row_args,
        selection=lambda w, input: f"--selection {input.selection}" if "selection" in input.keys() else "",
    shell:
        "marpipe evaluate --config {params.config} --model {wildcards.model} {params.row}"
        " --suite {wildcards.suite} --images {input.images} {params.selection} --out {output} > {log} 2>&1"
