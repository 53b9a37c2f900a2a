# Evaluation of every SFT checkpoint under each inference mode -> one normalised metrics JSON each.


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        metrics=f"{RES}/metrics/{{variant}}/{{method}}/p{{p}}/r{{r}}/{{mode}}.json",
    params:
        e=eval_params,
        cmd=eval_command(),
    conda:
        "../../environment.yml"
    log:
        f"logs/{RECIPE}/eval/{{variant}}/{{method}}/p{{p}}/r{{r}}/{{mode}}.log",
    benchmark:
        f"benchmarks/{RECIPE}/eval/{{variant}}/{{method}}/p{{p}}/r{{r}}/{{mode}}.tsv"
    group:
        "eval"
    threads: THREADS["eval"]
    resources:
        **res("eval", "eval"),
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --ckpt {params.e[ckpt]} --mode {wildcards.mode} "
        "--method {params.e[method]} --ratio {params.e[p]} --point {params.e[point]:q} --out {output.metrics} "
        "> {log} 2>&1"
