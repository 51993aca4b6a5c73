# Input-output attribution: one GPU job per (model, shard of samples), or the paper's released
# attributions, merged into one file per model.


rule attribute_shard:
    """Raw gradient x input matrices for one shard of samples of one model."""
    input:
        # ancient: the dataset's mtime must not rerun every shard; the digest param below reruns
        # exactly the shards whose samples changed
        dataset=ancient(config["dataset"]["samples"]),
        model=per_model(lambda model: plan_models.model_dir_input(config, model)),
    output:
        "results/attribution/{model}/shards/shard-{shard}.npz",
    log:
        "logs/attribute_shard/{model}/shard-{shard}.log",
    benchmark:
        "benchmarks/attribute_shard/{model}/shard-{shard}.tsv"
    conda:
        "../envs/shiftlens.yaml"
    resources:
        gpu=per_model(lambda model: model_setting(model, "gpus", 1)),
    params:
        code=method_version("attribution"),
        samples=shard_digest,
        path=per_model(lambda model: model_setting(model, "path")),
        # this model's mode only: changing another model's reruns none of this model's shards
        precision=per_model(lambda model: dag.attribution_precision(config, model)),
        # scalars, not the config dict: reordering config keys must not rerun a shard; the chunk
        # size, backward batch, autodiff mode and generate batch only trade memory for speed: read in the
        # command, not params
        response=config["attribution"]["response"],
        max_new_tokens=config["attribution"]["max_new_tokens"],
        shard_size=config["attribution"]["shard_size"],
    shell:
        "python -m workflow_scripts.leases {resources.gpu:q} --"
        " python -m workflow_scripts.attribution --model-dir={params.path:q} --model-id {wildcards.model:q}"
        " --dataset {input.dataset:q} --shard {wildcards.shard:q} --shard-size={params.shard_size:q}"
        " --response={params.response:q} --max-new-tokens={params.max_new_tokens:q}"
        " --chunk-size {config[attribution][chunk_size]:q} --backward-batch {config[attribution][backward_batch]:q}"
        " --autodiff {config[attribution][autodiff]:q} --generate-batch {config[attribution][generate_batch]:q}"
        " --precision={params.precision:q}"
        " --output {output:q} 3>&2 > {log:q} 2>&1"


rule convert_released_attributions:
    """The paper's released pickles of one model, read safely, in the shard format."""
    input:
        dataset=config["dataset"]["samples"],
        released=lambda w: dag.released_dir(config, w.model),
    output:
        "results/attribution/{model}/released.npz",
    log:
        "logs/convert_released_attributions/{model}.log",
    benchmark:
        "benchmarks/convert_released_attributions/{model}.tsv"
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("released"),
    shell:
        "python -m workflow_scripts.released --dataset {input.dataset:q} --released-dir {input.released:q}"
        " --model {wildcards.model:q} --output {output:q} 3>&2 > {log:q} 2>&1"


rule merge_attributions:
    """All computed samples of one model in one file (released ones are never merged here)."""
    input:
        attribution_shards,
    output:
        "results/attribution/{model}/attributions.npz",
    log:
        "logs/merge_attributions/{model}.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("shards"),
        # what went into the shards: a change reruns the merge even when its file survived
        provenance=lambda w: dag.attribution_provenance(config, [w.model]),
    shell:
        "python -m workflow_scripts.shards merge {output:q} {input:q} > {log:q} 2>&1"
