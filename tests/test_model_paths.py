"""Model shapes are known before any job runs: from config.json, else from the config."""
import json

import pytest

from workflow_scripts.model_paths import (
    WHOLE_FILE_BYTES,
    ModelShape,
    check_model_path,
    looks_local,
    model_fingerprint,
    model_shape,
)


def test_hub_ids_and_local_paths_are_told_apart(tmp_path):
    assert not looks_local("huggyllama/llama-7b")
    assert looks_local("./models/llama") and looks_local("/abs/llama") and looks_local("a/b/c")
    assert looks_local(str(tmp_path))


def test_shape_comes_from_a_local_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3}))
    assert model_shape("m", {"path": str(tmp_path), "layers": 30, "heads": 9}) == ModelShape(30, 9, 3)


@pytest.mark.parametrize("key, value", [("layers", 2), ("heads", 8), ("kv_heads", 9)])
def test_a_config_count_that_contradicts_config_json_is_an_error(tmp_path, key, value):
    """The config's counts plan the layer jobs before the weights exist; a wrong one would have
    finished a run over too few layers, so once config.json can be read they must agree."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3}))
    with pytest.raises(ValueError, match=rf"models\.m\.{key}: {value} in the config, but .*config\.json says"):
        model_shape("m", {"path": str(tmp_path), key: value})


def test_shape_without_kv_heads_in_config_json_has_one_kv_head_per_head(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4}))
    assert model_shape("m", {"path": str(tmp_path)}) == ModelShape(2, 4, 4)


def test_shape_falls_back_to_the_config_entry_for_an_uncached_hub_model():
    settings = {"path": "nobody/not-a-cached-model", "layers": 32, "heads": 32, "kv_heads": 8}
    assert model_shape("llama-7b", settings) == ModelShape(32, 32, 8)


def test_shape_that_cannot_be_known_names_the_config_keys():
    with pytest.raises(ValueError, match=r"give models.llama-7b.layers and models.llama-7b.heads"):
        model_shape("llama-7b", {"path": "nobody/not-a-cached-model"})


def test_a_local_model_directory_without_config_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        check_model_path(str(tmp_path / "missing"))
    check_model_path("huggyllama/llama-7b")  # hub ids are left to transformers


@pytest.mark.parametrize(("text", "problem"), [
    ('\ufeff{"num_hidden_layers": 2, "num_attention_heads": 2}', r"not JSON \(Unexpected UTF-8 BOM"),
    ('{"text_config": {"num_hidden_layers": 2}}', r"has no num_hidden_layers"),
    ('{"num_hidden_layers": 0, "num_attention_heads": 2}', r"num_hidden_layers is 0, not a positive integer"),
    ('{"num_hidden_layers": "2", "num_attention_heads": 2}', r"num_hidden_layers is '2', not a positive integer"),
    ('{"num_hidden_layers": true, "num_attention_heads": 2}', r"num_hidden_layers is True, not a positive integer"),
    ('{"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 0}',
     r"num_key_value_heads is 0, not a positive integer"),
    ("[1, 2]", r"not a JSON object"),
])
def test_a_config_json_that_gives_no_shape_is_an_error_naming_it_and_the_model(tmp_path, text, problem):
    """A KeyError or JSONDecodeError without the file, or 0 layers planning no layer job at all (Table 3 and 5
    then came from no head and no component)."""
    (tmp_path / "config.json").write_text(text, encoding="utf8")
    with pytest.raises(ValueError, match=rf"models\.m\.path: {tmp_path / 'config.json'}: {problem}"):
        model_shape("m", {"path": str(tmp_path)})


def test_a_bare_name_and_an_existing_relative_folder_are_local_not_hub_ids(tmp_path, monkeypatch):
    """A folder of the working directory shaped like `owner/name` is read as the folder, not fetched."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "llama").mkdir(parents=True)
    assert looks_local("models/llama") and not looks_local("models/other")
    assert looks_local("my-llama")


def test_the_shape_of_a_local_model_not_built_yet_comes_from_the_config(tmp_path):
    """A folder a rule builds has no config.json when the DAG is planned: the config's counts plan its jobs."""
    settings = {"path": str(tmp_path / "built-by-a-rule"), "layers": 2, "heads": 4}
    assert model_shape("m", settings) == ModelShape(2, 4, 4)
    assert model_shape("m", {**settings, "kv_heads": 2}) == ModelShape(2, 4, 2)


def test_a_renamed_model_file_changes_the_fingerprint(tmp_path):
    """A generation config renamed out of use changes the answers; the same bytes under another name are
    another model."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "generation_config.json").write_text('{"do_sample": false}')
    before = model_fingerprint(tmp_path)
    (tmp_path / "generation_config.json").rename(tmp_path / "generation_configs.json")
    assert model_fingerprint(tmp_path) != before


def test_an_edit_at_the_end_of_a_large_weights_file_changes_the_fingerprint(tmp_path):
    """A file over WHOLE_FILE_BYTES is sampled in blocks from its start to its very end (a sparse file here)."""
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    with open(weights, "wb") as handle:
        handle.truncate(WHOLE_FILE_BYTES + (1 << 20))
    before = model_fingerprint(tmp_path)
    with open(weights, "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\1")
    assert model_fingerprint(tmp_path) != before
