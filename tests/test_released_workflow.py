"""The README's released-data command through real Snakemake: the paper's printed Table 2."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import PAPER_DIR
from test_workflow import copy_workflow, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.paper]

PRINTED_TABLE2 = {  # dataset: (n, mean pre-trained, mean tuned, p-value), Wu et al. 2024, Table 2
    "self_instruct": (252, 0.9394, 1.1302, 1.92e-5),
    "lima": (300, 1.2683, 1.5579, 2.53e-14),
    "mtbench": (80, 1.1777, 1.3440, 0.0382),
}


def test_released_data_command_writes_the_printed_table2(tmp_path):
    if not PAPER_DIR.is_dir():
        pytest.skip(f"the paper's released data is not at {PAPER_DIR}")
    work = copy_workflow(tmp_path)
    snakemake(work, "table1", "table2", "--configfile", "config/paper-released.yaml",
              "--config", f"paper_data={PAPER_DIR}")
    table = pd.read_csv(work / "results/tables/llama-vicuna/table2.tsv", sep="\t").set_index("dataset")
    assert list(table.index) == list(PRINTED_TABLE2)
    for group, (n, mean_pre, mean_tuned, p) in PRINTED_TABLE2.items():
        row = table.loc[group]
        assert (row.n, round(row.mean_pretrained, 4), round(row.mean_tuned, 4)) == (n, mean_pre, mean_tuned), group
        assert float(f"{row.p_value:.3g}") == p, group
    table1 = pd.read_csv(work / "results/tables/llama-vicuna/table1.tsv", sep="\t")
    assert table1["n_unfollowed"].tolist() == [44, 50, 19] and table1["n_followed"].tolist() == [194, 249, 60]
    assert "0.9394" in (work / "results/tables/llama-vicuna/table2.md").read_text()
