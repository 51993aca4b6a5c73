"""Config checks before any rule: typed command-line values, short errors, ids and paths that stay put."""
import copy
from pathlib import Path

import pytest
import yaml

from workflow_scripts import config_checks, dag
from workflow_scripts.dataset import DatasetError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = config_checks.load_schema(REPO)


@pytest.fixture
def demo():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def check(config, overrides=True):
    return config_checks.check(config, SCHEMA, ["config.yaml"], overrides)


def test_strings_from_the_command_line_are_typed_as_the_schema_declares(demo):
    # what Snakemake's --config makes of analysis='{threshold: 6, p: 2.5}' and friends
    demo["analysis"].update(threshold="6", p="2.5", levels="12")
    demo["annotation"].update(seeds=["0", "1"], max_rank="null")
    demo["paper_commit"] = 12345678
    checked = check(demo)
    assert checked["analysis"] == {"levels": 12, "threshold": 6, "p": 2.5, "min_response_tokens": 5}
    assert checked["annotation"]["seeds"] == [0, 1] and checked["annotation"]["max_rank"] is None
    assert checked["paper_commit"] == "12345678"
    assert checked["models"]["demo-base"]["path"] == "resources/models/demo-base"  # strings stay strings


def test_a_whole_number_from_the_command_line_stays_the_integer_a_config_file_gives(demo):
    """`--config analysis='{p: 4}'` must give the 4 that `p: 4` in a file gives, not 4.0: the rules' params
    would differ, and every table job rerun, with nothing changed."""
    demo["analysis"].update(p="4")
    demo["annotation"]["provider"].update(timeout_s="30")
    checked = check(demo)
    assert type(checked["analysis"]["p"]) is int and checked["analysis"]["p"] == 4
    assert type(checked["annotation"]["provider"]["timeout_s"]) is int


def test_an_empty_or_pasted_key_in_api_key_env_is_refused_and_the_key_never_printed(demo):
    """Only YAML's nulls (`null`, `~`) are null for a key that takes a string: an empty variable name is no
    name (not a server without keys). A key pasted where its variable's name goes must not reach the error,
    which Snakemake prints and logs."""
    for value in ("", "sk-proj-Secret123"):
        demo["annotation"]["provider"].update(api_key_env=value)
        with pytest.raises(dag.ConfigError, match=r"annotation.provider.api_key_env: not the name of an "
                                                  r"environment variable") as error:
            check(demo)
        assert "Secret123" not in str(error.value)


def test_a_number_below_its_minimum_names_the_key(demo):
    """A concurrency of 0 would start no request; a shard size of 0 plan no shard: refused before any job."""
    demo["annotation"]["provider"].update(concurrency=0)
    with pytest.raises(dag.ConfigError, match=r"annotation.provider.concurrency: 0 is less than the minimum of 1"):
        check(demo)


def test_null_from_the_command_line_is_null_where_a_key_takes_a_string_or_null(demo):
    """`--config paper_data=null` gave the fetch `--source=null` (a folder named null), `api_key_env: null` (a
    server without keys, as the README's Ollama example) a variable named null."""
    demo["paper_data"] = "null"
    demo["annotation"]["provider"].update(api_key_env="NULL", base_url="~", model="Null")
    checked = check(demo)
    assert checked["paper_data"] is None
    provider = checked["annotation"]["provider"]
    assert provider["api_key_env"] is None and provider["base_url"] is None and provider["model"] is None
    demo["models"]["demo-base"]["path"] = "null"  # a key that takes no null keeps its string
    demo["paper_data"] = "nullish"
    checked = check(demo)
    assert checked["models"]["demo-base"]["path"] == "null" and checked["paper_data"] == "nullish"


@pytest.mark.parametrize("value", [8.0, "8.0", 8.5])
def test_a_float_where_an_integer_is_due_names_the_key(demo, value):
    demo["attribution"]["shard_size"] = value
    with pytest.raises(dag.ConfigError, match=r"config error in config.yaml and --config:\n"
                                              r"attribution.shard_size: 8.[05] is not an integer"):
        check(demo)


def test_a_wrong_item_of_a_list_is_named_by_its_index(demo):
    """The error names the item as the config writes it (`annotation.seeds[1]`), not as a key of its own."""
    demo["annotation"]["seeds"] = [0, "one"]
    with pytest.raises(dag.ConfigError, match=r"\nannotation\.seeds\[1\]: 'one' is not of type 'integer'"):
        check(demo)


def test_a_misspelt_key_names_the_nearest_allowed_one_in_a_few_lines(demo):
    demo["analyis"] = {"threshold": "7"}
    with pytest.raises(dag.ConfigError) as error:
        check(demo)
    message = str(error.value)
    assert "analyis: unknown key; did you mean `analysis`?" in message
    allowed = message.split("allowed keys at the top level: ", 1)[1].split("\n", 1)[0].split(", ")
    assert {"paper_data", "paper_commit", "dataset", "analysis", "fidelity"} <= set(allowed)
    assert message.count("\n") < 5 and "definitions" not in message


def test_a_misspelt_nested_key_names_its_section(demo):
    demo["attribution"]["shard_sise"] = 4
    with pytest.raises(dag.ConfigError, match=r"attribution.shard_sise: unknown key; did you mean `shard_size`\?\n"
                                              r"allowed keys in attribution: response, max_new_tokens, shard_size"):
        check(demo, overrides=False)


def test_a_wrong_type_names_the_key_and_says_what_it_is(demo):
    demo["attribution"]["shard_size"] = "eight"
    with pytest.raises(dag.ConfigError, match=r"^config error in config.yaml:\nattribution.shard_size: 'eight' is "
                                              r"not of type 'integer' \(Samples per GPU job"):
        check(demo, overrides=False)


@pytest.mark.parametrize("bad", ["../../x", "x$(touch p)", "x`touch p`", "x;touch p", "a b", "a'b", 'a"b', "a..b",
                                 ".hidden", "a/b", "", "demo\n"])
@pytest.mark.parametrize("where", ["models", "pairs", "groups", "released"])
def test_ids_outside_the_id_pattern_are_refused(demo, bad, where):
    if where == "models":
        demo["models"][bad] = demo["models"].pop("demo-base")
    elif where == "pairs":
        demo["pairs"][bad] = demo["pairs"].pop("demo")
    elif where == "groups":
        demo["dataset"]["groups"]["lima_author_"] = bad
    else:
        demo["models"]["demo-base"].update(attribution="released", released=bad)
    with pytest.raises(dag.ConfigError, match="does not match|not allowed"):
        check(demo)


def test_the_demo_and_paper_configs_pass_unchanged():
    for name in ("config.yaml", "config/paper.yaml", "config/paper-released.yaml"):
        config = yaml.safe_load((REPO / name).read_text())
        assert check(copy.deepcopy(config)) == config


def test_threshold_must_be_below_levels(demo):
    demo["analysis"].update(threshold=10, levels=10)
    with pytest.raises(dag.ConfigError, match=r"analysis.threshold \(10\) must be below analysis.levels \(10\)"):
        dag.check_config(demo)


def test_levels_must_be_the_released_bins_when_a_paired_model_has_released_attributions(demo):
    demo["models"]["demo-base"].update(attribution="released", released="ifa_llama_7b")
    demo["analysis"]["levels"] = 12
    with pytest.raises(dag.ConfigError, match=r"analysis.levels \(12\): demo-base has the paper's released "
                                              r"attributions, binned to L = 10"):
        dag.check_config(demo)
    demo["analysis"]["levels"] = dag.RELEASED_LEVELS
    dag.check_config(demo)
    # a model of no pair is never read: its released setting does not bind the levels
    demo["models"]["unpaired"] = dict(demo["models"]["demo-base"])
    demo["models"]["demo-base"].update(attribution="computed")
    demo["analysis"]["levels"] = 12
    dag.check_config(demo)


def test_fewer_levels_than_the_released_bins_are_refused_too(demo):
    """Released attributions are binned to L = 10 once and never again: scoring them at 5 levels is as wrong
    as at 12 (bins above 5 would read as scores the method cannot give)."""
    demo["models"]["demo-base"].update(attribution="released", released="ifa_llama_7b")
    demo["analysis"].update(levels=5, threshold=3)
    with pytest.raises(dag.ConfigError, match=r"analysis.levels \(5\): demo-base has the paper's released "
                                              r"attributions, binned to L = 10"):
        dag.check_config(demo)


@pytest.mark.parametrize("path", ["../outside", "/tmp/x", "resources/../../x", "."])
def test_paths_the_workflow_writes_stay_in_the_working_directory(demo, path, monkeypatch):
    monkeypatch.chdir(REPO)
    bad = copy.deepcopy(demo)
    bad["models"]["demo-base"]["path"] = path
    with pytest.raises(dag.ConfigError, match=f"models.demo-base.path: {path} is written by this workflow"):
        dag.check_config(bad)
    bad = copy.deepcopy(demo)
    bad["annotation"]["provider"]["path"] = path
    with pytest.raises(dag.ConfigError, match=f"annotation.provider.path: {path} is written by this workflow"):
        dag.check_config(bad)
    bad = copy.deepcopy(demo)
    bad["annotation"]["cache"] = path  # the answer cache's SQLite file: the annotation steps create it
    with pytest.raises(dag.ConfigError, match=f"annotation.cache: {path} is written by this workflow"):
        dag.check_config(bad)
    dag.check_config(demo)


def test_a_built_model_goes_where_its_build_rule_writes_it_and_no_two_builds_share_a_folder(demo, monkeypatch):
    """The demo rules write fixed folders: another path for a built model once passed the checks and
    failed planning with an unexplained MissingInputException; an annotator built into a demo model's
    folder failed as an AmbiguousRuleException."""
    monkeypatch.chdir(REPO)
    bad = copy.deepcopy(demo)
    bad["models"]["demo-base"]["path"] = "resources/models/my-base"
    with pytest.raises(dag.ConfigError, match=r"^models\.demo-base\.path: resources/models/my-base: `build: demo-base` "
                                              r"writes the model to resources/models/demo-base"):
        dag.check_config(bad)
    bad = copy.deepcopy(demo)
    bad["annotation"]["provider"]["path"] = "resources/models/demo-tuned/annotator"
    with pytest.raises(dag.ConfigError, match=r"^annotation\.provider\.path \(resources/models/demo-tuned/annotator\) "
                                              r"lies in models\.demo-tuned\.path \(resources/models/demo-tuned\)"):
        dag.check_config(bad)
    good = copy.deepcopy(demo)
    good["models"]["demo-base"]["path"] = "./resources/models/demo-base/"
    dag.check_config(good)


@pytest.mark.parametrize("sample_id", ["../../x", "a/b", ".."])
def test_released_attributions_are_read_only_by_plain_sample_ids(demo, tmp_path, sample_id):
    dataset = tmp_path / "data.tsv"
    dataset.write_text("ID\tPrompt\tResponse\tInstruct&Context\nok_1\tDo it.\tDone.\tDo it.\n"
                       f"{sample_id}\tDo it.\tDone.\tDo it.\n")
    demo["dataset"]["samples"] = str(dataset)
    demo["models"]["demo-base"].update(attribution="released", released="ifa_base")
    with pytest.raises(DatasetError, match=f"data.tsv:3: ID '{sample_id}' is not a plain file name"):
        dag.released_dir(demo, "demo-base")
    dataset.write_text("ID\tPrompt\tResponse\tInstruct&Context\nok_1\tDo it.\tDone.\tDo it.\n")
    assert dag.released_dir(demo, "demo-base") == "resources/paper/results/attribution_interpret/ifa_base"


def test_the_old_dtype_key_names_its_replacement_and_precision_takes_only_the_four_modes(demo):
    old = copy.deepcopy(demo)
    old["models"]["demo-base"]["dtype"] = "bfloat16"
    with pytest.raises(dag.ConfigError, match=r"models.demo-base.dtype: .*Replaced by precision \(float32, tf32, "
                                              r"bfloat16 or float16\)"):
        check(old)
    demo["models"]["demo-base"]["precision"] = "float64"
    with pytest.raises(dag.ConfigError, match=r"models.demo-base.precision: 'float64' is not one of \['float32', "
                                              r"'tf32', 'bfloat16', 'float16'\]"):
        check(demo)
    demo["models"]["demo-base"]["precision"] = "tf32"
    checked = check(demo)
    assert checked["attribution"]["precision"] == "float32" and checked["attribution"]["backward_batch"] == 0
    assert "precision" not in checked["models"]["demo-tuned"]  # no default: it inherits attribution.precision
    assert dag.attribution_precision(checked, "demo-tuned") == "float32"
    assert dag.attribution_precision(checked, "demo-base") == "tf32"


@pytest.mark.parametrize("key, value", [
    (("models", "demo-base", "size"), "7B\t"),  # a tab split the Size column after each layer job had computed
    (("models", "demo-base", "size"), "7B\n"),
    (("attention", "released", "models", "demo-base"), "-h"),  # read as an option by the browser's command line
    (("notice",), "Demo.\n\n.. raw:: html\n\n   <img src=x onerror=alert(1)>"),  # a directive in the report
    (("notice",), "Demo.\n"),
])
def test_a_label_that_would_break_a_file_or_a_command_line_names_its_key(demo, key, value):
    config = copy.deepcopy(demo)
    if key[0] == "attention":
        config["attention"]["released"] = {"path": "bilinear_words.tsv", "models": {"demo-base": "llama"}}
    node = config
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    with pytest.raises(dag.ConfigError, match=rf"{'.'.join(key)}: .* does not match"):
        check(config, overrides=False)
