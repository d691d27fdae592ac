# MAR-GRPO reproduction pipeline: base models -> (head warm-up) -> GRPO variants ->
# checkpoint selection -> generation -> evaluation -> Tables 1-2, figures, report.
#
#   snakemake --profile slurm all                              the paper (config.yaml) on SLURM
#   snakemake --profile local --configfile config/small.yaml   the small world on a laptop
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/scorers.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),


onstart:
    refuse_unlocked()
    refuse_undeployed()
    tracking_server.ensure_tracking_server(config["mlflow"].get("tracking_uri"), host=config["mlflow"].get("host"))


onsuccess:
    tracking_server.stop_tracking_server()


onerror:
    tracking_server.stop_tracking_server()
