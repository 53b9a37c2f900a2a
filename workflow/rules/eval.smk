# Evaluation of every SFT checkpoint under each inference mode -> one normalised metrics JSON each.


rule evaluate:
    input:
        timing=f"{RUNS}/sft/{{variant}}/{{method}}/p{{p}}/r{{r}}/timing.json",
    output:
        metrics=f"{RES}/metrics/{{variant}}/{{method}}/p{{p}}/r{{r}}/{{mode}}.json",
    params:
        e=eval_params,
        tasks=",".join(config["eval"]["tasks"]),
        data=config["data"].get("root", ""),
        limit=config["eval"].get("limit", 0),
        bs=config["eval"]["batch_size"],
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
        "OMP_NUM_THREADS={threads} python -m dualspeed.evaluate --ckpt {params.e[ckpt]} --data {params.data} "
        "--mode {wildcards.mode} --method {params.e[method]} --ratio {params.e[p]} --tasks {params.tasks} "
        "--limit {params.limit} --batch-size {params.bs} --point {params.e[point]:q} --out {output.metrics} > {log} 2>&1"
