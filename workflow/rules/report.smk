# Tables and figures: CPU-only, run on the submitting host even under the Slurm profile.

localrules:
    table,
    figure,


rule table:
    input:
        unpack(lambda wc: table_inputs(wc.table)),
    output:
        report(
            multiext(f"{RES}/tables/{{table}}", ".md", ".csv", ".tex"),
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
    params:
        py=PY,
        cfg=REPORT_CFG,
        prefix=f"{RES}/tables/{{table}}",
    conda:
        "../../environment.yml"
    log:
        f"logs/{RECIPE}/report/table_{{table}}.log",
    shell:
        "{params.py} -m dualspeed.report.tables --config-json {params.cfg:q} --table {wildcards.table} "
        "--out {params.prefix} > {log} 2>&1"


rule figure:
    input:
        figure_inputs,
    output:
        report(
            multiext(f"{FIGS}/{{figure}}", ".png", ".pdf"),
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
    params:
        py=PY,
        cfg=REPORT_CFG,
        prefix=f"{FIGS}/{{figure}}",
    wildcard_constraints:
        figure="pareto|curves|speedup",
    conda:
        "../../environment.yml"
    log:
        f"logs/{RECIPE}/report/figure_{{figure}}.log",
    shell:
        "{params.py} -m dualspeed.report.figures --config-json {params.cfg:q} --figure {wildcards.figure} "
        "--out {params.prefix} > {log} 2>&1"
