"""Real Snakemake runs of the offline demo, and what a dry run plans after each kind of edit."""
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "schemas", "config.yaml", "config", "datasets", "profiles", "envs", "report"]

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`env`: variables set on top of this process's (e.g. PYTHONPATH to run another copy of the code)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", **(env or {})}  # `env` may set the hub online
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1800,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def dry_run(workdir: Path, *args: str, env: dict | None = None) -> tuple[dict[str, int], str]:
    """Rule -> job count of a dry run (empty when nothing is to be done), and its output."""
    out = snakemake(workdir, "--dry-run", *args, env=env)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}, text
    block = text.split("Job stats:", 1)[1]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", block, re.M) if rule != "total"}, text


def planned_jobs(workdir: Path, *args: str, env: dict | None = None) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing is to be done)."""
    return dry_run(workdir, *args, env=env)[0]


def copy_workflow(target: Path) -> Path:
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy(source, target / name)
    return target


@pytest.fixture(scope="module")
def demo(finished_demo, tmp_path_factory):
    """The demo workflow run to completion (once per session), in this module's own copy."""
    from conftest import clone_run

    return clone_run(finished_demo, tmp_path_factory.mktemp("demo") / "work")


def test_demo_produces_both_tables_with_both_groups_populated(demo):
    table1 = pd.read_csv(demo / "results/tables/demo/table1.tsv", sep="\t")
    table2 = pd.read_csv(demo / "results/tables/demo/table2.tsv", sep="\t")
    assert list(table1["dataset"]) == ["self_instruct", "lima", "mtbench"]
    assert (table1["n_unfollowed"] >= 3).all() and (table1["n_followed"] >= 3).all()
    assert table1[["mean_unfollowed", "mean_followed", "p_value"]].notna().all().all()
    assert list(table2["n"]) == [14, 14, 16]
    assert table2[["mean_pretrained", "mean_tuned", "t", "p_value"]].notna().all().all()
    assert (demo / "results/tables/demo/table1.md").read_text().startswith("# Table 1")
    for log in ("logs/attribute_shard/demo-base/shard-0.log", "logs/table2/demo.log"):
        assert (demo / log).stat().st_size > 0
    assert "no GPU visible: running on the CPU" in (demo / "logs/attribute_shard/demo-base/shard-0.log").read_text()


def test_demo_explains_every_head_dimension_and_builds_table3(demo):
    bilinear = pd.read_csv(demo / "results/attention/bilinear_words.tsv", sep="\t", keep_default_na=False)
    assert list(bilinear.columns) == ["Model", "Size", "Layer", "Type", "Head", "Dim", "Rank", "Score", "TopK"]
    # one row per (model, layer, head, dimension): 2 models x 4 layers x 4 heads x 16 dimensions
    assert len(bilinear) == 512 and not bilinear.duplicated(["Model", "Layer", "Head", "Dim"]).any()
    assert (bilinear["TopK"] != "").mean() > 0.5
    table3 = pd.read_csv(demo / "results/tables/demo/table3.tsv", sep="\t")
    assert list(table3["layers"]) == ["0-0", "1-1", "2-2", "3-3"] and (table3["general_n"] > 0).all()
    assert (table3["instruct_n"] > 0).all(), "the demo vocabulary's instruction verbs reach every layer group"
    log = (demo / "logs/explain_attention_layer/demo-tuned/layer-2.log").read_text()
    assert ("read model.layers.2.self_attn.q_proj.weight, model.layers.2.self_attn.k_proj.weight, "
            "model.layers.2.input_layernorm.weight, model.embed_tokens.weight\n") in log


def test_demo_describes_every_ffn_component_with_words(demo):
    linear = pd.read_csv(demo / "results/ffn/linear_words.tsv", sep="\t", keep_default_na=False)
    assert list(linear.columns) == ["Model", "Size", "Layer", "Type", "Head", "Rank", "Score", "TopK"]
    assert len(linear) == 2 * 4 * 64  # models x layers x components (rank 64 = the hidden size)
    assert (linear["TopK"].str.count(r"\|\|\|") == 49).all()  # 50 words each
    per_layer = linear.groupby(["Model", "Layer"])["Score"].sum()
    assert ((per_layer > 0.995) & (per_layer < 1.005)).all()  # all components: the whole variance (4 decimals each)


def test_changing_an_ffn_setting_plans_only_the_ffn_jobs(demo):
    jobs = planned_jobs(demo, "--configfile", edited_config(demo, "ffn", top_k=20))
    # new word lists: new annotations (5 seeds x 3 steps), the cost report, Table 5 and Figure 3, their
    # report pages (Table 5 x 2, cost; provenance shows the ffn config) and the browser that shows them
    assert jobs == {"explain_ffn_layer": 8, "merge_linear_words": 1, "annotate_describe": 5, "annotate_task": 5,
                    "annotate_level": 5, "annotation_cost": 1, "table5_pair": 1, "figure3_pair": 1,
                    "report_table": 3, "provenance": 1, "browse_pair": 1, "all": 1}


def test_demo_annotates_the_ffn_concepts_and_builds_table5_and_figure3(demo):
    annotation = demo / "results/annotation/demo"
    for seed in range(5):
        described = pd.read_csv(annotation / f"linear_seed{seed}.tsv", sep="\t", keep_default_na=False, quoting=3)
        assert list(described.columns[:4]) == ["Explainable", "Words", "Summary", "Model"]
        # 2 models x 4 layers x the top 4 components (annotation.max_rank)
        assert len(described) == 32 and set(described["Rank"]) == {1, 2, 3, 4}
        assert described["Words"].str.match(r"^Words: (\S+, ){14}\S+\.$").all()
        assert (described["Summary"] != "").all()
        tasks = pd.read_csv(annotation / f"linear_task_seed{seed}.tsv", sep="\t", keep_default_na=False, quoting=3)
        assert len(tasks) == described["Explainable"].sum() > 0
    for name, categories in (("tasks", ["writing", "math", "coding", "translation", "none"]),
                             ("levels", ["phonology", "morphology", "syntax", "semantic"])):
        table = pd.read_csv(demo / f"results/tables/demo/table5_{name}.tsv", sep="\t").set_index("category")
        assert list(table.index) == [*categories, "other", "described"]
        shares = table.loc[[*categories, "other"], ["mean_pretrained", "mean_tuned"]]
        assert shares.apply(lambda c: c.between(0, 1)).all().all()
        # 2 models x 4 layers x the top 4 components, less any "Cannot Tell", per model and seed
        assert (table.loc["described", ["mean_pretrained", "mean_tuned"]].between(1, 16)).all()
    cost = pd.read_csv(demo / "results/tables/demo/annotation_cost.tsv", sep="\t", keep_default_na=False)
    assert len(cost) == 16 and cost["step"].iloc[-1] == "total"
    assert set(cost["provider"][:15]) == {"local"} and (cost["prompt_tokens"][:15].astype(int) > 0).all()
    for suffix in (".png", ".pdf"):
        assert (demo / f"results/figures/demo/figure3{suffix}").stat().st_size > 10_000


def test_adding_a_seed_plans_only_that_seeds_jobs_and_the_tables(demo):
    jobs = planned_jobs(demo, "--configfile", edited_config(demo, "annotation", seeds=[0, 1, 2, 3, 4, 5]))
    assert jobs == {"annotate_describe": 1, "annotate_task": 1, "annotate_level": 1, "annotation_cost": 1,
                    "table5_pair": 1, "figure3_pair": 1, "report_table": 3, "provenance": 1, "browse_pair": 1,
                    "all": 1}


def test_a_price_of_a_model_the_annotation_does_not_ask_reruns_nothing(demo):
    """The cost table's params held every model's price: pricing another model reran it and the provenance page."""
    prices = {"gpt-x": {"prompt": 1.0, "completion": 2.0}}  # the demo asks its local annotator, priced at 0
    assert planned_jobs(demo, "--configfile", edited_config(demo, "annotation", prices=prices)) == {}


def test_a_local_annotator_named_by_default_or_by_its_folder_name_reruns_nothing(demo):
    """model: null names a local annotator after its folder: writing that name out asks the same model."""
    config = yaml.safe_load((demo / "config.yaml").read_text())
    provider = config["annotation"]["provider"]
    assert provider["kind"] == "local" and provider["model"] == Path(provider["path"]).name  # the demo's
    unnamed = {**provider, "model": None}
    assert planned_jobs(demo, "--configfile", edited_config(demo, "annotation", provider=unnamed)) == {}


def test_changing_an_attention_setting_plans_only_the_attention_jobs(demo):
    jobs = planned_jobs(demo, "--configfile", edited_config(demo, "attention", top_k=50))
    assert jobs == {"explain_attention_layer": 8, "merge_bilinear_words": 1, "table3_pair": 1, "report_table": 1,
                    "provenance": 1, "browse_pair": 1, "all": 1}


def test_new_word_vectors_in_the_same_file_plan_the_attention_jobs_again(demo, tmp_path):
    """The vectors decide which word pairs a head keeps: a file replaced in place is a changed input."""
    from conftest import clone_run

    work = clone_run(demo, tmp_path / "work")
    vectors = work / "vectors.txt"
    vectors.write_text("the 1 0\nsay 0 1\n")
    config = edited_config(work, "attention", word_vectors={"kind": "glove-text", "path": "vectors.txt"})
    snakemake(work, "--touch", "--configfile", config)  # as if the layer jobs had run with these vectors
    assert planned_jobs(work, "--configfile", config) == {}
    vectors.write_text("the 0 1\nsay 1 0\n")
    os.utime(vectors, (time.time() + 5, time.time() + 5))
    assert planned_jobs(work, "--configfile", config) == {  # (the provenance page lists no word vectors)
        "explain_attention_layer": 8, "merge_bilinear_words": 1, "table3_pair": 1, "report_table": 1,
        "browse_pair": 1, "all": 1}


def test_a_word_vectors_folder_whose_files_are_replaced_in_place_plans_the_attention_jobs_again(demo, tmp_path):
    """A sentence-transformers model (the paper's own route) is a folder of module folders: its date stays
    as it was when a file inside is written over, and the heads were kept from the old vectors."""
    from conftest import clone_run
    from test_word_vectors import averaged_word_model

    work = clone_run(demo, tmp_path / "work")
    words = ["say", "the", "write"]
    folder = averaged_word_model(work / "vectors", words, np.array([[1, 0], [0, 1], [1, 1]], np.float32))
    config = edited_config(work, "attention", word_vectors={"kind": "sentence-transformers", "path": "vectors"})
    snakemake(work, "--touch", "--configfile", config)  # as if the layer jobs had run with these vectors
    assert planned_jobs(work, "--configfile", config) == {}
    averaged_word_model(tmp_path / "other", words, np.array([[0, 1], [1, 0], [1, 1]], np.float32))
    inner = sorted(p.relative_to(tmp_path / "other") for p in (tmp_path / "other").rglob("*") if p.is_file())
    for name in inner:  # written over in place: the folder and its module folders keep their entries
        shutil.copyfile(tmp_path / "other" / name, folder / name)
        os.utime(folder / name, (time.time() + 5, time.time() + 5))
    assert planned_jobs(work, "--configfile", config) == {
        "explain_attention_layer": 8, "merge_bilinear_words": 1, "table3_pair": 1, "report_table": 1,
        "browse_pair": 1, "all": 1}


@pytest.mark.parametrize("replaced", ["model.safetensors", "tokenizer.json", "pytorch_model.bin"])
def test_a_model_folder_whose_files_are_replaced_in_place_plans_that_models_jobs_again(demo, tmp_path, replaced):
    """A folder's date changes only when an entry is added or removed, so weights copied over a model's
    own (a new download into the same --local-dir) left every job from it "up to date", and the tables
    described the old weights. The model's files are inputs themselves now."""
    from conftest import clone_run

    work = clone_run(demo, tmp_path / "work")
    own = work / "mymodels/tuned"
    shutil.copytree(work / "resources/models/demo-tuned", own, ignore=shutil.ignore_patterns(".snakemake*"))
    if replaced == "pytorch_model.bin":  # weights saved the older way (transformers loads them alike)
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(own / "model.safetensors"), own / replaced)
        (own / "model.safetensors").unlink()
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["models"]["demo-tuned"] = {"path": "mymodels/tuned", "layers": 4}
    (work / "own.yaml").write_text(yaml.safe_dump(config))
    snakemake(work, "--touch", "--configfile", "own.yaml")  # as if every job had run with this folder
    assert planned_jobs(work, "--configfile", "own.yaml") == {}
    target = own / replaced  # a copy of the fixture's file (copytree), so written in place: the folder is unchanged
    if replaced == "tokenizer.json":  # the two demo models share one tokenizer: another text of it
        target.write_text(target.read_text(encoding="utf8") + "\n", encoding="utf8")
    elif replaced == "pytorch_model.bin":
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(work / "resources/models/demo-base/model.safetensors"), target)
    else:
        shutil.copyfile(work / "resources/models/demo-base" / replaced, target)
    os.utime(target, (time.time() + 5, time.time() + 5))  # Snakemake reads the content only of a newer file
    jobs = planned_jobs(work, "--configfile", "own.yaml")
    assert (jobs["attribute_shard"], jobs["word_pieces"], jobs["explain_attention_layer"], jobs["explain_ffn_layer"]) \
        == (6, 1, 4, 4)


@pytest.mark.parametrize("override", ["attribution={chunk_size: 16}", "attribution={autodiff: reverse}",
                                      "models={demo-base: {gpus: 1}}", "attention={gpus: 2}",
                                      "annotation={provider: {batch_size: 8, timeout_s: 30, gpus: 0}}",
                                      "annotation={provider: {api_key_env: OTHER_KEY}}"])
def test_a_speed_placement_or_plumbing_setting_plans_nothing(demo, override):
    """Not even the provenance page: it reran, then stated settings the results were not made with (renaming
    the variable that holds the API key reran it, though the README says it reruns nothing)."""
    assert planned_jobs(demo, "--config", override) == {}


TABLES_1_2_PAGES = {"table1_pair": 1, "table2_pair": 1, "report_table": 2, "provenance": 1, "all": 1}
HEADS_ON = {"explain_attention_layer": 8, "merge_bilinear_words": 1, "table3_pair": 1, "report_table": 1,
            "provenance": 1, "browse_pair": 1, "all": 1}
ANNOTATION_ON = {"annotate_describe": 5, "annotate_task": 5, "annotate_level": 5, "annotation_cost": 1,
                 "table5_pair": 1, "figure3_pair": 1, "report_table": 3, "provenance": 1, "browse_pair": 1, "all": 1}


@pytest.mark.parametrize("override, expected", [
    ("notice=Another notice", {"table1_pair": 1, "table2_pair": 1, "table3_pair": 1, "table5_pair": 1,
                               "report_table": 5, "all": 1}),  # not the cost table, which has no notice
    ("report={samples: 1}", {"attribution_heatmaps": 1, "provenance": 1, "all": 1}),
    ("dataset={groups: {user_oriented_task_: self_instruct, lima_author_: lima_2023, mtbench_: mtbench}}",
     {**TABLES_1_2_PAGES, "attribution_heatmaps": 1}),
    ("ratings={column_value: another-model}", {"table1_pair": 1, "report_table": 1, "provenance": 1, "all": 1}),
    ("attribution={shard_size: 4}", {**TABLES_1_2_PAGES, "attribute_shard": 22, "merge_attributions": 2,
                                     "attribution_heatmaps": 1, "position_importance": 1}),  # 2 x 11 shards
    ("attention={baseline_words: 2000}", HEADS_ON),
    ("ffn={rank: 32}", {**ANNOTATION_ON, "explain_ffn_layer": 8, "merge_linear_words": 1}),
    ("annotation={words: 10}", ANNOTATION_ON),
    ("annotation={max_rank: 3}", ANNOTATION_ON),
    ("annotation={max_tokens: 20}", ANNOTATION_ON),
    ("annotation={cache: resources/annotation/another.sqlite}", ANNOTATION_ON),
    ("models={demo-tuned: {size: 13B}}", {**HEADS_ON, **ANNOTATION_ON, "explain_attention_layer": 4,
                                          "explain_ffn_layer": 4, "merge_linear_words": 1, "report_table": 4}),
    ("paper_commit=" + "0" * 40, {}),
])
def test_each_config_change_plans_what_the_designs_table_says(demo, override, expected):
    """docs/design.md#configuration-and-incrementality, the rows the tests above leave out: a param holding more
    than its job reads reruns the job for nothing, one missing a key keeps a stale output."""
    assert planned_jobs(demo, "--config", override) == expected


def test_changing_fidelity_plans_the_explanation_jobs_and_what_reads_them_never_attribution(demo):
    """The word-piece rule reaches the head and FFN jobs (and through the FFN words the annotation, answered
    from the cache where the words did not change), the threshold rule the head jobs, the counting rule
    Table 3; attribution and Tables 1-2 never rerun."""
    assert "fidelity: paper" in (demo / "results/tables/demo/table3.md").read_text().splitlines()[0]
    jobs = planned_jobs(demo, "--config", "fidelity=canonical")
    assert jobs == {"word_pieces": 2, "explain_attention_layer": 8, "explain_ffn_layer": 8, "merge_bilinear_words": 1,
                    "merge_linear_words": 1, "table3_pair": 1, "annotate_describe": 5, "annotate_task": 5,
                    "annotate_level": 5, "annotation_cost": 1, "table5_pair": 1, "figure3_pair": 1, "report_table": 4,
                    "provenance": 1, "browse_pair": 1, "all": 1}


def test_released_word_pairs_give_table3_without_any_explanation_job(tmp_path):
    work = copy_workflow(tmp_path)
    rows = ["Model\tSize\tLayer\tType\tHead\tDim\tRank\tScore\tTopK"]
    for model, pairs in (("llama", "write=text|||get=take"), ("vicuna", "write=text|||explain=why|||get=take")):
        for layer in range(4):
            for dim in range(2):  # the same pairs in two dimensions: head-level knowledge
                rows.append(f"{model}\t7B\t{layer}\tQK\t0\t{dim}\t{dim + 1}\t1.0\t{pairs}")
    (work / "released.tsv").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["attention"]["released"] = {"path": "released.tsv", "models": {"demo-base": "llama", "demo-tuned": "vicuna"}}
    (work / "released.yaml").write_text(yaml.safe_dump(config))
    assert planned_jobs(work, "table3", "--configfile", "released.yaml") == {"table3_pair": 1, "table3": 1}
    snakemake(work, "table3", "--configfile", "released.yaml")
    table3 = pd.read_csv(work / "results/tables/demo/table3.tsv", sep="\t")
    # "explain" gains a pair in every layer's only head; general verbs ("get", "take") do not change
    assert list(table3["instruct_mean"]) == [1.0] * 4 and list(table3["instruct_n"]) == [1] * 4
    assert list(table3["general_n"]) == [0] * 4


def test_a_finished_run_plans_nothing(demo):
    assert planned_jobs(demo) == {}


LLAMA_VICUNA = {"demo-base": "llama", "demo-tuned": "vicuna"}


@pytest.mark.parametrize("key, path, edit", [
    ("vocabulary", "resources/demo/vocabulary_typo.tsv", lambda c, p: c.update(vocabulary=p)),
    ("ratings.path", "datasets/demo_ratings_typo.tsv", lambda c, p: c["ratings"].update(path=p)),
    ("attention.word_vectors.path", "glove.840B.300d.txt",
     lambda c, p: c["attention"].update(word_vectors={"kind": "glove-text", "path": p})),
    ("attention.released.path", "bilinear_words_typo.tsv",
     lambda c, p: c["attention"].update(released={"path": p, "models": LLAMA_VICUNA})),
    ("annotation.provider.path", "answers_typo",
     lambda c, p: c["annotation"].update(provider={"kind": "replay", "path": p})),
    ("annotation.provider.path", "resources/models/my-annotator",
     lambda c, p: c["annotation"]["provider"].update(path=p, build=None)),
])
def test_a_configured_input_file_that_is_missing_stops_the_plan_of_a_finished_run(demo, key, path, edit):
    """Snakemake plans nothing for a missing input whose job's outputs exist: a mistyped path looked accepted,
    the tables kept what the old file gave, and the provenance page named the new one."""
    config = yaml.safe_load((demo / "config.yaml").read_text())
    edit(config, path)
    (demo / "missing-input.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(demo, "--dry-run", "--configfile", "missing-input.yaml", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert f"missing-input.yaml:\n{key}: {path} not found" in text, text[-3000:]
    assert len(text.splitlines()) < 15, text


def edited_config(workdir: Path, section: str, **changes) -> str:
    """A copy of the demo config with some keys of one section changed, for --configfile."""
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config[section].update(changes)
    path = workdir / f"edited-{section}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path.name


@pytest.mark.parametrize("edit", [{"threshold": 6}, {"levels": 20}, {"p": 3}])
def test_changing_an_analysis_parameter_plans_only_the_tables(demo, edit):
    """And the report's pages that show densities: the tables', the heatmaps, the position profile."""
    jobs = planned_jobs(demo, "--configfile", edited_config(demo, "analysis", **edit))
    assert jobs == {"table1_pair": 1, "table2_pair": 1, "report_table": 2, "attribution_heatmaps": 1,
                    "position_importance": 1, "provenance": 1, "all": 1}


def test_changing_min_response_tokens_plans_only_table1(demo):
    jobs = planned_jobs(demo, "--configfile", edited_config(demo, "analysis", min_response_tokens=8))
    assert jobs == {"table1_pair": 1, "report_table": 1, "provenance": 1, "all": 1}


def test_changing_an_attribution_setting_plans_every_shard(demo):
    jobs = planned_jobs(demo, "--configfile", edited_config(demo, "attribution", max_new_tokens=50))
    assert jobs["attribute_shard"] == 12 and "demo_base_model" not in jobs


def test_appending_a_sample_plans_only_its_shard_of_each_model(demo):
    dataset = demo / "datasets/demo.tsv"
    original = dataset.read_text()
    try:
        dataset.write_text(
            original.rstrip("\n")
            + "\nlima_author_demo_99\tName three colours of the sea.\tBlue, green and grey are colours of the sea.\t"
            "Name three colours of the sea.\n"
        )
        jobs = planned_jobs(demo)
    finally:
        dataset.write_text(original)
    # 44 samples in shards of 8: the new one joins shard 5, of each of the two models
    assert jobs == {"attribute_shard": 2, "merge_attributions": 2, "table1_pair": 1, "table2_pair": 1,
                    "report_table": 2, "attribution_heatmaps": 1, "position_importance": 1, "provenance": 1, "all": 1}
    assert planned_jobs(demo) == {}


def test_editing_a_sample_plans_only_the_shard_holding_it(demo):
    dataset = demo / "datasets/demo.tsv"
    original = dataset.read_text()
    lines = original.splitlines(keepends=True)
    try:
        lines[1] = lines[1].replace("\t", " Please.\t", 2).replace(" Please.\t", "\t", 1)  # edit sample 1's response
        dataset.write_text("".join(lines))
        jobs = planned_jobs(demo)
    finally:
        dataset.write_text(original)
    assert jobs.get("attribute_shard") == 2 and "demo_base_model" not in jobs


def edited_code(target: Path, module: str, edit) -> dict[str, str]:
    """A copy of the package with `edit(text)` applied to one module, and the environment that plans
    and runs the workflow with that copy (what a user who upgraded shiftlens has)."""
    from conftest import copy_package

    path = copy_package(target) / module
    text = path.read_text()
    edited = edit(text)
    assert edited != text
    path.write_text(edited)
    return {"PYTHONPATH": str(target)}


TABLE_JOBS = {"table1_pair": 1, "table2_pair": 1, "report_table": 2, "provenance": 1, "all": 1}  # it lists the code


@pytest.mark.parametrize(
    ("module", "edit", "expected"),
    [
        # behaviour: a table's code, or a project module it imports, changed
        ("table1_2.py", lambda text: text + "\nSCORE_VERSION = 2\n", TABLE_JOBS),
        # a comment, a docstring or the layout: nothing a job computes changed
        ("table1_2.py", lambda text: text.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n\n", {}),
        # an expensive (GPU) job's code: it reruns only when its method version is raised
        ("attribution.py", lambda text: text + "\nREFACTORED = True\n", {}),
        ("code_versions.json",  # the attribution method's version raised by one, whatever it is now
         lambda text: re.sub(r'"attribution": (\d+)', lambda m: f'"attribution": {int(m.group(1)) + 1}', text, count=1),
         {"attribute_shard": 12, "merge_attributions": 2, "attribution_heatmaps": 1, "position_importance": 1}
         | TABLE_JOBS),
    ],
    ids=["table-code", "table-docstring", "gpu-code", "gpu-method-version"],
)
def test_a_code_change_reruns_the_jobs_that_ran_that_code(demo, tmp_path, module, edit, expected):
    """Snakemake's code trigger sees only a rule's shell line (`python -m workflow_scripts.X ...`),
    so without a code param an upgraded shiftlens would plan nothing and keep the old tables."""
    assert planned_jobs(demo, env=edited_code(tmp_path, module, edit)) == expected


def test_released_paper_config_plans_the_conversion_of_both_models(tmp_path):
    work = copy_workflow(tmp_path)
    paper = REPO.parent / "shared" / "paper"
    if not paper.is_dir():
        pytest.skip("the paper data (../shared/paper) is not beside the repository")
    jobs = planned_jobs(work, "table1", "table2", "--configfile", "config/paper-released.yaml",
                        "--config", f"paper_data={paper}")
    # the tables read the converted files directly: nothing is merged into a computed model's path
    assert jobs == {"paper_datasets": 1, "paper_released_attributions": 2, "convert_released_attributions": 2,
                    "table1_pair": 1, "table2_pair": 1, "table1": 1, "table2": 1}


def test_paper_config_dry_runs_with_gpu_resources(tmp_path):
    work = copy_workflow(tmp_path)
    paper = REPO.parent / "shared" / "paper"
    if not paper.is_dir():
        pytest.skip("the paper data (../shared/paper) is not beside the repository")
    out = snakemake(work, "table1", "table2", "--dry-run", "--configfile", "config/paper.yaml",
                    "--resources", "gpu=2", "--config", f"paper_data={paper}")
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout.split("Job stats:", 1)[1], re.M))
    assert jobs["attribute_shard"] == str(2 * 40)  # 632 samples in shards of 16, two models
    assert re.search(r"resources: .*gpu=1", out.stdout)  # one GPU per model (config/paper.yaml)


def test_paper_config_plans_one_gpu_job_per_model_and_layer_for_table3(tmp_path):
    work = copy_workflow(tmp_path)
    out = snakemake(work, "table3", "--dry-run", "--configfile", "config/paper.yaml", "--resources", "gpu=2")
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout.split("Job stats:", 1)[1], re.M))
    assert jobs["explain_attention_layer"] == "64"  # 32 layers x 2 models
    blocks = [b for b in out.stdout.split("\n\n") if "rule explain_attention_layer:" in b]
    assert len(blocks) == 64 and all(re.search(r"resources: .*gpu=1", b) for b in blocks)
    assert "attribute_shard" not in jobs


def test_paper_config_plans_one_gpu_job_per_model_and_layer_for_the_ffn(tmp_path):
    work = copy_workflow(tmp_path)
    out = snakemake(work, "ffn", "--dry-run", "--configfile", "config/paper.yaml", "--resources", "gpu=2")
    blocks = [b for b in out.stdout.split("\n\n") if "rule explain_ffn_layer:" in b]
    assert len(blocks) == 64 and all(re.search(r"resources: .*gpu=1", b) for b in blocks)


def test_bad_config_type_is_reported_with_its_key(tmp_path):
    work = copy_workflow(tmp_path)
    out = snakemake(work, "--dry-run", "--configfile", edited_config(work, "attribution", shard_size="eight"),
                    check=False)
    assert out.returncode != 0
    assert "shard_size" in out.stdout + out.stderr and "'eight' is not of type 'integer'" in out.stdout + out.stderr


@pytest.mark.parametrize(("configfile", "model", "target"), [
    ("config.yaml", "demo-base", "all"),
    # released attributions need no weights, but the head and FFN layer jobs read the folder: a missing one was
    # taken for no input at all, and each layer job failed on its own after deleting that layer's old results
    ("config/paper-released.yaml", "llama-7b", "table3"),
])
def test_missing_model_directory_is_reported_before_any_job(tmp_path, configfile, model, target):
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / configfile).read_text())
    config["models"][model]["path"] = "./no/such/model"
    config["models"][model].pop("build", None)
    (work / "moved.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(work, target, "--dry-run", "--configfile", "moved.yaml", check=False)
    assert out.returncode != 0
    assert f"models.{model}.path: model directory ./no/such/model not found" in out.stdout + out.stderr


def test_malformed_dataset_row_is_reported_with_file_and_line(tmp_path):
    work = copy_workflow(tmp_path)
    dataset = work / "datasets/demo.tsv"
    dataset.write_text(dataset.read_text() + "broken_row\tonly two fields\n")
    out = snakemake(work, "--dry-run", check=False)
    assert out.returncode != 0
    assert re.search(r"datasets/demo.tsv:46: expected 4 tab-separated fields", out.stdout + out.stderr)


def test_instruction_fragment_missing_from_its_prompt_is_reported_at_planning(tmp_path):
    work = copy_workflow(tmp_path)
    dataset = work / "datasets/demo.tsv"
    dataset.write_text(dataset.read_text() + "mtbench_math_demo_77\tAdd two and two.\tFour.\tMultiply them.\n")
    out = snakemake(work, "--dry-run", check=False)
    assert out.returncode != 0
    assert "mtbench_math_demo_77" in out.stdout + out.stderr and "'Multiply them.'" in out.stdout + out.stderr


def test_paper_config_plans_annotation_per_seed_and_step_and_gpus_only_for_explanations(tmp_path):
    work = copy_workflow(tmp_path)
    out = snakemake(work, "table5", "--dry-run", "--configfile", "config/paper.yaml", "--resources", "gpu=2")
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout.split("Job stats:", 1)[1], re.M))
    assert jobs == {"paper_datasets": "1", "word_pieces": "2", "explain_ffn_layer": "64", "annotate_describe": "5",
                    "annotate_task": "5", "annotate_level": "5", "annotation_cost": "1", "table5_pair": "1",
                    "table5": "1", "total": "85"}
    blocks = [b for b in out.stdout.split("\n\n") if re.search(r"^(local)?rule \w+:", b, re.M)]
    gpu_rules = {re.search(r"rule (\w+):", b).group(1) for b in blocks if re.search(r"resources: .*gpu=", b)}
    assert gpu_rules == {"explain_ffn_layer"}


def test_openai_provider_without_its_key_fails_before_any_job(tmp_path):
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["annotation"]["provider"] = {"kind": "openai", "model": "gpt-test", "api_key_env": "SHIFTLENS_NO_SUCH_KEY"}
    (work / "openai.yaml").write_text(yaml.safe_dump(config))
    assert "SHIFTLENS_NO_SUCH_KEY" not in os.environ
    assert planned_jobs(work, "table5", "--configfile", "openai.yaml")["annotate_describe"] == 5  # a dry run plans
    out = snakemake(work, "table5", "--configfile", "openai.yaml", check=False)
    assert out.returncode != 0
    assert "the environment variable SHIFTLENS_NO_SUCH_KEY is not set" in out.stdout + out.stderr
    assert not (work / "logs").exists() and not (work / "results").exists()  # no job ran


def test_rerun_after_deleting_the_annotations_sends_no_request(demo):
    # everything the annotation made (Snakemake would not redo missing intermediate files alone)
    tables = demo / "results/tables/demo"
    for path in (demo / "results/annotation", demo / "results/figures", *tables.glob("table5_*"),
                 *tables.glob("annotation_cost*")):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    snakemake(demo, "table5", "figure3", "report_explanations")  # and the report's pages of Table 5 and the cost
    cost = pd.read_csv(demo / "results/tables/demo/annotation_cost.tsv", sep="\t", keep_default_na=False)
    assert (cost["requests"].astype(int) == 0).all() and int(cost["cache_hits"].iloc[-1]) > 0
    log = (demo / "logs/annotate/demo/describe_seed0.log").read_text()
    assert "32 answered from the cache, 0 to ask" in log
    assert planned_jobs(demo) == {}


def test_a_local_annotator_waits_for_a_gpu_lease_as_every_gpu_job_does(finished_demo, tmp_path):
    """The in-process annotator ran on GPU 0 (torch's first device) whoever held it: with the only GPU leased
    by another job, an annotation step must wait for it, then lease it."""
    from conftest import clone_run

    work = clone_run(finished_demo, tmp_path / "work")
    locks = tmp_path / "locks"
    locks.mkdir()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               SHIFTLENS_FAKE_GPUS="1", SHIFTLENS_GPU_LOCK_DIR=str(locks))
    target = "results/annotation/demo/linear_concept_seed0.tsv"
    answers = work / target
    before = answers.read_text()
    log = work / "logs/annotate/demo/level_seed0.log"
    with open(locks / "gpu-0.lock", "w") as other_job:
        fcntl.flock(other_job, fcntl.LOCK_EX)  # another job's lease of GPU 0
        command = [sys.executable, "-m", "snakemake", "--cores", "2", "--force", target]
        run = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while "waiting for 1 free GPU(s)" not in (log.read_text() if log.exists() else ""):
            assert run.poll() is None, f"the run ended without waiting for GPU 0:\n{run.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "the annotation job neither waited nor ended"
            time.sleep(0.5)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    assert "leased GPU(s): CUDA_VISIBLE_DEVICES=0" in log.read_text()
    assert answers.read_text() == before  # from the cache


def test_long_jobs_show_progress_on_the_console_and_logs_hold_no_carriage_returns(finished_demo):
    console = (finished_demo / "console.txt").read_text()
    for stage in ("attribute demo-base shard 0: 0/", "pretrain", "explain demo-tuned layer 3: 0/4 heads",
                  "explain demo-tuned FFN layer 3: 0/3 steps", "heatmaps: 0/6 samples",
                  "convert SmolLM2-135M-Instruct: 2/2 steps done in"):  # half a minute, said only in its log before
        assert stage in console, stage
    assert re.search(r"attribute demo-tuned shard \d+: \d+/\d+ samples done in \d:\d\d:\d\d", console)
    logs = list((finished_demo / "logs").rglob("*.log"))
    # bytes: read as text, every "\r" was a newline and this could not fail (the annotator's conversion had a bar)
    assert logs and not [log for log in logs if b"\r" in log.read_bytes()]
