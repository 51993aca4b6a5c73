# shiftlens: how instruction tuning changes a model, after Wu et al. (NAACL 2024).
# Targets: all (default), table1, table2, table3, ffn (linear_words.tsv), table5, figure3, browse (HTML browsers),
# report_attribution, report_explanations (then `snakemake --report report.html`). Design: docs/design.md.
from snakemake.utils import min_version, validate

from workflow_scripts import config_checks

min_version("9.0")

# config.yaml (the demo) is the default; a --configfile replaces it instead of being merged into
# it, so a paper config never inherits the demo's models. --config key=value applies on top.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# Strings from --config typed as the schema declares (analysis='{threshold: 6}'), then checked:
# an error names the key, the file and the nearest allowed key, never dumps the schema.
config.update(
    config_checks.check(
        config,
        config_checks.load_schema(workflow.basedir),
        workflow.configfiles,
        bool(workflow.config_settings.config),  # --config key=value given
    )
)
validate(config, "schemas/config.schema.yaml")  # fills in the defaults


include: "rules/common.smk"  # config checks, enumerations, wildcard constraints
include: "rules/data.smk"  # paper data (copy or download, checksummed), demo model pair
include: "rules/attribution.smk"  # per-shard gradient x input (GPU), released attributions, merge
include: "rules/tables.smk"  # Tables 1 and 2
include: "rules/word_pieces.smk"  # the vocabulary cut into each model's sub-tokens, for the layer jobs
include: "rules/attention.smk"  # per-layer head explanations (GPU), bilinear_words.tsv, Table 3
include: "rules/ffn.smk"  # per-layer FFN concepts (GPU), linear_words.tsv
include: "rules/annotate.smk"  # LLM annotation (seeds x steps), cost report, Table 5, Figure 3
include: "rules/report.smk"  # what `snakemake --report report.html` shows: tables, heatmaps, provenance
include: "rules/browse.smk"  # static HTML explanation browsers (head word pairs, FFN concepts, annotations)


# A file the config names for jobs to read exists or is a rule's output: Snakemake plans nothing for a
# missing input whose job's outputs exist, so a mistyped path would look accepted (once every rule is known).
config_checks.named(
    CONFIG_SOURCE,
    dag.check_configured_inputs,
    config,
    lambda path: any(rule.is_producer(path) for rule in workflow.rules),
)


report: "report/workflow.rst"


onstart:
    # Checks that need the planned jobs, made once the DAG is built and before any job runs (dry
    # runs, --summary and --list-changes never come here): the annotation provider's settings and
    # the openai provider's key when annotation jobs are to run (never in an input function, whose
    # error Snakemake swallows where the outputs exist); the hub models that jobs needing weights
    # will load (offline, in the cache; online, on the hub); twins whose words would be cut two
    # ways (fidelity); a fetched dataset the manifest no longer matches lets only the fetch run.
    if not workflow.touch:
        scheduled = [(job.rule.name, dict(job.wildcards)) for job in workflow.dag.needrun_jobs()]
        rules_to_run = [rule for rule, _ in scheduled]
        plan_annotation.require_valid_annotation(config, PROVIDER, rules_to_run, ANNOTATION_RULES)
        plan_annotation.require_api_key(PROVIDER, rules_to_run, ANNOTATION_RULES)
        plan_models.require_hub_models(config, scheduled)
        plan_models.require_one_word_cut_per_pair(config, scheduled, dag.fidelity_rule(config, "pieces"))
        plan_dataset.require_fresh_dataset(config, rules_to_run)


rule all:
    """Target (default): Tables 1, 2, 3 and 5, the FFN concepts, Figure 3, the report's pages and the explanation
    browser of every pair."""
    default_target: True
    input:
        rules.table1.input,
        rules.table2.input,
        rules.table3.input,
        rules.ffn.input,
        rules.table5.input,
        rules.figure3.input,
        rules.report_attribution.input,
        rules.report_explanations.input,
        rules.browse.input,
