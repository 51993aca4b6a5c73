# The vocabulary cut into each model's sub-tokens: one light job per model, read by all of its head and
# FFN layer jobs (which then never load a tokenizer: docs/design.md#word-pieces).


rule word_pieces:
    """Every vocabulary word's sub-token ids in one model, by the word-piece rule `fidelity` selects."""
    input:
        model=lambda w: plan_models.model_dir_input(config, w.model),
        vocabulary=lambda w: dag.vocabulary(config),
    output:
        "results/word_pieces/{model}.tsv",
    log:
        "logs/word_pieces/{model}.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=method_version("word_pieces"),
        path=lambda w: model_setting(w.model, "path"),
        # how words are cut into sub-tokens, the one slice of `fidelity` this job uses
        pieces=dag.fidelity_rule(config, "pieces"),
    shell:
        "python -m workflow_scripts.word_pieces --model-dir={params.path:q} --vocabulary {input.vocabulary:q}"
        " --rule={params.pieces:q} --output {output:q} > {log:q} 2>&1"
