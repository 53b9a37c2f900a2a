# Training: (tiny only) the stand-ins for CLIP and Vicuna -> pretraining per pretrain tag -> SFT per grid point.
# Each run dir holds config.resolved.yaml, provenance.json, steps.csv, timing.json and hf/.


if config["model"]["source"] == "tiny":

    # CLIP's and Vicuna's own pretraining, each stand-in alone: shared by every run and seed
    rule standin:
        input:
            data_ready(),
        output:
            timing=f"{RUNS}/standins/{{kind}}/timing.json",
        params:
            py=PY,
            spec=lambda wc: json.dumps(recipe.standin_spec(config, wc.kind)),
        wildcard_constraints:
            kind="|".join(recipe.STANDINS),
        conda:
            "../../environment.yml"
        log:
            f"logs/{RECIPE}/standins/{{kind}}.log",
        benchmark:
            f"benchmarks/{RECIPE}/standins/{{kind}}.tsv"
        threads: THREADS.get("standin", THREADS["train"])
        resources:
            **res("train", "standin"),
        shell:
            "OMP_NUM_THREADS={threads} {params.py} -m dualspeed.train.standin --spec {params.spec:q} > {log} 2>&1"


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
