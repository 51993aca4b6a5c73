"""Model shapes are known before any job runs: from config.json, else from the config."""
import json

import pytest

from workflow_scripts.model_paths import ModelShape, check_model_path, looks_local, model_shape


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
