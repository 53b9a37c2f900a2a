# Tiny: synthesize everything. Real: download, verify, unpack / convert into resources/ for offline use.

if config["data"]["kind"] == "synthetic":

    rule synthesize:
        output:
            meta=f"{config['data']['root']}/synth_meta.json",
        params:
            py=PY,
            # data.synth, and the image geometry of the model that reads the images (model.tiny)
            args=" ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in recipe.synth_settings(config).items()),
            root=lambda wc, output: os.path.dirname(output.meta),
        conda:
            "../../environment.yml"
        log:
            f"logs/{RECIPE}/synthesize.log",
        shell:
            "{params.py} -m dualspeed.data synth --out {params.root} {params.args} > {log} 2>&1"

elif config["data"]["kind"] == "local":
    # Your own data, on disk: the data check of every file, your benchmarks as lmms-eval tasks, and for the tiny
    # model its tokenizer and its stand-ins' data, derived from your data into data.root (docs/own-data.md)

    rule prepare_local:
        input:
            # a changed data or task file prepares again (an edited image does not: the training jobs' data
            # check still decodes every image)
            [p for p in (config["data"].get("pretrain_json"), config["data"]["sft_json"]) if p],
            [t["json"] for t in config["eval"].get("local_tasks", {}).values()],
        output:
            meta=recipe.data_paths(config)["meta"],
        params:
            py=PY,
            args=prepare_local_args(),
            root=lambda wc, output: os.path.dirname(output.meta),
        conda:
            "../../environment.yml"
        log:
            f"logs/{RECIPE}/prepare_local.log",
        shell:
            "{params.py} -m dualspeed.data local --out {params.root:q} {params.args} > {log} 2>&1"

if config["data"]["kind"] in DOWNLOADS["sets"]:
    # Real data: every file listed in config/downloads.yaml, fetched with resume and checked against
    # its size/sha256 (or pinned on first download, see dualspeed/data/fetch.py).

    rule download:
        output:
            "resources/downloads/{name}.ok",
        params:
            py=PY,
            entry=lambda wc: json.dumps(DOWNLOADS["files"][wc.name]),
        conda:
            "../../environment.yml"
        log:
            "logs/downloads/{name}.log",
        wildcard_constraints:
            name=_alt(DOWNLOADS["files"]),
        resources:
            runtime=lambda wc, attempt: 240 * attempt,
        retries: 3
        shell:
            "{params.py} -m dualspeed.data fetch file --entry {params.entry:q} --stamp {output} > {log} 2>&1"


if config["data"]["kind"] != "synthetic":

    rule benchmark_to_local:
        output:
            "resources/benchmarks/{bench}.ok",
        params:
            py=PY,
            entry=lambda wc: wc.bench,
        conda:
            "../../environment.yml"
        log:
            "logs/downloads/bench_{bench}.log",
        wildcard_constraints:
            bench=_alt(DOWNLOADS["benchmarks"]),
        resources:
            runtime=lambda wc, attempt: 120 * attempt,
        retries: 3
        shell:
            "{params.py} -m dualspeed.data fetch benchmark --entry {params.entry:q} --cache resources/hf_home "
            "--stamp {output} > {log} 2>&1"
