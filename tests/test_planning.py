"""Planning stays cheap without changing the plan: per-model settings shared by every model are plain
values in the shard rule (no function for Snakemake to call per job), and each shard job still gets
its own model's settings when they differ. Also: light job modules load no deep-learning library."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, copy_workflow

# every module whose import needs no deep-learning library: the light jobs' modules, and the layer
# jobs' (their merges and --help need none; the layer functions import torch themselves)
LIGHT_MODULES = [
    "table1_2", "table3", "table5", "table_files", "tsv", "dag", "config_checks", "annotate", "annotation_cost",
    "code_version", "annotation_files", "annotation_prompts", "shards", "released", "leases", "paper_data",
    "vocabulary", "replay", "chat_cache", "openai_chat", "importance", "attention", "ffn", "word_embeddings",
    "word_pieces", "devices",
    "report_pages", "position", "heatmaps", "attribution_views", "browser_data", "browser_index",
]
HEAVY = ("torch", "transformers", "tokenizers", "safetensors", "scipy", "matplotlib")
ALLOWED: dict[str, set[str]] = {}  # none needs one at import


def plan(work: Path, *args: str) -> list[dict]:
    """Every job of `snakemake -n` with its params and resources (bench/plan_dump.py)."""
    out = work / "plan.jsonl"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(REPO / "bench/plan_dump.py"), str(out), "--", *args],
                            cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.workflow
def test_each_shard_job_gets_its_own_models_settings_shared_or_not(tmp_path):
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["models"]["demo-base"]["gpus"] = 1
    config["models"]["demo-tuned"]["gpus"] = 3
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    shards = [job for job in plan(work, "all") if job["rule"] == "attribute_shard"]
    assert {job["wildcards"]["model"] for job in shards} == {"demo-base", "demo-tuned"}
    for job in shards:
        model = job["wildcards"]["model"]
        assert job["resources"]["gpu"] == str({"demo-base": 1, "demo-tuned": 3}[model])
        assert job["params"]["path"] == repr(config["models"][model]["path"])
        assert job["input"][1:] == [config["models"][model]["path"]]  # the built model directory
        assert f"workflow_scripts.leases {job['resources']['gpu']} --" in job["shell"]
    digests = {job["wildcards"]["shard"]: job["params"]["samples"] for job in shards}
    assert len(set(digests.values())) == len(digests)  # one digest per shard, the same for both models

    config["models"]["demo-tuned"]["gpus"] = 1  # shared: a plain value, the same plan for both
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    assert {job["resources"]["gpu"] for job in plan(work, "all") if job["rule"] == "attribute_shard"} == {"1"}


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_load_no_deep_learning_library(module):
    """A table or merge job (and `--help`) starts in a fraction of a second: torch and transformers
    alone cost ~2 s per process, so they are imported only inside the functions that use them."""
    code = (f"import sys, workflow_scripts.{module}; "
            f"print(sorted({{name.split('.')[0] for name in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert set(json.loads(out.stdout.replace("'", '"'))) <= ALLOWED.get(module, set())
