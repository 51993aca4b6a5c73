# Static HTML explanation browsers, one per pair (docs/design.md#explanation-browsers): head word pairs and
# FFN concepts with every seed's annotation, pre-trained and tuned side by side; opened from disk, no server.


rule browse_pair:
    """Explanation browser of a pair: a page and its data files, cut by layer and indexed by word."""
    input:
        attention=lambda w: dag.pair_head_files(config, w.pair),
        ffn=pair_ffn_shards,
        describe=seed_files("describe"),
        task=seed_files("task"),
        level=seed_files("level"),
    output:
        directory("results/browse/{pair}"),
    log:
        "logs/browse/{pair}.log",
    benchmark:
        "benchmarks/browse/{pair}.tsv"
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("browser_index", "browser_assets"),
        models=lambda w: plan_models.pair_members(config, w.pair),
        names=lambda w: [dag.bilinear_model_names(config)[m] for m in plan_models.pair_members(config, w.pair)],
        seeds=",".join(map(str, ANNOTATION["seeds"])),
    shell:
        "python -m workflow_scripts.browser_index --pair {wildcards.pair:q} --models {params.models:q}"
        " --bilinear-names {params.names:q} --attention {input.attention:q} --ffn {input.ffn:q}"
        " --seeds={params.seeds:q} --describe {input.describe:q} --task {input.task:q} --level {input.level:q}"
        " --output {output:q} > {log:q} 2>&1"


rule browse:
    """Target: the explanation browser of every pair (open results/browse/<pair>/index.html)."""
    input:
        expand("results/browse/{pair}", pair=PAIRS),
