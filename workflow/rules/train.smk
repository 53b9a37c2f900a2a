# Training: (tiny only) warm-up -> pretraining per pretrain tag -> SFT per grid point.
# Each run dir holds config.resolved.yaml, provenance.json, steps.csv, timing.json and hf/.


if config.get("warmup", {}).get("enabled", False):

    rule warmup:
        input:
            data_ready(),
        output:
            timing=f"{RUNS}/warmup/timing.json",
        params:
            spec=lambda wc: json.dumps(recipe.warmup_spec(config)),
            launch=launcher("train"),
        conda:
            "../../environment.yml"
        log:
            f"logs/{RECIPE}/warmup.log",
        benchmark:
            f"benchmarks/{RECIPE}/warmup.tsv"
        threads: THREADS.get("warmup", THREADS["train"])
        resources:
            **res("train", "warmup"),
        shell:
            "OMP_NUM_THREADS={threads} {params.launch} dualspeed.train --spec {params.spec:q} > {log} 2>&1"


rule pretrain:
    input:
        pretrain_inputs,
    output:
        timing=f"{RUNS}/pretrain/{{ptag}}/timing.json",
    params:
        spec=lambda wc: json.dumps(recipe.pretrain_spec(config, PRETRAIN[wc.ptag])),
        launch=launcher("train"),
    conda:
        "../../environment.yml"
    log:
        f"logs/{RECIPE}/pretrain/{{ptag}}.log",
    benchmark:
        f"benchmarks/{RECIPE}/pretrain/{{ptag}}.tsv"
    threads: THREADS["train"]
    resources:
        **res("train", "pretrain"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} dualspeed.train --spec {params.spec:q} > {log} 2>&1"


rule sft:
    input:
        sft_inputs,
    output:
        timing=f"{RUNS}/sft/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}/timing.json",
    params:
        spec=lambda wc: json.dumps(recipe.sft_spec(config, wc_point(wc))),
        launch=launcher("train"),
    conda:
        "../../environment.yml"
    log:
        f"logs/{RECIPE}/sft/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}.log",
    benchmark:
        f"benchmarks/{RECIPE}/sft/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}.tsv"
    threads: THREADS["train"]
    resources:
        **res("train", "sft"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} dualspeed.train --spec {params.spec:q} > {log} 2>&1"
