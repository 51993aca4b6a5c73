# Feed-forward concept explanations: one GPU job per (model, layer) (lossless shards), merged into
# linear_words.lossless.tsv and exported as the paper's linear_words.tsv.


rule explain_ffn_layer:
    """Principal components of one layer's down-projection, each described by its top words."""
    input:
        model=lambda w: plan_models.model_dir_input(config, w.model),
        pieces=rules.word_pieces.output[0],
    output:
        "results/ffn/{model}/layer-{layer}.tsv",
    log:
        "logs/explain_ffn_layer/{model}/layer-{layer}.log",
    benchmark:
        "benchmarks/explain_ffn_layer/{model}/layer-{layer}.tsv"
    conda:
        "../envs/shiftlens.yaml"
    resources:
        gpu=FFN["gpus"],
    params:
        code=method_version("ffn"),
        path=lambda w: model_setting(w.model, "path"),
        size=lambda w: model_setting(w.model, "size", "NA"),
        rank=FFN["rank"],
        top_k=FFN["top_k"],
    shell:
        "python -m workflow_scripts.leases {resources.gpu:q} --"
        " python -m workflow_scripts.ffn layer --model-dir={params.path:q} --model-id {wildcards.model:q}"
        " --layer {wildcards.layer:q} --word-pieces {input.pieces:q} --rank={params.rank:q}"
        " --top-k={params.top_k:q} --size={params.size:q}"
        " --output {output:q} 3>&2 > {log:q} 2>&1"


rule merge_linear_words:
    """All layers of all paired models: the lossless file and its export in the paper's layout."""
    input:
        ffn_shards,
    output:
        lossless="results/ffn/linear_words.lossless.tsv",
        paper="results/ffn/linear_words.tsv",
    log:
        "logs/merge_linear_words.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("ffn"),
    shell:
        "python -m workflow_scripts.ffn merge {output.lossless:q} {input:q} --export {output.paper:q} > {log:q} 2>&1"


rule ffn:
    """Target: the FFN concepts of every paired model and layer (results/ffn/linear_words.tsv)."""
    input:
        rules.merge_linear_words.output,
