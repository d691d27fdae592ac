# The instruments checked before they measure: each CLIP-family scorer's pinned weights, measured
# with clip-benchmark (config `scorer_check:`); every evaluate job waits for the checks of the
# folders its suite reads, and a scorer outside its expected range stops them, naming it.
# (marpipe.metrics.scorer_check is not imported here: it would load torch on every snakemake call)
SCORER_CHECKS = (EXP.cfg.get("scorer_check") or {}).get("checks", {})


def scorer_checks(wildcards):
    """The check records an evaluate job of ``wildcards.suite`` waits for: those of the folders it reads."""
    read = EXP.weights_for(EXP.suite_scorers(wildcards.suite))
    return [f"results/scorer_check/{w}.json" for w in SCORER_CHECKS if w in read]


rule check_scorer:
    input:
        weights=lambda w: weights_for_scorers([SCORER_CHECKS[w.weights]["scorer"]]),
    output:
        json="results/scorer_check/{weights}.json",
        table=report("results/scorer_check/{weights}.csv", caption="../report/scorer_check.rst",
                     category="Scorer checks"),
    params:
        config=CONFIG,
    log:
        "logs/check_scorer/{weights}.log",
    benchmark:
        "benchmarks/check_scorer/{weights}.tsv"
    shell:
        "marpipe check-scorer {wildcards.weights} --config {params.config} --out {output.json}"
        " --table {output.table} > {log} 2>&1"
