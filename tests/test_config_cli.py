"""The config as a user types it on the command line, through real Snakemake (no job runs)."""
import re

import pytest
import yaml
from hub_server import HubServer
from test_workflow import copy_workflow, snakemake

from workflow_scripts.model_paths import OFFLINE_VARIABLES

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("cli"))


def test_a_misspelt_key_says_did_you_mean_in_a_few_lines(work):
    out = snakemake(work, "--dry-run", "--config", "analyis={threshold: 7}", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "analyis: unknown key; did you mean `analysis`?" in text and "config.yaml and --config" in text
    assert len(text.splitlines()) < 15 and "additionalProperties" not in text


def test_typed_overrides_plan_like_the_same_values_in_a_file(work):
    out = snakemake(work, "--dry-run", "table2", "--config", "analysis={threshold: 6, p: 2.5}",
                    "attribution={shard_size: 4}", check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert re.search(r"^attribute_shard\s+22$", out.stdout, re.M)  # 44 samples in shards of 4, two models


def test_null_on_the_command_line_is_null_for_a_key_that_also_takes_a_string(work):
    """`--config paper_data=null` gave the fetch `--source=null`: a copy from a folder named null, not the download
    that null means in a config file."""
    out = snakemake(work, "--dry-run", "--printshellcmds", "paper_datasets", "--configfile", "config/paper.yaml",
                    "--config", "paper_data=null")
    assert "--source= " in out.stdout and "--source=null" not in out.stdout


@pytest.mark.parametrize("override, expected", [
    ("attribution={shard_size: 8.0}", "attribution.shard_size: 8.0 is not an integer (write 8 if that is meant)"),
    ("analysis={threshold: 10}", "analysis.threshold (10) must be below analysis.levels (10)"),
    # an empty path turned the response cache off: a paid run kept no answer, and a rerun paid again
    ("annotation={cache: ''}", "annotation.cache: '' should be non-empty"),
])
def test_numbers_that_would_give_wrong_tables_or_a_type_error_stop_the_plan(work, override, expected):
    out = snakemake(work, "--dry-run", "--config", override, check=False)
    assert out.returncode != 0 and expected in out.stdout + out.stderr
    assert len((out.stdout + out.stderr).splitlines()) < 15


def test_levels_other_than_the_released_bins_stop_the_plan_of_a_released_pair(work):
    """The released attributions are binned to L = 10: `analysis.levels=20` planned, fetched and converted, then
    failed in the table job."""
    out = snakemake(work, "--dry-run", "table2", "--configfile", "config/paper-released.yaml",
                    "--config", "analysis={levels: 20}", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-2000:]
    assert ("analysis.levels (20): llama-7b, vicuna-7b have the paper's released attributions, binned to L = 10"
            in text), text[-2000:]
    assert len(text.splitlines()) < 15


@pytest.mark.parametrize("section, edit, expected", [
    ("pairs", {"demo": {"pretrained": "demo-base", "tuned": "demo-tunned"}},
     "pairs.demo.tuned: 'demo-tunned' is not a key of models"),
    ("ratings", {"path": "datasets/demo_ratings.tsv", "column_value": "demo-tuned", "model": "nope"},
     "ratings.model: 'nope' is not a key of models"),
])
def test_a_check_across_keys_names_the_config_file_too(work, section, edit, expected):
    """Only the schema's errors named the file: with several config files, the user had to guess which one."""
    config = yaml.safe_load((work / "config.yaml").read_text())
    config[section] = edit
    (work / "across.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(work, "--dry-run", "--configfile", "across.yaml", "--config", "notice=x", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and f"across.yaml and --config:\n{expected}" in text, text[-2000:]


@pytest.mark.parametrize("value", ["sk-proj-Secret123+/=", "my key", "KEY_$(touch pwned4);'x"])
def test_a_key_pasted_where_its_variable_name_goes_is_refused_without_printing_it(work, value):
    """The value once went into every annotation job's shell line (printed by -p) and into the error of
    a run that stopped for want of that variable; a name that is no variable's is refused too."""
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["annotation"]["provider"] = {"kind": "openai", "model": "gpt-x", "api_key_env": value}
    (work / "key.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(work, "--dry-run", "-p", "table5", "--configfile", "key.yaml", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "annotation.provider.api_key_env: not the name of an environment variable" in text
    assert value not in text and value.split()[0] not in text and not list(work.glob("pwned*"))
    config["annotation"]["provider"]["api_key_env"] = "MY_KEY_2"
    (work / "key.yaml").write_text(yaml.safe_dump(config))
    ok = snakemake(work, "--dry-run", "table5", "--configfile", "key.yaml", check=False)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]


@pytest.mark.parametrize("url, expected", [
    ("https://me:sk-Secret123@llm.example.org/v1", "holds credentials"),
    ("https://sk-Secret123@llm.example.org/v1", "holds credentials"),
    ("http://localhost:8000/v1?api_key=sk-Secret123", "has a query or fragment"),
    ("llm.example.org/sk-Secret123", "not an http(s) URL"),
])
def test_an_endpoint_carrying_credentials_is_refused_without_printing_them(work, url, expected):
    """The endpoint is part of the annotation jobs' params, of the provenance page and of every cached
    answer's key: a key written into it would be kept in all three, and printed by a dry run's reasons."""
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["annotation"]["provider"] = {"kind": "openai", "model": "gpt-x", "base_url": url}
    (work / "url.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(work, "--dry-run", "-p", "--configfile", "url.yaml", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and f"annotation.provider.base_url: {expected}" in text, text[-2000:]
    assert "sk-Secret123" not in text
    config["annotation"]["provider"]["base_url"] = "http://localhost:8000/v1"
    (work / "url.yaml").write_text(yaml.safe_dump(config))
    ok = snakemake(work, "--dry-run", "table5", "--configfile", "url.yaml", check=False)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]


def test_target_rules_describe_themselves(work):
    listing = snakemake(work, "--list-rules").stdout.splitlines()
    for target in ("all", "table1", "table2", "table3", "ffn"):
        assert any(line.startswith(f"{target} (Target") for line in listing), target


@pytest.mark.parametrize(("path", "expected"), [
    ("huggyllama/llama-7bb", "models.llama-7b.path: huggyllama/llama-7bb is not on the hub"),
    ("meta-llama/Llama-2-7b-hf", "models.llama-7b.path: meta-llama/Llama-2-7b-hf is gated on the hub"),
])
def test_online_a_mistyped_or_gated_hub_model_fails_once_before_any_job(tmp_path, paper_dir, path, expected):
    """Online, a mistyped id failed only in its first job: after Snakemake had deleted the results of every job
    whose `path` param changed (hours of GPU time for a paper model's shards and layers)."""
    work = copy_workflow(tmp_path)
    args = ["table2", "--configfile", "config/paper.yaml", "--config", f"paper_data={paper_dir}",
            f"models={{llama-7b: {{path: {path}}}}}"]
    with HubServer({"lmsys/vicuna-7b-v1.1": {"config.json": b"{}"}}, gated={"meta-llama/Llama-2-7b-hf"}) as hub:
        # online (scripts/test.sh sets HF_HUB_OFFLINE; either variable would hold the run offline), an empty cache
        online = {**dict.fromkeys(OFFLINE_VARIABLES, ""), "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        out = snakemake(work, *args, check=False, env=online)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and expected in text, text[-3000:]
    assert f"/{path}/resolve/main/config.json" in " ".join(hub.requests)  # asked once the plan was made
    assert not (work / "logs").exists() and not (work / "results").exists()  # no job ran


def test_offline_a_mistyped_or_uncached_hub_model_fails_once_before_any_job(tmp_path, paper_dir):
    work = copy_workflow(tmp_path)
    args = ["table2", "--configfile", "config/paper.yaml", "--config", f"paper_data={paper_dir}",
            "models={llama-7b: {path: huggyllama/llama-7bb}}"]
    assert "attribute_shard" in snakemake(work, "--dry-run", *args).stdout  # a dry run still plans
    out = snakemake(work, *args, check=False)  # the helper sets HF_HUB_OFFLINE=1
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "models.llama-7b.path: huggyllama/llama-7bb is not in the local cache" in text
    assert not (work / "logs").exists() and not (work / "results").exists()  # no job ran
