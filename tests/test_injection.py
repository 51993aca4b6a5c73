"""No config string is injectable and nothing is written outside the working directory.

Real Snakemake runs of the demo's rules with every config string that reaches a `shell:` line
poisoned ($(...), backticks, `;`, a quote breaking out, spaces). The paper data jobs run for real;
for the other rules `python` on the PATH is an argv recorder, so that every job starts at once and
the test sees exactly which arguments its shell line handed over.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import copy_workflow

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
CANARY = "canary"
PAYLOADS = {
    "dollar": " $(touch canary)",
    "backtick": " `touch canary`",
    "semicolon": " ;touch canary;",
    "quote": " ';touch canary;'",
}

RECORDER = f"""#!{sys.executable}
# records the arguments of every `python ...` a job runs, then fails the job (nothing else happens)
import json, os, sys
with open(os.environ["SHIFTLENS_ARGV_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(1)
"""


def run_snakemake(work: Path, *args: str, path_prefix: str = "", env_extra: dict | None = None):
    path = os.pathsep.join(filter(None, [path_prefix, str(Path(sys.executable).parent), os.environ["PATH"]]))
    env = dict(os.environ, PATH=path, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


def outside_entries(tmp_path: Path) -> set[str]:
    return {p.name for p in tmp_path.iterdir()}


@pytest.fixture
def work(tmp_path):
    (tmp_path / "work").mkdir()
    return copy_workflow(tmp_path / "work")


def poisoned_config(work: Path, payload: str) -> dict:
    """The demo config with every string a shell line sees carrying `payload`, and the files it names."""
    config = yaml.safe_load((work / "config.yaml").read_text())
    dataset = f"datasets/demo{payload}.tsv"
    (work / dataset).write_text((work / "datasets/demo.tsv").read_text())
    ratings = f"datasets/ratings{payload}.tsv"
    (work / ratings).write_text((work / "datasets/demo_ratings.tsv").read_text())
    vocabulary = f"datasets/vocabulary{payload}.tsv"
    (work / vocabulary).write_text("the\t10\nwrite\t5\n")
    released_pairs = f"released{payload}.tsv"
    (work / released_pairs).write_text("Model\tSize\tLayer\tType\tHead\tDim\tRank\tScore\tTopK\n")
    config.update(paper_commit=f"52508a0a{payload}", paper_data=f"paper{payload}", vocabulary=vocabulary)
    config["dataset"]["samples"] = dataset
    config["dataset"]["groups"][f"lima{payload}"] = "lima"
    config["ratings"].update(path=ratings, column_value=f"demo-tuned{payload}")
    model = work / f"models/base{payload}"  # a local model directory (its config.json gives the shape)
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}')
    config["models"]["demo-base"] = {"path": f"models/base{payload}", "gpus": 0, "size": f"7B{payload}"}
    config["models"]["extra"] = {"path": "org/extra", "attribution": "released", "released": "ifa_extra"}
    config["attention"]["word_vectors"] = {"kind": "glove-text", "path": f"vectors{payload}.txt"}
    (work / f"vectors{payload}.txt").write_text("the 1 0\nwrite 0 1\n")  # an input of the head jobs
    config["attention"]["released"] = {"path": released_pairs,
                                       "models": {"demo-base": f"llama{payload}", "demo-tuned": f"vicuna{payload}"}}
    for model in ("demo-base", "demo-tuned"):  # the tables' inputs, so that the table jobs start
        (work / f"results/attribution/{model}").mkdir(parents=True)
        (work / f"results/attribution/{model}/attributions.npz").write_bytes(b"")
    (work / "resources/paper/results/attribution_interpret/ifa_extra").mkdir(parents=True)
    return config


def arguments(lines: list[list[str]], module: str, flag: str) -> list[str]:
    """The value of `flag` (`FLAG VALUE` or `FLAG=VALUE`) in every recorded command line of
    `module` (innermost command)."""
    values = []
    for argv in lines:
        start = max(i for i, arg in enumerate(argv) if arg == "-m") if "-m" in argv else 0
        if argv[start + 1 : start + 2] != [module]:
            continue
        words = argv[start:]
        for i, word in enumerate(words):
            if word == flag and i + 1 < len(words):
                values.append(words[i + 1])
                break
            if word.startswith(flag + "="):
                values.append(word[len(flag) + 1 :])
                break
    return values


@pytest.mark.parametrize("style", list(PAYLOADS))
def test_poisoned_config_strings_reach_every_job_as_one_literal_argument(work, tmp_path, style):
    payload = PAYLOADS[style]
    config = poisoned_config(work, payload)
    (work / "poisoned.yaml").write_text(yaml.safe_dump(config))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(RECORDER)
    (bin_dir / "python").chmod(0o755)
    log = tmp_path / "argv.jsonl"
    targets = ["paper_datasets", "resources/paper/results/attribution_interpret/ifa_other", "resources/demo/corpus.txt",
               "results/attribution/demo-base/shards/shard-0.npz", "results/attribution/extra/released.npz",
               "results/attention/demo-base/layer-0.tsv", "results/ffn/demo-base/layer-0.tsv",
               "results/tables/demo/table1.tsv", "results/tables/demo/table2.tsv", "results/tables/demo/table3.tsv"]
    # the hand-made attribution files stand as sources: no merge or model build is considered
    rules = ["paper_datasets", "paper_released_attributions", "demo_corpus", "attribute_shard",
             "convert_released_attributions", "explain_attention_layer", "explain_ffn_layer", "table1_pair",
             "table2_pair", "table3_pair"]
    cut = run_snakemake(work, "results/word_pieces/demo-base.tsv", "--allowed-rules", "word_pieces", "--configfile",
                        "poisoned.yaml", path_prefix=str(bin_dir), env_extra={"SHIFTLENS_ARGV_LOG": str(log)})
    (work / "results/word_pieces").mkdir(parents=True, exist_ok=True)  # the layer jobs' input, hand-made
    (work / "results/word_pieces/demo-base.tsv").write_text('Word\tTokens\tIds\n"the"\t["the"]\t[1]\n')
    out = run_snakemake(work, *targets, "--allowed-rules", *rules, "--configfile", "poisoned.yaml",
                        path_prefix=str(bin_dir),
                        env_extra={"SHIFTLENS_ARGV_LOG": str(log)})
    text = cut.stdout + cut.stderr + out.stdout + out.stderr
    assert not (work / CANARY).exists(), "a config string ran as a command"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    expected = {
        ("workflow_scripts.paper_data", "--commit"): config["paper_commit"],
        ("workflow_scripts.paper_data", "--source"): config["paper_data"],
        ("workflow_scripts.demo_models", "--dataset"): config["dataset"]["samples"],
        ("workflow_scripts.attribution", "--model-dir"): config["models"]["demo-base"]["path"],
        ("workflow_scripts.attribution", "--dataset"): config["dataset"]["samples"],
        ("workflow_scripts.released", "--dataset"): config["dataset"]["samples"],
        ("workflow_scripts.attention", "--model-dir"): config["models"]["demo-base"]["path"],
        ("workflow_scripts.word_pieces", "--model-dir"): config["models"]["demo-base"]["path"],
        ("workflow_scripts.word_pieces", "--vocabulary"): config["vocabulary"],
        ("workflow_scripts.attention", "--word-vectors-path"): config["attention"]["word_vectors"]["path"],
        ("workflow_scripts.attention", "--size"): config["models"]["demo-base"]["size"],
        ("workflow_scripts.ffn", "--model-dir"): config["models"]["demo-base"]["path"],
        ("workflow_scripts.table1_2", "--dataset"): config["dataset"]["samples"],
        ("workflow_scripts.table1_2", "--ratings"): config["ratings"]["path"],
        ("workflow_scripts.table1_2", "--rated-model"): config["ratings"]["column_value"],
        ("workflow_scripts.table3", "--bilinear-words"): config["attention"]["released"]["path"],
        ("workflow_scripts.table3", "--pretrained"): f"llama{payload}",
    }
    for (module, flag), value in expected.items():
        seen = arguments(lines, module, flag)
        assert seen and set(seen) == {value}, f"{module} {flag}: {seen} (expected {value!r})\n{text[-3000:]}"
    groups = arguments(lines, "workflow_scripts.table1_2", "--groups")
    assert len(groups) == 2 and all(f"lima{payload}=lima" in g.split(",") for g in groups)
    assert outside_entries(tmp_path) == {"work", "bin", "argv.jsonl"}


def test_a_dataset_path_with_a_space_is_read_by_the_real_jobs(work, tmp_path):
    paper = REPO.parent / "shared" / "paper"
    config = yaml.safe_load((work / "config.yaml").read_text())
    (work / "datasets/demo data.tsv").write_text((work / "datasets/demo.tsv").read_text())
    config["dataset"]["samples"] = "datasets/demo data.tsv"
    (work / "spaced.yaml").write_text(yaml.safe_dump(config))
    out = run_snakemake(work, "resources/demo/corpus.txt", "--configfile", "spaced.yaml")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    first_prompt = (work / "datasets/demo.tsv").read_text().splitlines()[1].split("\t")[1].split("/n")[0]
    assert first_prompt in (work / "resources/demo/corpus.txt").read_text()
    if paper.is_dir():  # the paper data copied for real from a folder whose name carries every payload
        source = tmp_path / ("paper" + "".join(PAYLOADS.values()))
        source.symlink_to(paper)
        config.update(paper_data=str(source), paper_commit=f"52508a0a{PAYLOADS['dollar']}")
        (work / "spaced.yaml").write_text(yaml.safe_dump(config))
        out = run_snakemake(work, "paper_datasets", "--configfile", "spaced.yaml")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert (work / "resources/paper/datasets/FinalDataset.tsv").stat().st_size > 100_000
    assert not (work / CANARY).exists()


@pytest.mark.parametrize("case", ["pair id", "model id", "group name", "released folder", "built model path",
                                  "annotator path", "released sample id", "sample id"])
def test_ids_and_paths_that_would_escape_the_working_directory_stop_the_run(work, tmp_path, case):
    config = yaml.safe_load((work / "config.yaml").read_text())
    if case == "pair id":
        config["pairs"]["../../x"] = config["pairs"].pop("demo")
        expected = "pairs: the key '../../x' is not allowed"
    elif case == "model id":
        config["models"]["../m"] = config["models"].pop("demo-base")
        expected = "models: the key '../m' is not allowed"
    elif case == "group name":
        config["dataset"]["groups"]["lima_author_"] = "../../g"
        expected = "dataset.groups.lima_author_: '../../g' does not match"
    elif case == "released folder":
        config["models"]["demo-base"].update(attribution="released", released="../../../etc")
        expected = "models.demo-base.released: '../../../etc' does not match"
    elif case == "built model path":
        config["models"]["demo-base"]["path"] = "../outside-model"
        expected = "models.demo-base.path: ../outside-model is written by this workflow"
    elif case == "annotator path":
        config["annotation"]["provider"]["path"] = "../outside-annotator"
        expected = "annotation.provider.path: ../outside-annotator is written by this workflow"
    else:  # a sample id names its heatmap files (and a released attribution's pickle)
        dataset = work / "datasets/demo.tsv"
        dataset.write_text(dataset.read_text() + "demo_../../x\tSay hi.\tHi.\tSay hi.\n")
        if case == "released sample id":
            config["models"]["demo-base"].update(attribution="released", released="ifa_demo")
        expected = "ID 'demo_../../x' is not a plain file name"
    (work / "escape.yaml").write_text(yaml.safe_dump(config))
    out = run_snakemake(work, "table1", "table2", "--configfile", "escape.yaml")
    assert out.returncode != 0 and expected in out.stdout + out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
    assert len((out.stdout + out.stderr).splitlines()) < 15
    assert outside_entries(tmp_path) == {"work"} and not (work / "results").exists() and not (work / "logs").exists()
