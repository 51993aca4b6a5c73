# The paper's released data and the offline demo model pair.

# What the paper data are is the manifest's SHA-256 of each file, checked before a file is moved into
# place, so the fetch rules' only param is a digest of their files' checksums (plan_dataset.paper_checksums).
# Where they are read from (paper_data, or GitHub at paper_commit) reaches the job through the shell
# line, whose text stays the same: moving the local copy or naming another commit reruns nothing.
PAPER_COMMIT = config["paper_commit"]


rule paper_datasets:
    """The paper's prompts and human ratings, copied from paper_data or downloaded, checksummed."""
    output:
        expand("resources/paper/{name}", name=PAPER_DATASETS),
    log:
        "logs/paper_datasets.log",
    localrule: True
    conda:
        "../envs/shiftlens.yaml"
    params:
        checksums=plan_dataset.paper_checksums(PAPER_DATASETS),
    shell:
        "python -m workflow_scripts.paper_data --manifest datasets/paper-manifest.sha256"
        " --destination resources/paper --source={PAPER_SOURCE:q} --commit={PAPER_COMMIT:q}"
        " --files {PAPER_DATASETS:q} 3>&2 > {log:q} 2>&1"


rule paper_released_attributions:
    """One released attribution folder (one pickle per sample), checksummed file by file."""
    output:
        directory("resources/paper/results/attribution_interpret/{release}"),
    log:
        "logs/paper_released_attributions/{release}.log",
    localrule: True
    conda:
        "../envs/shiftlens.yaml"
    params:
        checksums=lambda w: plan_dataset.paper_checksums(folder=f"results/attribution_interpret/{w.release}"),
    shell:
        "python -m workflow_scripts.paper_data --manifest datasets/paper-manifest.sha256"
        " --destination resources/paper --source={PAPER_SOURCE:q} --commit={PAPER_COMMIT:q}"
        " --folder results/attribution_interpret/{wildcards.release:q} 3>&2 > {log:q} 2>&1"


# The demo models are trained once on the demo dataset as it was then (ancient): adding a sample
# must rerun only that sample's shard, not retrain both models. Delete resources/models/ to retrain.
rule demo_corpus:
    """Plain English for the demo pre-training: standard-library docstrings and the demo prompts."""
    input:
        dataset=ancient(config["dataset"]["samples"]),
    output:
        "resources/demo/corpus.txt",
    log:
        "logs/demo_corpus.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=method_version("demo_models"),
    shell:
        "python -m workflow_scripts.demo_models corpus {output:q} --dataset {input.dataset:q} 3>&2 > {log:q} 2>&1"


rule demo_vocabulary:
    """The demo's word list for the global explanations: the corpus's most frequent words, and the
    paper's instruction verbs (so that the demo's Table 3 has an instruction column)."""
    input:
        corpus="resources/demo/corpus.txt",
        verbs="datasets/verbs/instruction_verbs.txt",
    output:
        "resources/demo/vocabulary.tsv",
    log:
        "logs/demo_vocabulary.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=method_version("vocabulary"),
    shell:
        "python -m workflow_scripts.vocabulary build {input.corpus:q} {output:q} --max-words 3000"
        " --include {input.verbs:q} > {log:q} 2>&1"


rule demo_tokenizer:
    """A LLaMA-style BPE tokenizer (byte fallback, metaspace) trained on the demo corpus."""
    input:
        "resources/demo/corpus.txt",
    output:
        directory("resources/demo/tokenizer"),
    log:
        "logs/demo_tokenizer.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=method_version("demo_models"),
    shell:
        "python -m workflow_scripts.demo_models tokenizer {input:q} {output:q} > {log:q} 2>&1"


rule demo_base_model:
    """The demo's pre-trained model: a tiny LLaMA with grouped-query attention."""
    input:
        corpus="resources/demo/corpus.txt",
        tokenizer="resources/demo/tokenizer",
    output:
        directory("resources/models/demo-base"),
    log:
        "logs/demo_base_model.log",
    benchmark:
        "benchmarks/demo_base_model.tsv"
    conda:
        "../envs/shiftlens.yaml"
    threads: 2
    params:
        code=method_version("demo_models"),
    shell:
        "python -m workflow_scripts.demo_models pretrain {input.corpus:q} {input.tokenizer:q} {output:q} 3>&2 > {log:q} 2>&1"


rule demo_tuned_model:
    """The demo's instruction-tuned twin: the base fine-tuned on the demo prompt -> response pairs."""
    input:
        base="resources/models/demo-base",
        dataset=ancient(config["dataset"]["samples"]),
    output:
        directory("resources/models/demo-tuned"),
    log:
        "logs/demo_tuned_model.log",
    benchmark:
        "benchmarks/demo_tuned_model.tsv"
    conda:
        "../envs/shiftlens.yaml"
    threads: 2
    params:
        code=method_version("demo_models"),
    shell:
        (
            "python -m workflow_scripts.demo_models finetune {input.base:q} {output:q} --dataset {input.dataset:q}"
            " 3>&2 > {log:q} 2>&1"
        )
