# Config access, enumerations, wildcard constraints, and the input functions and helpers of every
# rule file (which hold only rules); the logic lives in workflow_scripts.dag, plan_dataset, plan_models and
# plan_annotation (unit-tested).
import functools
import inspect
import json
import re

from snakemake.logging import logger

from workflow_scripts import code_version, config_checks, dag, plan_annotation, plan_dataset, plan_models
from workflow_scripts.code_version import code_digest, method_version  # every rule's `code` param
from workflow_scripts.annotation_files import FILES

code_version.use_cache(".snakemake/shiftlens/parsed-code.json")  # parses only modules that changed
CONFIG_SOURCE = (workflow.configfiles, bool(workflow.config_settings.config))  # named by every config error
config_checks.named(CONFIG_SOURCE, dag.check_config, config)
# here, not only in input functions, whose errors Snakemake can drop
config_checks.named(CONFIG_SOURCE, plan_dataset.check_dataset, config)
if stale := plan_dataset.stale_dataset_warning(config):
    logger.warning(f"WARNING: {stale}; run `snakemake --cores 1 -f paper_datasets` first")

PAIRS = list(config["pairs"])
MODELS = list(config["models"])


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    pair="|".join(map(re.escape, PAIRS)),
    release=r"[A-Za-z0-9][A-Za-z0-9._-]*",  # a released folder name (the schema's id pattern)
    shard=r"\d+",
    layer=r"\d+",
    seed=r"\d+",


def model_setting(model, key, default=None):
    return plan_models.model_config(config, model).get(key, default)


# Snakemake calls a rule's input, params and resources functions once per job and inspects each
# one's signature on every call (inspect.signature, ~13 us, 2-3 times a call): for the 12,640 shard
# jobs of a large plan that was seconds. The two helpers below keep the plan the same and spare it:
# a value every model shares is a plain value, and a function carries its signature (PEP 362).


def per_job(function):
    """`function` (of the wildcards) with its signature attached, so that inspecting it is a lookup."""
    function.__signature__ = inspect.signature(function)
    return function


def per_model(value_of):
    """An input, param or resource that depends only on the model. The plain value when every
    model has the same one (nothing to call per job), else a function of the wildcards."""
    values = {model: value_of(model) for model in MODELS}
    shared = list(values.values())[:1]
    if shared and all(value == shared[0] for value in values.values()):
        return shared[0]
    return per_job(lambda wildcards: values[wildcards.model])


def groups_arg():
    """Sorted, so that reordering the config's keys changes no param (and reruns nothing)."""
    return ",".join(f"{prefix}={group}" for prefix, group in sorted(config["dataset"]["groups"].items()))


# --- data.smk ------------------------------------------------------------------------------------

PAPER_DATASETS = [
    "datasets/FinalDataset.tsv",
    "datasets/AnnotatedDataset.tsv",
    "datasets/SingleShareGPT_Vocab.tsv",
]
PAPER_SOURCE = config.get("paper_data") or ""  # empty: download at paper_commit


# --- attribution.smk -----------------------------------------------------------------------------


@functools.cache
def shard_digests():
    """Every shard's digest, once per planning process (the dataset does not change during a plan)."""
    return plan_dataset.shard_digests(config)


@per_job
def shard_digest(wildcards):
    """Changes exactly when a sample of this shard changes (a param: Snakemake reruns on it)."""
    return shard_digests()[int(wildcards.shard)]


def attribution_shards(wildcards):
    return expand(
        "results/attribution/{model}/shards/shard-{shard}.npz",
        model=wildcards.model,
        shard=plan_dataset.shard_ids(config),
    )


# --- tables.smk ----------------------------------------------------------------------------------


def pair_member(role):
    """The member's merged computed attributions, or its converted released ones (another path)."""
    return lambda w: dag.attribution_file(config, config["pairs"][w.pair][role])


def provenance(*roles):
    """What went into the members' attributions: a table built from other inputs reruns, and with
    it a merge that was killed after its shards were redone (a missing intermediate)."""
    return lambda w: dag.attribution_provenance(config, [config["pairs"][w.pair][role] for role in roles])


# --- attention.smk and ffn.smk -------------------------------------------------------------------

ATTENTION = config["attention"]
FFN = config["ffn"]


def attention_shards(wildcards):
    return dag.layer_shards(config, "attention", plan_models.pair_models(config))


def ffn_shards(wildcards):
    return dag.layer_shards(config, "ffn", plan_models.pair_models(config))


def bilinear_words():
    """Table 3's input: the released file (paper layout) or the computed lossless one."""
    released = ATTENTION.get("released")
    return released["path"] if released else "results/attention/bilinear_words.lossless.tsv"


# --- annotate.smk --------------------------------------------------------------------------------

ANNOTATION = config["annotation"]
PROVIDER = plan_annotation.resolved_provider(ANNOTATION["provider"])
# What decides the answers (params: a change reruns the annotation); speed keys reach the job through
# globals named in the shell line, whose text stays the same (plan_annotation.PROVIDER_ANSWER_KEYS).
PROVIDER_PARAM = plan_annotation.provider_param(PROVIDER)
ANNOTATION_RUNTIME = plan_annotation.provider_runtime(PROVIDER)
ANNOTATION_KEY_ENV = PROVIDER.get("api_key_env") or ""
ANNOTATION_RULES = ("annotate_describe", "annotate_task", "annotate_level")
ANNOTATION_CODE = plan_annotation.annotation_code(PROVIDER)
# A local annotator computes on a GPU as the explanation jobs do: it requests `provider.gpus` and starts
# through the lease launcher, so it never runs on a device another job has leased. The other providers
# compute nothing here: they request no GPU and start as they are.
LOCAL_ANNOTATOR = PROVIDER["kind"] == "local"
ANNOTATION_RESOURCES = {"gpu": PROVIDER["gpus"]} if LOCAL_ANNOTATOR else {}


def annotator_input(step):
    return lambda wildcards: dag.annotator_input(PROVIDER, step, wildcards.seed)


def pair_ffn_shards(wildcards):
    return dag.layer_shards(config, "ffn", plan_models.pair_members(config, wildcards.pair))


def annotation_shell(step, extra=""):
    return (
        ("python -m workflow_scripts.leases {resources.gpu:q} -- " if LOCAL_ANNOTATOR else "")
        + f"python -m workflow_scripts.annotate {step} --pair {{wildcards.pair:q}} --seed {{wildcards.seed:q}}"
        " --inputs {input.rows:q} --output {output.tsv:q} --stats {output.stats:q}"
        " --provider={params.provider:q} --cache={params.cache:q} --max-tokens={params.max_tokens:q}"
        + extra
        + " --runtime {ANNOTATION_RUNTIME:q} --api-key-env={ANNOTATION_KEY_ENV:q} 3>&2 > {log:q} 2>&1"
    )


def annotation_file(step):
    """A step's per-seed file as a rule's output pattern: the paper's name, from annotation_files.FILES."""
    return f"results/annotation/{{pair}}/{FILES[step]}"


def seed_files(step):
    """Every seed's file of one step."""
    return lambda w: [annotation_file(step).format(pair=w.pair, seed=seed) for seed in ANNOTATION["seeds"]]


def annotation_stats_file(step):
    """A step's per-seed stats as a rule's output pattern (the cost report reads them)."""
    return f"results/annotation/{{pair}}/stats/{step}_seed{{seed}}.json"


def annotation_stats(wildcards):
    """The stats of every (seed, step) of the pair, for the cost report."""
    return [
        annotation_stats_file(step).format(pair=wildcards.pair, seed=seed)
        for seed in ANNOTATION["seeds"]
        for step in FILES
    ]


# --- report.smk ----------------------------------------------------------------------------------

# The report's categories, one per method.
CATEGORY_ATTRIBUTION = "Attribution (Tables 1 and 2)"
CATEGORY_HEADS = "Self-attention heads (Table 3)"
CATEGORY_FFN = "FFN concepts (Table 5, Figure 3)"
CATEGORY_PROVENANCE = "Provenance"
# Table (its TSV and Markdown twin under results/tables/<pair>/) -> (report category, label).
REPORT_TABLES = {
    "table1": (CATEGORY_ATTRIBUTION, "Table 1"),
    "table2": (CATEGORY_ATTRIBUTION, "Table 2"),
    "table3": (CATEGORY_HEADS, "Table 3"),
    "table5_tasks": (CATEGORY_FFN, "Table 5, tasks"),
    "table5_levels": (CATEGORY_FFN, "Table 5, linguistic levels"),
    "annotation_cost": (CATEGORY_FFN, "annotation cost"),
}


def report_tables(names):
    """The HTML pages of these tables for every pair that has them (Table 1: rated pairs only)."""
    return [
        f"results/report/{pair}/{name}.html"
        for name in names
        for pair in (dag.table1_pairs(config) if name == "table1" else PAIRS)
    ]


def paper_printed(pair):
    """The paper's printed Table 2 of a pair (config key pairs.<pair>.paper.table2), or {}."""
    return config["pairs"][pair].get("paper", {}).get("table2", {})


# The rules behind a pair's tables, whose code the provenance page lists.
PROVENANCE_RULES = (
    "attribute_shard",
    "convert_released_attributions",
    "merge_attributions",
    "table1_pair",
    "table2_pair",
    "word_pieces",
    "explain_attention_layer",
    "merge_bilinear_words",
    "table3_pair",
    "explain_ffn_layer",
    "annotate_describe",
    "annotate_task",
    "annotate_level",
    "table5_pair",
    "figure3_pair",
)


def rules_code(*names):
    """The `code` param of each of these (already defined) rules, as JSON: the provenance page's list."""
    return json.dumps({name: getattr(rules, name).params.code for name in names}, sort_keys=True)


def config_slices(pair):
    """The config keys each of the pair's tables is computed from (shown on the provenance page): speed and
    placement keys left out, so that changing one neither reruns the page nor makes it state a setting the
    results were not made with."""
    dataset = {k: config["dataset"][k] for k in ("samples", "groups")}
    annotation = {
        **config["annotation"],
        "provider": dag.without_speed(PROVIDER, "provider"),
        "prices": plan_annotation.used_prices(ANNOTATION["prices"], PROVIDER),
    }
    return json.dumps(
        {
            "tables 1 and 2": {
                "analysis": config["analysis"],
                "attribution": dag.attribution_slice(config, pair),
                "dataset": dataset,
                "ratings": config.get("ratings"),
            },
            "table 3": {
                "attention": dag.without_speed(config["attention"], "attention"),
                "fidelity": config["fidelity"],
            },
            "table 5, figure 3": {
                "ffn": dag.without_speed(config["ffn"], "ffn"),
                "annotation": annotation,
                "fidelity": config["fidelity"],  # how the FFN explainer cuts words into sub-tokens
            },
            "pictures": {"report": config["report"], "analysis": config["analysis"]},
        },
        sort_keys=True,
    )


def pair_model_configs(pair):
    """The pair's models' config (the provenance page), without speed and placement keys."""
    return json.dumps(
        {m: dag.without_speed(config["models"][m], "model") for m in plan_models.pair_members(config, pair)},
        sort_keys=True,
    )
