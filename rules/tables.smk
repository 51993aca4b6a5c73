# Tables 1 and 2 per pair (docs/design.md#tables-1-and-2). Analysis settings are params: changing b, L or p reruns
# only these jobs, never an attribution.


def pair_member(role):
    return lambda w: f"results/attribution/{config['pairs'][w.pair][role]}/attributions.npz"


rule table1_pair:
    """Instruction scores of the tuned model's followed vs unfollowed responses (human ratings)."""
    input:
        dataset=config["dataset"]["samples"],
        ratings=config["ratings"]["path"] if config.get("ratings") else [],
        tuned=pair_member("tuned"),
    output:
        tsv="results/tables/{pair}/table1.tsv",
        md="results/tables/{pair}/table1.md",
    params:
        levels=config["analysis"]["levels"],
        threshold=config["analysis"]["threshold"],
        p=config["analysis"]["p"],
        min_response_tokens=config["analysis"]["min_response_tokens"],
        groups=groups_arg(),
        rated=config["ratings"]["column_value"] if config.get("ratings") else "",
    log:
        "logs/table1/{pair}.log",
    shell:
        "python -m workflow_scripts.tables table1 --dataset {input.dataset} --attributions {input.tuned}"
        " --ratings {input.ratings} --rated-model {params.rated} --groups '{params.groups}'"
        " --levels {params.levels} --threshold {params.threshold} --p {params.p}"
        " --min-response-tokens {params.min_response_tokens}"
        " --title 'Table 1 ({wildcards.pair}): instruction score of unfollowed vs followed responses'"
        " --output {output.tsv} > {log} 2>&1"


rule table2_pair:
    """Instruction scores of the pre-trained vs the tuned model on all samples."""
    input:
        dataset=config["dataset"]["samples"],
        pretrained=pair_member("pretrained"),
        tuned=pair_member("tuned"),
    output:
        tsv="results/tables/{pair}/table2.tsv",
        md="results/tables/{pair}/table2.md",
    params:
        levels=config["analysis"]["levels"],
        threshold=config["analysis"]["threshold"],
        p=config["analysis"]["p"],
        groups=groups_arg(),
    log:
        "logs/table2/{pair}.log",
    shell:
        "python -m workflow_scripts.tables table2 --dataset {input.dataset}"
        " --attributions {input.pretrained} {input.tuned} --groups '{params.groups}'"
        " --levels {params.levels} --threshold {params.threshold} --p {params.p}"
        " --title 'Table 2 ({wildcards.pair}): instruction score, pre-trained vs instruction-tuned'"
        " --output {output.tsv} > {log} 2>&1"


rule table1:
    input:
        expand("results/tables/{pair}/table1.tsv", pair=dag.table1_pairs(config)),


rule table2:
    input:
        expand("results/tables/{pair}/table2.tsv", pair=PAIRS),
