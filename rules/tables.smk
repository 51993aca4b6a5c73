# Tables 1 and 2 per pair (docs/design.md#tables-1-and-2). Analysis settings are params: changing b, L or p reruns
# these jobs and the report's heatmaps, position profile and pages (rules/report.smk), never an attribution.


rule table1_pair:
    """Instruction scores of the tuned model's followed vs unfollowed responses (human ratings)."""
    input:
        dataset=config["dataset"]["samples"],
        ratings=config["ratings"]["path"] if config.get("ratings") else [],
        tuned=pair_member("tuned"),
    output:
        tsv="results/tables/{pair}/table1.tsv",
        md="results/tables/{pair}/table1.md",
    log:
        "logs/table1/{pair}.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("table1_2"),
        levels=config["analysis"]["levels"],
        threshold=config["analysis"]["threshold"],
        p=config["analysis"]["p"],
        min_response_tokens=config["analysis"]["min_response_tokens"],
        groups=groups_arg(),
        rated=config["ratings"]["column_value"] if config.get("ratings") else "",
        provenance=provenance("tuned"),
        title=lambda w: f"Table 1 ({w.pair}): instruction score of unfollowed vs followed responses",
        notice=config.get("notice", ""),
    shell:
        "python -m workflow_scripts.table1_2 table1 --dataset {input.dataset:q} --attributions {input.tuned:q}"
        " --ratings {input.ratings:q} --rated-model={params.rated:q} --groups={params.groups:q}"
        " --levels={params.levels:q} --threshold={params.threshold:q} --p={params.p:q}"
        " --min-response-tokens={params.min_response_tokens:q} --title={params.title:q}"
        " --notice={params.notice:q} --output {output.tsv:q} > {log:q} 2>&1"


rule table2_pair:
    """Instruction scores of the pre-trained vs the tuned model on all samples."""
    input:
        dataset=config["dataset"]["samples"],
        pretrained=pair_member("pretrained"),
        tuned=pair_member("tuned"),
    output:
        tsv="results/tables/{pair}/table2.tsv",
        md="results/tables/{pair}/table2.md",
    log:
        "logs/table2/{pair}.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("table1_2"),
        levels=config["analysis"]["levels"],
        threshold=config["analysis"]["threshold"],
        p=config["analysis"]["p"],
        groups=groups_arg(),
        provenance=provenance("pretrained", "tuned"),
        title=lambda w: f"Table 2 ({w.pair}): instruction score, pre-trained vs instruction-tuned",
        notice=config.get("notice", ""),
    shell:
        "python -m workflow_scripts.table1_2 table2 --dataset {input.dataset:q}"
        " --attributions {input.pretrained:q} {input.tuned:q} --groups={params.groups:q}"
        " --levels={params.levels:q} --threshold={params.threshold:q} --p={params.p:q} --title={params.title:q}"
        " --notice={params.notice:q} --output {output.tsv:q} > {log:q} 2>&1"


rule table1:
    """Target: Table 1 of every pair whose tuned model has human ratings (results/tables/<pair>/table1)."""
    input:
        expand("results/tables/{pair}/table1.tsv", pair=dag.table1_pairs(config)),


rule table2:
    """Target: Table 2 of every pair, pre-trained vs tuned instruction scores (results/tables/<pair>/table2)."""
    input:
        expand("results/tables/{pair}/table2.tsv", pair=PAIRS),
