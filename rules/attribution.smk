# Input-output attribution: one GPU job per (model, shard of samples), or the paper's released
# attributions, merged into one file per model.


rule attribute_shard:
    """Raw gradient x input matrices for one shard of samples of one model."""
    input:
        # ancient: the dataset's mtime must not rerun every shard; the digest param below reruns
        # exactly the shards whose samples changed
        dataset=ancient(config["dataset"]["samples"]),
        model=lambda w: dag.model_dir_input(config, w.model),
    output:
        "results/attribution/{model}/shards/shard-{shard}.npz",
    params:
        samples=lambda w: dag.shard_digest(config, w.shard),
        path=lambda w: model_setting(w.model, "path"),
        dtype=lambda w: model_setting(w.model, "dtype", "float32"),
        # scalars, not the config dict: reordering config keys must not rerun a shard; the
        # chunk size only trades memory for speed, so it is read in the command, not a param
        response=config["attribution"]["response"],
        max_new_tokens=config["attribution"]["max_new_tokens"],
        shard_size=config["attribution"]["shard_size"],
    resources:
        gpu=lambda w: model_setting(w.model, "gpus", 1),
    log:
        "logs/attribute_shard/{model}/shard-{shard}.log",
    benchmark:
        "benchmarks/attribute_shard/{model}/shard-{shard}.tsv"
    shell:
        "python -m workflow_scripts.leases {resources.gpu} --"
        " python -m workflow_scripts.attribution --model-dir {params.path} --model-id {wildcards.model}"
        " --dataset {input.dataset} --shard {wildcards.shard} --shard-size {params.shard_size}"
        " --response {params.response} --max-new-tokens {params.max_new_tokens}"
        " --chunk-size {config[attribution][chunk_size]} --dtype {params.dtype}"
        " --output {output} > {log} 2>&1"


rule convert_released_attributions:
    """The paper's released pickles of one model, read safely, in the shard format."""
    input:
        dataset=config["dataset"]["samples"],
        released=lambda w: "resources/paper/results/attribution_interpret/" + model_setting(w.model, "released"),
    output:
        "results/attribution/{model}/released.npz",
    log:
        "logs/convert_released_attributions/{model}.log",
    shell:
        "python -m workflow_scripts.released --dataset {input.dataset} --released-dir {input.released}"
        " --model {wildcards.model} --output {output} > {log} 2>&1"


def attribution_parts(wildcards):
    if model_setting(wildcards.model, "attribution", "computed") == "released":
        return [f"results/attribution/{wildcards.model}/released.npz"]
    return expand(
        "results/attribution/{model}/shards/shard-{shard}.npz",
        model=wildcards.model,
        shard=dag.shard_ids(config),
    )


rule merge_attributions:
    """All samples of one model in one file."""
    input:
        attribution_parts,
    output:
        "results/attribution/{model}/attributions.npz",
    log:
        "logs/merge_attributions/{model}.log",
    shell:
        "python -m workflow_scripts.shards merge {output} {input} > {log} 2>&1"
