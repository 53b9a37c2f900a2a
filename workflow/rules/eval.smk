# Evaluation of every SFT checkpoint under each inference mode -> one normalised metrics JSON per mode.


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        # every inference mode of one checkpoint in one job: one model load, one lmms-eval import
        metrics=[f"{RES}/metrics/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}/{m}.json" for m in MODES],
    params:
        e=eval_params,
        cmd=eval_command(),
        modes=",".join(MODES),
        out=lambda wc: metrics_path(wc_point(wc), "{mode}"),  # the CLI's per-mode template
    conda:
        "../../environment.yml"
    log:
        f"logs/{RECIPE}/eval/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}.log",
    benchmark:
        f"benchmarks/{RECIPE}/eval/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}.tsv"
    group:
        "eval"
    threads: THREADS["eval"]
    resources:
        **res("eval", "eval"),
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --ckpt {params.e[ckpt]} --mode {params.modes} "
        "--method {params.e[method]} --ratio {params.e[p]} --seed {wildcards.seed} --point {params.e[point]:q} "
        "--out {params.out:q} > {log} 2>&1"


# Training-free VTP: the baseline checkpoint under pruned inference with each method at the grid's p.
rule evaluate_vtp:
    input:
        unpack(vtp_eval_inputs),
    output:
        metrics=f"{RES}/vtp_inference/{{method}}/p{{p}}.json",
    params:
        ckpt=f"{recipe.sft_dir(config, BASELINE)}/hf",
        point=lambda wc: json.dumps({"variant": "baseline", "method": "none", "p": 0.0, "r": 0.0, "seed": BASELINE.seed,
                                     "vtp_inference": {"method": wc.method, "p": P_OF[wc.p]}}),
        ratio=lambda wc: P_OF[wc.p],
        # the baseline's export carries no CLIP text tower (none of its runs reads relevance): pass the stages' one
        clip=lambda wc: recipe.vtp_eval_clip(config, wc.method),
        cmd=eval_command(),
        seed=BASELINE.seed,
    conda:
        "../../environment.yml"
    log:
        f"logs/{RECIPE}/eval/vtp_inference/{{method}}/p{{p}}.log",
    benchmark:
        f"benchmarks/{RECIPE}/eval/vtp_inference/{{method}}/p{{p}}.tsv"
    group:
        "eval"
    threads: THREADS["eval"]
    resources:
        **res("eval", "eval"),
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --ckpt {params.ckpt} --mode pruned --method {wildcards.method} "
        "--ratio {params.ratio} --seed {params.seed} --clip-text {params.clip:q} --point {params.point:q} "
        "--out {output.metrics} > {log} 2>&1"


# PyramidDrop's own inference (the LLM dropping visual tokens in stages): each PyramidDrop row with the settings it
# trained with, and the baseline's checkpoint used training-free with the config's pdrop settings.
rule evaluate_pdrop:
    input:
        unpack(eval_inputs),
    output:
        metrics=f"{RES}/metrics/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}/pdrop.json",
    params:
        e=eval_params,
        cmd=eval_command(),
        pdrop=recipe.pdrop_eval_args(config),
    conda:
        "../../environment.yml"
    log:
        f"logs/{RECIPE}/eval/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}.pdrop.log",
    benchmark:
        f"benchmarks/{RECIPE}/eval/{{variant}}/{{method}}/p{{p}}/r{{r}}/s{{seed}}.pdrop.tsv"
    group:
        "eval"
    threads: THREADS["eval"]
    resources:
        **res("eval", "eval"),
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --ckpt {params.e[ckpt]} --mode pdrop {params.pdrop} "
        "--seed {wildcards.seed} --point {params.e[point]:q} --out {output.metrics} > {log} 2>&1"
