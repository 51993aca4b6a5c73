"""Table 5 and Figure 3: what the FFN concepts are for, pre-trained vs tuned (docs/design.md#table-5).

Input: per seed, the annotated concept files (`linear_task_seed{s}.tsv` with a `Task` column,
`linear_concept_seed{s}.tsv` with a `Concept` column, each followed by `Explainable Words
Summary` and the `linear_words.tsv` columns). For every seed and model, the share of described
concepts (Explainable = 1) whose label contains a category; Table 5 gives the mean and the
population std of those shares over seeds, and a two-sided t-test between the models' per-seed
shares (Student's, as the paper), plus `other` (the share whose label names no category) and
`described` (how many concepts were described). Figure 3 plots, per group of layers (numbered
from 0, as Table 3), the share of each linguistic level, mean over seeds with the std as error
bars: pre-trained dashed, tuned solid.
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .annotation_files import DESCRIBED_COLUMNS, LABEL_COLUMN, REFUSED
from .atomic import atomic_file
from .table_files import layer_range, write_table
from .table_stats import t_test
from .tsv import read_tsv

TASKS = ("writing", "math", "coding", "translation", "none")
LEVELS = ("phonology", "morphology", "syntax", "semantic")
TABLE5_COLUMNS = ["category", "mean_pretrained", "std_pretrained", "mean_tuned", "std_tuned", "t", "p_value"]


def read_seed_file(path: str | Path, label: str) -> pd.DataFrame:
    """One seed's annotations; `label` is the first column (Task or Concept)."""
    columns = (label, *DESCRIBED_COLUMNS)
    lines = read_tsv(path, columns)
    frame = pd.DataFrame([fields for _, fields in lines], columns=list(columns), dtype=str)
    for column in ("Explainable", "Layer", "Rank"):
        bad = pd.to_numeric(frame[column], errors="coerce").isna()
        if bad.any():
            line = lines[int(np.flatnonzero(bad.to_numpy())[0])][0]
            raise ValueError(f"{path}:{line}: {column} {frame[column][bad].iloc[0]!r} is not a number")
        frame[column] = pd.to_numeric(frame[column])
    return frame.rename(columns={label: "Label"})


def category_text(labels: pd.Series) -> pd.Series:
    """Labels as the categories are looked for in them (lower case, substrings, as the paper): a
    refusal names no category, even where its text lists them ("I can't classify this as Syntax...").

    Args:
        labels: (concepts,) one answer each (a Task or Concept column), as read_seed_file gives them
    """
    return labels.where(~labels.str.startswith(REFUSED), "").str.lower()


def refusals_note(seed_files, label: str) -> str:
    """How many of the answers in the table's files are refusals (counted as `other`), if any."""
    labels = [read_seed_file(path, label)["Label"] for path in seed_files]
    refused = sum(int(label.str.startswith(REFUSED).sum()) for label in labels)
    if not refused:
        return ""
    return (f"{refused} of the {sum(len(label) for label in labels)} answers are refusals, counted as other "
            "(naming no category)")


def _shares(frame: pd.DataFrame, model: str, categories, path) -> list[float]:
    """Per category, the share of the model's described concepts whose label names it; then the
    share naming none of them (`other`: free-text labels such as "business accounting") and the
    number of described concepts, so that nothing a seed said drops out of the table unseen."""
    described = frame[(frame["Model"] == model) & (frame["Explainable"] == 1)]
    if described.empty:
        raise ValueError(f"{path}: no described concepts of the model {model!r}")
    labels = category_text(described["Label"])
    named = np.array([labels.str.contains(re.escape(c)).to_numpy() for c in categories])  # (categories, concepts)
    return [*named.mean(axis=1).tolist(), float((~named.any(axis=0)).mean()), float(len(described))]


def table5(seed_files: list[str | Path], label: str, pretrained: str, tuned: str, categories) -> pd.DataFrame:
    """Rows: each category's share, `other` (no category named), `described` (a count, not a share)."""
    pre, post = [], []
    for path in seed_files:
        frame = read_seed_file(path, label)
        pre.append(_shares(frame, pretrained, categories, path))
        post.append(_shares(frame, tuned, categories, path))
    pre, post = np.array(pre), np.array(post)  # (seeds, categories + other + described)
    rows = []
    for k, category in enumerate([*categories, "other", "described"]):
        x, y = pre[:, k], post[:, k]
        if len(x) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
            t = p = float("nan")  # fewer than two seeds, or no spread at all: no test
        else:
            t, p = t_test(x, y, equal_var=True)  # Student's, as the paper's
        rows.append((category, x.mean(), x.std(), y.mean(), y.std(), t, p))
    return pd.DataFrame(rows, columns=TABLE5_COLUMNS)


def shared_words_note(seed_files, label: str, pretrained: str, tuned: str) -> str:
    """How many described components of the tuned model show the words of one of the pre-trained model,
    per seed. Such rows ask the same question and get one request and one answer (the seed is sent,
    so an endpoint would answer them alike anyway), where the paper asked each row on its own: the two
    models' shares move together there, and the t-test between them is conservative."""
    counts = []
    for path in seed_files:
        frame = read_seed_file(path, label)
        frame = frame[frame["Explainable"] == 1]
        words = set(frame.loc[frame["Model"] == pretrained, "Words"])
        mine = frame.loc[frame["Model"] == tuned, "Words"]
        counts.append((int(mine.isin(words).sum()), len(mine), seed_name(path)))
    if not any(shared for shared, _, _ in counts):
        return ""
    first, *rest = counts
    parts = [f"{first[0]} of {first[1]} described ({first[2]})", *(f"{s} of {n} ({name})" for s, n, name in rest)]
    return (f"Components of {tuned} with the words of a component of {pretrained}, so one request and one answer "
            f"for both: {', '.join(parts)}; the paper asked each row on its own, so there the two models' shares "
            "move together and the t-test between them is conservative")


def seed_number(path) -> str | None:
    """The seed a step's answers file is of, from its name (annotation_files.FILES), else None."""
    found = re.search(r"seed(\d+)\.tsv$", Path(path).name)
    return found.group(1) if found else None


def seed_name(path) -> str:
    seed = seed_number(path)
    return f"seed {seed}" if seed is not None else Path(path).name


def seeds_note(seed_files) -> str:
    """The seeds the table averages, from its files' names, under the table: a report made after
    `annotation.seeds` was edited, before the run, shows these and not the config's."""
    seeds = [seed_number(path) for path in seed_files]
    named = ", ".join(seeds) if None not in seeds else f"{len(seed_files)} files"
    return f"Over seeds {named} (annotation.seeds; one answers file each)"


def level_shares_by_group(seed_files, pretrained: str, tuned: str, layers: int, groups: int = 8) -> dict:
    """{model: (seeds, groups, levels) array}: share of each level among described concepts."""
    out = {}
    for model in (pretrained, tuned):
        per_seed = []
        for path in seed_files:
            frame = read_seed_file(path, LABEL_COLUMN["level"])
            frame = frame[(frame["Model"] == model) & (frame["Explainable"] == 1)]
            group = frame["Layer"] * groups // layers
            labels = category_text(frame["Label"])
            per_seed.append([[float(labels[group == g].str.contains(level).mean()) if (group == g).any() else np.nan
                              for level in LEVELS] for g in range(groups)])
        out[model] = np.array(per_seed)
    return out


FIGURE3_GROUPS = 8  # the paper's Figure 3: 32 layers in groups of 4 (its `Layer // 4`)


def figure3_groups(layers: int) -> int:
    """Layer groups of Figure 3: the paper's eight, or one per layer in a model of fewer."""
    return min(FIGURE3_GROUPS, layers)


def figure3_series(shares: dict) -> dict:
    """{model: (mean, std)}, each (groups, levels): Figure 3's points and bars over seeds (std with
    ddof 0, as the paper's Table 5 stds); NaN where no seed has a described concept in the group."""
    series = {}
    with warnings.catch_warnings():  # a layer group without any described concept stays a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        for model, per_seed in shares.items():  # (seeds, groups, levels)
            series[model] = (np.nanmean(per_seed, axis=0), np.nanstd(per_seed, axis=0))
    return series


def layer_group_labels(layers: int, groups: int) -> list[str]:
    """Layer numbers from 0, as Table 3 labels its groups (table_files.layer_range)."""
    members = [[layer for layer in range(layers) if layer * groups // layers == g] for g in range(groups)]
    return [layer_range(m[0], m[-1]) for m in members]


def figure3(shares: dict, pretrained: str, tuned: str, layers: int, output_stem: str | Path) -> None:
    """Figure 3 as output_stem.pdf and .png: each level's share per layer group, mean and std over seeds.

    Args:
        shares: {model: (seeds, groups, levels) float array} of level_shares_by_group, NaN where a
            group has no described concept
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = shares[pretrained].shape[1]
    series = figure3_series(shares)
    x = np.arange(groups, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    colors = ("tab:blue", "tab:green", "tab:red", "tab:purple")
    for k, (level, color) in enumerate(zip(LEVELS, colors)):
        # levels side by side, and the two models of a level a little apart: equal shares (often 0 for
        # phonology and morphology) never hide one marker under another
        for model, marker, style, apart in ((pretrained, "s", "--", -0.015), (tuned, "*", "-", 0.015)):
            shift = (k - 1.5) * 0.07 + apart
            mean, spread = (values[:, k] for values in series[model])
            ax.errorbar(x + shift, mean, yerr=spread, color=color, marker=marker, linestyle=style, capsize=2,
                        linewidth=1.2, elinewidth=0.8, label=f"{model}: {level}")
    labels = layer_group_labels(layers, groups)
    ax.set_xticks(x, labels, rotation=45 if any("-" in label for label in labels) else 0)
    ax.set_ylim(bottom=-0.04)  # a share is never negative, whatever the std bar says; the margin keeps 0 visible
    ax.set_xlabel("Layers")
    ax.set_ylabel("Share of described concepts")
    ax.set_title(f"Linguistic levels of the FFN concepts: {pretrained} (dashed) vs {tuned} (solid)\n"
                 f"mean over {shares[pretrained].shape[0]} seeds, bars: std over seeds", fontsize=9)
    ax.grid(True)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: never over data
    fig.tight_layout()
    for suffix in (".pdf", ".png"):
        with atomic_file(Path(output_stem).with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150, bbox_inches="tight")  # legend kept whole
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tables = sub.add_parser("tables", help="table5_tasks.tsv and table5_levels.tsv (+ .md)")
    tables.add_argument("--tasks", nargs="+", required=True, help="linear_task_seed{s}.tsv, one per seed")
    tables.add_argument("--output-dir", required=True, help="results/tables/PAIR")
    tables.add_argument("--notice", default="", help="a line under the title (config key notice)")
    figure = sub.add_parser("figure", help="Figure 3 as PDF and PNG")
    figure.add_argument("--layers", type=int, required=True)
    figure.add_argument("--output", required=True, help="the .pdf path; the .png is written beside it")
    for command in (tables, figure):
        command.add_argument("--concepts", nargs="+", required=True, help="linear_concept_seed{s}.tsv, one per seed")
        command.add_argument("--pretrained", required=True)
        command.add_argument("--tuned", required=True)
        command.add_argument("--pair", default="")
    args = parser.parse_args(argv)
    if args.command == "tables":
        out = Path(args.output_dir)
        tasks = table5(args.tasks, LABEL_COLUMN["task"], args.pretrained, args.tuned, TASKS)
        write_table(tasks, out / "table5_tasks.tsv", f"Table 5 ({args.pair}): tasks of the described FFN concepts",
                    [seeds_note(args.tasks), refusals_note(args.tasks, LABEL_COLUMN["task"]),
                     shared_words_note(args.tasks, LABEL_COLUMN["task"], args.pretrained, args.tuned)], args.notice)
        levels = table5(args.concepts, LABEL_COLUMN["level"], args.pretrained, args.tuned, LEVELS)
        write_table(levels, out / "table5_levels.tsv",
                    f"Table 5 ({args.pair}): linguistic levels of the described FFN concepts",
                    [seeds_note(args.concepts), refusals_note(args.concepts, LABEL_COLUMN["level"]),
                     shared_words_note(args.concepts, LABEL_COLUMN["level"], args.pretrained, args.tuned)], args.notice)
    else:
        shares = level_shares_by_group(args.concepts, args.pretrained, args.tuned, args.layers,
                                       figure3_groups(args.layers))
        figure3(shares, args.pretrained, args.tuned, args.layers, Path(args.output).with_suffix(""))


if __name__ == "__main__":
    main()
