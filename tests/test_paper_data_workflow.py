"""The paper-data rules in real Snakemake runs: what reruns them (the manifest's checksums) and what
does not (where the identical, checksum-verified data are read from)."""
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import clone_run
from test_workflow import copy_workflow, dry_run, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.paper]

RELEASES = ["resources/paper/results/attribution_interpret/ifa_llama_7b",
            "resources/paper/results/attribution_interpret/ifa_vicuna_7b"]
DATA_RULES = {"paper_datasets", "paper_released_attributions"}
# what reads the fetched data: the word-pieces jobs (the vocabulary), the conversion of the releases
DOWNSTREAM = {"config/paper.yaml": ["ffn", "table3"], "config/paper-released.yaml": ["table1", "table2"]}


def local_copy(paper_dir: Path, target: Path) -> Path:
    """A local copy of the paper data at its own path: the same files (linked, not copied)."""
    target.mkdir(parents=True)
    for name in ("datasets", "results"):
        os.symlink(paper_dir / name, target / name)
    return target


@pytest.fixture(scope="module")
def fetched(paper_dir, tmp_path_factory):
    """A workflow whose paper data (datasets and both released folders) were fetched for real from dirA."""
    root = tmp_path_factory.mktemp("paper_source")
    (root / "work").mkdir()
    work = copy_workflow(root / "work")
    copy_a, copy_b = local_copy(paper_dir, root / "dirA"), local_copy(paper_dir, root / "dirB")
    snakemake(work, "paper_datasets", *RELEASES, "--configfile", "config/paper-released.yaml",
              "--config", f"paper_data={copy_a}")
    planned = {config: dry_run(work, *targets, "--configfile", config, "--config", f"paper_data={copy_a}")[0]
               for config, targets in DOWNSTREAM.items()}
    return work, copy_a, copy_b, planned


@pytest.mark.parametrize("change", ["moved", "null", "commit"])
def test_where_the_verified_paper_data_come_from_plans_nothing(fetched, change):
    """Moving the local copy (dirA -> dirB), dropping it (download), or naming another commit changes
    no content (the files are checked against the manifest), so neither the data rules nor the 128
    head and FFN layer jobs that read the vocabulary may rerun."""
    work, copy_a, copy_b, planned = fetched
    after = {"moved": [f"paper_data={copy_b}"], "null": ["paper_data="],
             "commit": [f"paper_data={copy_a}", "paper_commit=0123abcd"]}[change]
    assert dry_run(work, "paper_datasets", *RELEASES, "--configfile", "config/paper-released.yaml",
                   "--config", *after)[0] == {}
    for config, targets in DOWNSTREAM.items():
        jobs, text = dry_run(work, *targets, "--configfile", config, "--config", *after)
        assert "Params have changed" not in text and "updated by another job: resources/paper/" not in text
        assert jobs == planned[config] and not DATA_RULES & set(jobs)


def test_a_changed_checksum_in_the_manifest_plans_that_data_rule_again(fetched, tmp_path):
    """The manifest's checksums decide the content: a new one for a dataset reruns paper_datasets
    (and only it among the data rules)."""
    work = clone_run(fetched[0], tmp_path / "work")
    manifest = work / "datasets/paper-manifest.sha256"
    text = manifest.read_text()
    manifest.unlink()  # a hard link to the fixture's copy: replace it, never write through it
    manifest.write_text(re.sub(r"^\w{64}(?=  \./datasets/FinalDataset\.tsv$)", "0" * 64, text, flags=re.M))
    jobs, text = dry_run(work, "paper_datasets", *RELEASES, "--configfile", "config/paper-released.yaml",
                         "--config", f"paper_data={fetched[1]}")
    assert jobs == {"paper_datasets": 1} and "Params have changed" in text


def test_a_run_after_the_manifest_names_a_new_dataset_stops_before_its_jobs_but_the_fetch(fetched, tmp_path):
    """The shards of changed samples cannot be planned before the new file is fetched (and Snakemake drops an
    input function's error where outputs exist): one run remade Tables 1-2 from attributions of the old
    samples and said done. Now a dry run warns, a run stops before its first job, and the fetch may run."""
    work = clone_run(fetched[0], tmp_path / "work")
    manifest = work / "datasets/paper-manifest.sha256"
    text = manifest.read_text()
    manifest.unlink()  # a hard link to the fixture's copy: replace it, never write through it
    manifest.write_text(re.sub(r"^\w{64}(?=  \./datasets/FinalDataset\.tsv$)", "0" * 64, text, flags=re.M))
    released, log = ("--configfile", "config/paper-released.yaml"), work / "logs/paper_datasets.log"
    assert "FinalDataset.tsv does not match datasets/paper-manifest.sha256" in dry_run(work, "table2", *released)[1]
    before = log.read_text()
    out = snakemake(work, "table2", *released, check=False)
    assert out.returncode != 0 and "run `snakemake --cores 1 -f paper_datasets` first" in out.stdout + out.stderr
    assert not (work / "results").exists() and log.read_text() == before  # no job ran
    snakemake(work, "paper_datasets", *released, "--config", f"paper_data={fetched[1]}", check=False)
    assert "does not match the manifest" in log.read_text()  # it ran (the local copy is not the new data)


def test_a_local_copy_whose_file_does_not_match_the_manifest_fails_naming_it(paper_dir, tmp_path):
    """The vocabulary (read by no planning step) stands for any file: the job fails, the log names the
    file, and nothing is moved into place."""
    (tmp_path / "work").mkdir()
    work = copy_workflow(tmp_path / "work")
    source = tmp_path / "tampered"
    shutil.copytree(paper_dir / "datasets", source / "datasets")
    (source / "datasets/SingleShareGPT_Vocab.tsv.gz").unlink()
    (source / "datasets/SingleShareGPT_Vocab.tsv").write_text("the\t0.5\n")
    out = snakemake(work, "paper_datasets", "--configfile", "config/paper.yaml", "--config", f"paper_data={source}",
                    check=False)
    assert out.returncode != 0
    assert re.search(rf"{re.escape(str(source))}/datasets/SingleShareGPT_Vocab.tsv: SHA-256 \w+ does not match the "
                     "manifest", out.stdout + out.stderr)
    assert not (work / "resources/paper/datasets/SingleShareGPT_Vocab.tsv").exists()
