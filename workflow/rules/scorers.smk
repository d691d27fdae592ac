# The instruments checked before they measure: each CLIP-family scorer's pinned weights, measured
# with clip-benchmark (config `scorer_check:`); every evaluate job waits for the checks of the
# folders its suite reads, and a scorer outside its expected range stops them, naming it.
rule check_scorer:
    input:
        weights=lambda w: weights_for_scorers([SCORER_CHECKS[w.weights]["scorer"]]),
    output:
        json="results/scorer_check/{weights}.json",
        table=report(
            "results/scorer_check/{weights}.csv", caption="../report/scorer_check.rst", category="Scorer checks"
        ),
    log:
        "logs/check_scorer/{weights}.log",
    benchmark:
        "benchmarks/check_scorer/{weights}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG,
    shell:
        "marpipe check-scorer {wildcards.weights} --config {params.config} --out {output.json}"
        " --table {output.table} > {log} 2>&1"
