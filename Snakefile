# DualSpeed reproduction pipeline: config -> data -> train (pretrain, SFT) -> eval -> tables/figures.
#   snakemake --cores all                                   tiny default on a CPU
#   snakemake --cores all --profile slurm --configfile config/llava15_7b.yaml
#   snakemake results/tables/ablation.md                    one table and only the runs it needs
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
