# Harmon's diffusion-head warm-up, the four GRPO variants, and checkpoint selection.


rule warmup_head:
    input:
        base=base_model("{model}"),
        verified="results/verify/{model}.json",
        prompts="resources/prompts/train.jsonl",
        reward=reward_weights(EXP.cfg["warmup"]["reward"]),
    output:
        "results/runs/{model}/warmup/warm.safetensors",
    log:
        "logs/warmup_head/{model}.log",
    benchmark:
        "benchmarks/warmup_head/{model}.tsv"
    conda:
        env_for
    params:
        config=CONFIG,
        run=lambda w, output: str(Path(output[0]).parent),
        marpipe=marpipe,
    shell:
        "{params.marpipe} warmup --config {params.config} --model {wildcards.model} --prompts {input.prompts}"
        " --out {params.run} --no-progress > {log} 2>&1"


rule train:
    input:
        unpack(start_weights),
        base=base_model("{model}"),
        verified="results/verify/{model}.json",
        prompts="resources/prompts/train.jsonl",
        reward=lambda w: reward_weights(w.reward),
    output:
        "results/runs/{model}/{reward}/{variant}/seed{seed}/summary.json",
    log:
        "logs/train/{model}/{reward}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{model}/{reward}/{variant}/seed{seed}.tsv"
    conda:
        env_for
    params:
        config=CONFIG,
        run=lambda w, output: str(Path(output[0]).parent),
        start=lambda w, input: f"--base-weights {input.warm}" if "warm" in input.keys() else "",
        launch=launcher,
    shell:
        "{params.launch} train --config {params.config} --model {wildcards.model} --reward {wildcards.reward}"
        " --variant {wildcards.variant} --seed {wildcards.seed} --prompts {input.prompts} --out {params.run}"
        " {params.start}"
        " --no-progress > {log} 2>&1"


rule select_checkpoint:
    input:
        "results/runs/{model}/{reward}/{variant}/seed{seed}/summary.json",
    output:
        weights="results/selected/{model}/{reward}/{variant}/seed{seed}.safetensors",
        json="results/selected/{model}/{reward}/{variant}/seed{seed}.json",
    log:
        "logs/select_checkpoint/{model}/{reward}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/select_checkpoint/{model}/{reward}/{variant}/seed{seed}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
        run=lambda w, input: str(Path(input[0]).parent),
    shell:
        "marpipe select --config {params.config} --reward {wildcards.reward} --variant {wildcards.variant}"
        " --run {params.run} --out-weights {output.weights} --out-json {output.json} > {log} 2>&1"
