# What `snakemake --report report.html` shows (docs/design.md#report): every table as an HTML page,
# attribution heatmaps, the position profile, the paper comparison and provenance. CPU only: these
# jobs read existing outputs and load no model. Captions: report/*.rst. The explanation browsers
# (rules/browse.smk) are linked from the report's front page, not embedded: at the paper's size they are
# thousands of small files (~200 MB) that a self-contained report.html would inline.


rule report_table:
    """A table's TSV and its Markdown twin as one HTML page (the report shows a TSV only as a download)."""
    input:
        tsv="results/tables/{pair}/{table}.tsv",
        md="results/tables/{pair}/{table}.md",
    output:
        report(
            "results/report/{pair}/{table}.html",
            caption="../report/table.rst",
            category=lambda w: REPORT_TABLES[w.table][0],
            subcategory="{pair}",
            labels=lambda w: {"result": REPORT_TABLES[w.table][1], "sample": ""},
        ),
    log:
        "logs/report/{pair}/{table}.log",
    wildcard_constraints:
        table="|".join(REPORT_TABLES),
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("report_pages"),
    shell:
        "python -m workflow_scripts.report_pages table --tsv {input.tsv:q}"
        " --markdown {input.md:q} --title {wildcards.table:q}"
        " --output {output:q} > {log:q} 2>&1"


rule paper_comparison:
    """Table 2 beside the numbers the paper printed for it (config key pairs.<pair>.paper.table2)."""
    input:
        tsv="results/tables/{pair}/table2.tsv",
    output:
        tsv="results/report/{pair}/table2_vs_paper.tsv",
        html=report(
            "results/report/{pair}/table2_vs_paper.html",
            caption="../report/paper_comparison.rst",
            category=CATEGORY_ATTRIBUTION,
            subcategory="{pair}",
            labels={"result": "Table 2 vs the paper", "sample": ""},
        ),
    log:
        "logs/report/{pair}/table2_vs_paper.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("report_pages"),
        printed=lambda w: json.dumps(paper_printed(w.pair), sort_keys=True),
    shell:
        "python -m workflow_scripts.report_pages compare --tsv {input.tsv:q} --printed={params.printed:q}"
        " --pair {wildcards.pair:q} --name 'Table 2' --output-tsv {output.tsv:q} --output {output.html:q}"
        " > {log:q} 2>&1"


rule attribution_heatmaps:
    """The first report.samples samples of each dataset group, pre-trained and tuned side by side:
    a PNG heatmap and an HTML page each (chosen in the job: the dataset may not exist when planning)."""
    input:
        dataset=config["dataset"]["samples"],
        pretrained=pair_member("pretrained"),
        tuned=pair_member("tuned"),
    output:
        png=report(
            directory("results/report/{pair}/heatmaps"),
            patterns=["{sample}.png"],
            caption="../report/heatmap.rst",
            category=CATEGORY_ATTRIBUTION,
            subcategory="{pair}",
            labels={"result": "attribution heatmap", "sample": "{sample}"},
        ),
        html=report(
            directory("results/report/{pair}/token_pages"),
            patterns=["{sample}.html"],
            caption="../report/sample_page.rst",
            category=CATEGORY_ATTRIBUTION,
            subcategory="{pair}",
            labels={"result": "tokens by density", "sample": "{sample}"},
        ),
    log:
        "logs/report/{pair}/heatmaps.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("heatmaps"),
        samples=config["report"]["samples"],
        groups=groups_arg(),
        pretrained=lambda w: config["pairs"][w.pair]["pretrained"],
        tuned=lambda w: config["pairs"][w.pair]["tuned"],
        levels=config["analysis"]["levels"],
        threshold=config["analysis"]["threshold"],
        p=config["analysis"]["p"],
    shell:
        "python -m workflow_scripts.heatmaps --dataset {input.dataset:q} --groups={params.groups:q}"
        " --samples={params.samples:q} --pretrained {params.pretrained:q} {input.pretrained:q}"
        " --tuned {params.tuned:q} {input.tuned:q} --levels={params.levels:q} --threshold={params.threshold:q}"
        " --p={params.p:q} --png-dir {output.png:q} --html-dir {output.html:q} 3>&2 > {log:q} 2>&1"


rule position_importance:
    """Mean importance density by relative prompt position (10 bins), pre-trained vs tuned."""
    input:
        dataset=config["dataset"]["samples"],
        pretrained=pair_member("pretrained"),
        tuned=pair_member("tuned"),
    output:
        tsv="results/report/{pair}/position_importance.tsv",
        png=report(
            "results/report/{pair}/position_importance.png",
            caption="../report/position.rst",
            category=CATEGORY_ATTRIBUTION,
            subcategory="{pair}",
            labels={"result": "importance by prompt position", "sample": ""},
        ),
    log:
        "logs/report/{pair}/position_importance.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("position"),
        pretrained=lambda w: config["pairs"][w.pair]["pretrained"],
        tuned=lambda w: config["pairs"][w.pair]["tuned"],
        levels=config["analysis"]["levels"],
        threshold=config["analysis"]["threshold"],
        p=config["analysis"]["p"],
    shell:
        "python -m workflow_scripts.position --dataset {input.dataset:q}"
        " --pretrained {params.pretrained:q} {input.pretrained:q} --tuned {params.tuned:q} {input.tuned:q}"
        " --levels={params.levels:q} --threshold={params.threshold:q} --p={params.p:q} --pair {wildcards.pair:q}"
        " --png {output.png:q} --tsv {output.tsv:q} > {log:q} 2>&1"


rule provenance:
    """Model sources, attribution file hashes, recorded device and precision, libraries, config slices."""
    input:
        pretrained=pair_member("pretrained"),
        tuned=pair_member("tuned"),
    output:
        json="results/report/{pair}/provenance.json",
        html=report(
            "results/report/{pair}/provenance.html",
            caption="../report/provenance.rst",
            category=CATEGORY_PROVENANCE,
            subcategory="{pair}",
            labels={"result": "provenance", "sample": ""},
        ),
    log:
        "logs/report/{pair}/provenance.log",
    conda:
        "../envs/shiftlens.yaml"
    params:
        code=code_digest("report_pages"),
        pretrained=lambda w: config["pairs"][w.pair]["pretrained"],
        tuned=lambda w: config["pairs"][w.pair]["tuned"],
        models=lambda w: pair_model_configs(w.pair),
        slices=lambda w: config_slices(w.pair),
        rules_code=rules_code(*PROVENANCE_RULES),
    shell:
        "python -m workflow_scripts.report_pages provenance --pair {wildcards.pair:q}"
        " --attributions {params.pretrained:q}={input.pretrained:q} {params.tuned:q}={input.tuned:q}"
        " --models={params.models:q} --slices={params.slices:q} --code={params.rules_code:q}"
        " --output-json {output.json:q} --output {output.html:q} > {log:q} 2>&1"


rule report_attribution:
    """Target: the report's attribution part of every pair (Tables 1-2 pages, heatmaps, position, provenance)."""
    input:
        report_tables(["table1", "table2"]),
        [f"results/report/{pair}/table2_vs_paper.html" for pair in PAIRS if paper_printed(pair)],
        expand("results/report/{pair}/heatmaps", pair=PAIRS),
        expand("results/report/{pair}/position_importance.png", pair=PAIRS),
        expand("results/report/{pair}/provenance.html", pair=PAIRS),


rule report_explanations:
    """Target: the report's pages of Tables 3 and 5 and the annotation cost of every pair."""
    input:
        report_tables(["table3", "table5_tasks", "table5_levels", "annotation_cost"]),
