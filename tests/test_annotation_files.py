"""One name per annotation file (issue 13): the rules, the replay provider, the annotation jobs and
Table 5 all take the paper's file and column names from workflow_scripts/annotation_files.py."""
import re
from pathlib import Path

from workflow_scripts import annotation_files, replay
from workflow_scripts.annotation_files import DESCRIBED_COLUMNS, FILES, LABEL_COLUMN, question_field, step_columns
from workflow_scripts.tsv import LINEAR_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def test_the_paper_names_of_the_three_steps():
    assert FILES == {"describe": "linear_seed{seed}.tsv", "task": "linear_task_seed{seed}.tsv",
                     "level": "linear_concept_seed{seed}.tsv"}
    assert step_columns("describe") == ("Explainable", "Words", "Summary", *LINEAR_COLUMNS) == DESCRIBED_COLUMNS
    assert step_columns("task")[:2] == ("Task", "Explainable")
    assert step_columns("level")[:2] == ("Concept", "Explainable")
    assert list(LABEL_COLUMN) == list(FILES)


def test_no_rule_file_spells_an_annotation_file_name():
    """The rules' outputs come from annotation_files.FILES; a name written out in a rule file would be
    a second copy that can drift (a renamed file the replay provider no longer finds)."""
    stems = [name.split("{")[0] for name in FILES.values()]  # linear_seed, linear_task_seed, ...
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if any(re.search(rf"\b{stem}", line) for stem in stems)
    ]
    assert found == []


def test_the_replay_provider_reads_the_same_names():
    assert replay.FILES is annotation_files.FILES


def test_a_question_holding_a_line_break_tab_or_carriage_return_is_written_on_one_line():
    """The lossless layer files keep any word, a carriage return too: the question column writes each
    layout character escaped (`/n`, `/t`, `/r`), else the describe file could not be written as TSV."""
    assert question_field("Words: a\nb, c\td, e\rf.") == "Words: a/nb, c/td, e/rf."
