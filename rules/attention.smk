# Self-attention head explanations: one GPU job per (model, layer) (lossless shards), merged into
# bilinear_words.lossless.tsv and exported as the paper's bilinear_words.tsv; or the paper's
# released file in their place; then Table 3. `fidelity` reaches the layer jobs as the threshold
# and word-piece rules and Table 3 as the counting rule, each only its own slice.


rule explain_attention_layer:
    """Word pairs of every dimension of every head of one layer (reads that layer's weights only)."""
    input:
        model=lambda w: plan_models.model_dir_input(config, w.model),
        pieces=rules.word_pieces.output[0],
        vectors=dag.word_vectors_input(config),
    output:
        "results/attention/{model}/layer-{layer}.tsv",
    log:
        "logs/explain_attention_layer/{model}/layer-{layer}.log",
    benchmark:
        "benchmarks/explain_attention_layer/{model}/layer-{layer}.tsv"
    conda:
        "../envs/shiftlens.yaml"
    resources:
        gpu=ATTENTION["gpus"],
    params:
        code=method_version("attention"),
        path=lambda w: model_setting(w.model, "path"),
        size=lambda w: model_setting(w.model, "size", "NA"),
        top_k=ATTENTION["top_k"],
        baseline_words=ATTENTION["baseline_words"],
        vectors_kind=ATTENTION["word_vectors"]["kind"],
        vectors_path=ATTENTION["word_vectors"].get("path") or "",
        thresholds=dag.fidelity_rule(config, "thresholds"),
    shell:
        "python -m workflow_scripts.leases {resources.gpu:q} --"
        " python -m workflow_scripts.attention layer --model-dir={params.path:q} --model-id {wildcards.model:q}"
        " --layer {wildcards.layer:q} --word-pieces {input.pieces:q} --top-k={params.top_k:q}"
        " --baseline-words={params.baseline_words:q} --word-vectors-kind={params.vectors_kind:q}"
        " --word-vectors-path={params.vectors_path:q} --thresholds={params.thresholds:q}"
        " --size={params.size:q} --output {output:q} 3>&2 > {log:q} 2>&1"


rule merge_bilinear_words:
    """All layers of all paired models: the lossless file and its export in the paper's layout."""
    input:
        attention_shards,
    output:
        lossless="results/attention/bilinear_words.lossless.tsv",
        paper="results/attention/bilinear_words.tsv",
    log:
        "logs/merge_bilinear_words.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("attention"),
    shell:
        "python -m workflow_scripts.attention merge {output.lossless:q} {input:q} --export {output.paper:q}"
        " > {log:q} 2>&1"


rule table3_pair:
    """Share of heads where tuning added word pairs of instruction verbs vs general verbs."""
    input:
        bilinear=bilinear_words(),
        instruct="datasets/verbs/instruction_verbs.txt",
        general="datasets/verbs/general_verbs.txt",
    output:
        tsv="results/tables/{pair}/table3.tsv",
        md="results/tables/{pair}/table3.md",
    log:
        "logs/table3/{pair}.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("table3"),
        pretrained=lambda w: dag.bilinear_model_names(config)[config["pairs"][w.pair]["pretrained"]],
        tuned=lambda w: dag.bilinear_model_names(config)[config["pairs"][w.pair]["tuned"]],
        layers=lambda w: plan_models.model_shape(config, config["pairs"][w.pair]["pretrained"]).layers,
        counting=dag.fidelity_rule(config, "counting"),
        notice=config.get("notice", ""),
    shell:
        "python -m workflow_scripts.table3 --bilinear-words {input.bilinear:q} --pretrained={params.pretrained:q}"
        " --tuned={params.tuned:q} --layers={params.layers:q} --instruct {input.instruct:q}"
        " --general {input.general:q} --counting={params.counting:q} --notice={params.notice:q}"
        " --output {output.tsv:q} > {log:q} 2>&1"


rule table3:
    """Target: Table 3 of every pair, heads that gained instruction-verb word pairs (results/tables/<pair>/table3)."""
    input:
        expand("results/tables/{pair}/table3.tsv", pair=PAIRS),
